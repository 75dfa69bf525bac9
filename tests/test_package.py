"""The package's own structure: no import cycle in timm_pnnh."""
import ast
from pathlib import Path
from typing import Dict, List, Set

import timm_pnnh

PACKAGE = Path(timm_pnnh.__file__).resolve().parent


def module_files(root: Path) -> Dict[str, Path]:
    """``{'timm_pnnh.models.pnnh_resnet': path, 'timm_pnnh.models': .../__init__.py, ...}``."""
    modules = {}
    for path in root.rglob('*.py'):
        parts = path.relative_to(root.parent).with_suffix('').parts
        modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package's modules that ``name`` imports anywhere in its code (inside functions too):
    ``import a.b``, ``from a.b import c`` (``a.b.c`` where that is a module, else ``a.b``), relative
    imports resolved."""
    package_parts = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join(package_parts[:len(package_parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                targets.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
    return {t for t in targets if t in modules and t != name}


def import_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), and self-imports."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_import_graph_sees_function_level_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / 'pkg'
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('from pkg import a\n')
    (pkg / 'a.py').write_text('from pkg.sub import b\n')
    (pkg / 'sub' / '__init__.py').write_text('')
    (pkg / 'sub' / 'b.py').write_text('def f():\n    from .. import a\n    return a\n')
    modules = module_files(pkg)
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert graph['pkg.sub.b'] == {'pkg.a'}
    assert import_cycles(graph) == [['pkg.a', 'pkg.sub.b']]


def test_no_import_cycle_in_timm_pnnh():
    modules = module_files(PACKAGE)
    assert 'timm_pnnh.models.pnnh_resnet' in modules and 'timm_pnnh' in modules
    graph = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    assert 'timm_pnnh.models._converted' in graph['timm_pnnh.models.pnnh_resnet']
    assert import_cycles(graph) == []

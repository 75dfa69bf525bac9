"""No import step: ``timm_pnnh_autoload`` (run by ``timm_pnnh_autoload.pth`` at interpreter start) registers
the models when timm is imported, and does nothing else. Each case runs in a fresh interpreter."""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every case starts fresh interpreters
ROOT = Path(__file__).resolve().parents[1]
STATE = ("import sys; print(sorted(m for m in ('torch', 'timm', 'timm_pnnh') if m in sys.modules), "
         "'pnnh_resnet34' in sys.modules['timm'].list_models() if 'timm' in sys.modules else None)")


def _python(code: str, **env) -> str:
    environment = {k: v for k, v in os.environ.items() if k != 'TIMM_PNNH_AUTOLOAD'}
    environment.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', **env)
    result = subprocess.run([sys.executable, '-c', code], env=environment, capture_output=True, text=True,
                            cwd='/')
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_pth_line_imports_nothing_until_timm_is_imported():
    assert (ROOT / 'timm_pnnh_autoload.pth').read_text() == 'import timm_pnnh_autoload\n'
    assert _python(f'import timm_pnnh_autoload; {STATE}') == '[] None'
    assert _python(f'import timm_pnnh_autoload; import timm; {STATE}') == "['timm', 'timm_pnnh', 'torch'] True"
    assert _python(f'import timm_pnnh_autoload; from timm import create_model; {STATE}').endswith('True')
    # timm_pnnh imported first imports timm itself: no recursion, registered once
    assert _python(f'import timm_pnnh_autoload; import timm_pnnh; {STATE}') == "['timm', 'timm_pnnh', 'torch'] True"


def test_switched_off_by_the_environment():
    assert _python(f'import timm_pnnh_autoload; import timm; {STATE}', TIMM_PNNH_AUTOLOAD='0') == "['timm', 'torch'] False"


def test_a_broken_plugin_does_not_break_timm(tmp_path):
    (tmp_path / 'timm_pnnh').mkdir()
    (tmp_path / 'timm_pnnh' / '__init__.py').write_text('raise ImportError("broken install")\n')
    code = 'import timm_pnnh_autoload; import timm; print(timm.__version__ != "")'
    environment = {k: v for k, v in os.environ.items() if k != 'TIMM_PNNH_AUTOLOAD'}
    environment.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), OMP_NUM_THREADS='1')
    result = subprocess.run([sys.executable, '-c', code], env=environment, capture_output=True, text=True,
                            cwd=tmp_path)  # not the checkout: '' on sys.path would find the real package
    assert result.returncode == 0 and result.stdout.strip() == 'True', result.stderr
    assert 'timm-pnnh: the models were not registered with timm (ImportError: broken install)' in result.stderr


def _installed_origin() -> str:
    """Where ``import timm_pnnh`` resolves without this checkout on the path (empty if not installed)."""
    environment = {k: v for k, v in os.environ.items() if k not in ('TIMM_PNNH_AUTOLOAD', 'PYTHONPATH')}
    code = 'import importlib.util as u; s = u.find_spec("timm_pnnh"); print(s.origin if s else "")'
    return subprocess.run([sys.executable, '-c', code], env=environment, capture_output=True, text=True,
                          cwd='/').stdout.strip()


def test_installed_package_registers_without_an_import():
    """Where this checkout is the installed package (CI's ``pip install -e .``), the .pth must be there."""
    if _installed_origin() != str(ROOT / 'timm_pnnh' / '__init__.py'):
        pytest.skip(f'the installed timm_pnnh is not this checkout ({_installed_origin() or "not installed"})')
    assert (Path(sysconfig.get_paths()['purelib']) / 'timm_pnnh_autoload.pth').is_file()
    environment = {k: v for k, v in os.environ.items() if k not in ('TIMM_PNNH_AUTOLOAD', 'PYTHONPATH')}
    result = subprocess.run([sys.executable, '-c', 'import timm; print("pnnh_resnet34" in timm.list_models())'],
                            env=environment, capture_output=True, text=True, cwd='/')
    assert result.stdout.strip() == 'True', result.stderr

"""``timm-pnnh run SCRIPT [ARGS...]`` (also ``python -m timm_pnnh.run SCRIPT [ARGS...]``).

Runs an unmodified timm script (``train.py``, ``validate.py``, ``benchmark.py``, ``inference.py``
from timm's repository) with the PNNH models registered: ``import timm_pnnh``, then the script is
executed as ``__main__`` with ``sys.argv = [SCRIPT, *ARGS]``, so its own arguments, output and exit
code (``SystemExit``) pass through untouched. The script's folder goes first on ``sys.path``, as
``python SCRIPT`` would put it.

It is a ``torchrun`` target (``torchrun --nproc_per_node=N -m timm_pnnh.run train.py ...``) and
runs under SLURM (``srun python -m timm_pnnh.run train.py ...``): timm's scripts read the rank and
world size from the environment those launchers set.

Before the script starts, the checkpoint files its options name (``--checkpoint`` of ``validate.py``
and ``inference.py``; ``--resume``, ``--initial-checkpoint`` and ``--pretrained-path`` of
``train.py``) are checked as every ``timm-pnnh`` command checks a checkpoint
(``checkpoint.check_checkpoint_file``): a missing, empty, truncated or foreign file is one line on
stderr naming the option and the file, exit code 2, instead of a traceback from inside the script.
The file is not loaded by this check; the script loads it as it always does.

``train.py`` alone can do without it: ``train.py --device-modules timm_pnnh`` (or
``device_modules: [timm_pnnh]`` in a ``-c`` YAML) imports the package before the model is built.
``validate.py``, ``benchmark.py`` and ``inference.py`` have no such option.
"""
import argparse
import ast
import os
import runpy
import sys
from typing import List, Optional, Sequence

from timm_pnnh.checkpoint import check_checkpoint_file
from timm_pnnh.errors import UsageError

# the options of timm's scripts that name a checkpoint file to load
CHECKPOINT_OPTIONS = ('--checkpoint', '--resume', '--initial-checkpoint', '--pretrained-path')


def check_script(script: str) -> str:
    """The absolute path of ``script`` if it is a Python file that imports timm, else ValueError."""
    if not os.path.isfile(script):
        raise ValueError(f'SCRIPT={script!r} is not a file; give the path of a timm script '
                         f'(train.py, validate.py, benchmark.py or inference.py from timm\'s repository)')
    try:
        with open(script, 'rb') as f:
            tree = ast.parse(f.read(), filename=script)
    except (SyntaxError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f'SCRIPT={script!r} is not a Python script ({type(e).__name__}: {e})') from None
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split('.')[0])
    if 'timm' not in imported:
        raise ValueError(f'SCRIPT={script!r} is not a timm script: it does not import timm')
    return os.path.abspath(script)


def checkpoint_arguments(args: Sequence[str]) -> List[tuple]:
    """``(option, path)`` for each ``CHECKPOINT_OPTIONS`` value in the script's ``args`` (``--opt PATH`` or
    ``--opt=PATH``; an empty value, train.py's "none", is skipped)."""
    found = []
    for i, arg in enumerate(args):
        option, equals, value = arg.partition('=')
        if option not in CHECKPOINT_OPTIONS:
            continue
        if not equals:
            value = args[i + 1] if i + 1 < len(args) else ''
        if value and not value.startswith('-'):
            found.append((option, value))
    return found


def check_checkpoints(args: Sequence[str]) -> None:
    """UsageError for the first checkpoint named in the script's ``args`` that is no checkpoint."""
    for option, path in checkpoint_arguments(args):
        check_checkpoint_file(option, path)


def run_script(script: str, args: Sequence[str] = ()) -> int:
    """Execute ``script`` as ``__main__`` with ``args``; return 0 when it ends without ``sys.exit``.

    A ``SystemExit`` raised by the script propagates unchanged (its code is the process's).
    """
    path = check_script(script)
    import timm_pnnh  # noqa: F401  (registers the models before the script creates one)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(path))
    runpy.run_path(path, run_name='__main__')
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('script', metavar='SCRIPT', help="a timm script, e.g. path/to/train.py")
    parser.add_argument('args', metavar='ARGS', nargs=argparse.REMAINDER,
                        help="the script's own arguments, passed through unchanged")


def run(args) -> int:
    try:
        check_script(args.script)
    except ValueError as e:
        args.parser.error(str(e))
    check_checkpoints(args.args)
    return run_script(args.script, args.args)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'run', help='run an unmodified timm script (train.py, validate.py, ...) with the PNNH models registered',
        description=__doc__.split('\n\n')[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run, parser=parser)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m timm_pnnh.run', description=__doc__.split('\n\n')[1])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.parser = parser
    try:
        return run(args)
    except UsageError as err:
        print(f'{parser.prog}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

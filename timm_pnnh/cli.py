"""The ``timm-pnnh`` command (also ``python -m timm_pnnh``).

Each sub-command lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments, returning an exit code). ``func`` checks the
command's own arguments before any work (its module's ``check_arguments``, where argparse cannot),
raising ``UsageError``. Add a sub-command by adding its module to ``COMMAND_MODULES``.

A user error (``timm_pnnh.errors.UsageError``) ends the command with one line on stderr in argparse's
style, ``timm-pnnh COMMAND: error: MESSAGE``, and exit code 2; any other exception keeps its traceback.
Ctrl-C ends it with one line, ``timm-pnnh COMMAND: interrupted: WHAT WAS KEPT``, and exit code 130.
"""
import argparse
import importlib
import sys
from typing import List, Optional

from timm_pnnh.errors import UsageError
from timm_pnnh.models.coder_ops import matmul_1x1_env

COMMAND_MODULES = (
    'timm_pnnh.catalog',
    'timm_pnnh.diagnostics',
    'timm_pnnh.study',
    'timm_pnnh.report',
    'timm_pnnh.hub',
    'timm_pnnh.convert',
    'timm_pnnh.bench',
    'timm_pnnh.run',
)


# Ctrl-C: one line saying what was kept (a command says it with ``kept(args)`` in its parser's defaults), and
# the shell's exit code for SIGINT
KEPT = 'every file it writes is as it was or whole (files are written under a temporary name and renamed when whole)'
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-pnnh', description='Plain Neural Net Hypothesis (PNNH) models for timm.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        matmul_1x1_env()  # the environment variable, checked before any work
        return int(args.func(args) or 0)
    except UsageError as err:
        message = ' '.join(line.strip() for line in str(err).splitlines())
        print(f'timm-pnnh {args.command}: error: {message}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = args.kept(args) if hasattr(args, 'kept') else KEPT
        print(f'timm-pnnh {args.command}: interrupted: {kept}', file=sys.stderr)
        return INTERRUPTED


if __name__ == '__main__':
    sys.exit(main())

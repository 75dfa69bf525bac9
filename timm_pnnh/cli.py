"""The ``timm-pnnh`` command (also ``python -m timm_pnnh``).

Each sub-command lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments, returning an exit code). Add a sub-command by
adding its module to ``COMMAND_MODULES``.
"""
import argparse
import importlib
import sys
from typing import List, Optional

COMMAND_MODULES = (
    'timm_pnnh.catalog',
    'timm_pnnh.compare',
    'timm_pnnh.diagnostics',
    'timm_pnnh.study',
    'timm_pnnh.report',
    'timm_pnnh.hub',
    'timm_pnnh.convert',
    'timm_pnnh.bench',
    'timm_pnnh.run',
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='timm-pnnh', description='Plain Neural Net Hypothesis (PNNH) models for timm.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())

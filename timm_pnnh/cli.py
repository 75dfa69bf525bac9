"""The ``timm-pnnh`` command (also ``python -m timm_pnnh``).

Each sub-command lives in its own module, which exposes ``register(subparsers)``: it adds its parser
and sets ``func`` (called with the parsed arguments, returning an exit code). Add a sub-command by
adding its module to ``COMMAND_MODULES``.

A user error (``timm_pnnh.errors.UsageError``) ends the command with one line on stderr in argparse's
style, ``timm-pnnh COMMAND: error: MESSAGE``, and exit code 2; any other exception keeps its traceback.
"""
import argparse
import importlib
import json
import os
import sys
from typing import List, Optional

from timm_pnnh.errors import UsageError, check_input_file, check_output_dir, check_output_file

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


def check_study_arguments(args) -> None:
    """The ``study`` values, checked before the sweep starts (the preset's own checks, as UsageErrors)."""
    from timm_pnnh.bench import check_device
    from timm_pnnh.data import require_fashion_mnist
    from timm_pnnh.study.presets import resolve_preset
    if args.device is not None:
        try:
            check_device(args.device)
        except ValueError as e:
            raise UsageError(f'--device={args.device!r}: {str(e).split(": ", 1)[-1]}') from None
    for name in ('steps', 'batch_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f'--{name.replace("_", "-")}={value} is not allowed: it must be >= 1')
    try:
        resolve_preset(args)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    require_fashion_mnist(args.data_dir)
    if args.out is not None:
        check_output_dir('--out', args.out)


STUDY_KEYS = ('command', 'date', 'hardware', 'recipe', 'seeds', 'data', 'train_seconds', 'plots', 'summary')


def check_report_arguments(args) -> None:
    """The ``report`` values: ``--from`` a study.json, ``--write-readme`` a file with the Results markers."""
    from timm_pnnh.files import check_markers
    from timm_pnnh.report import MARKERS
    check_input_file('--from', args.source)
    try:
        with open(args.source, encoding='utf-8') as f:
            study = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f'--from={args.source!r} is not a JSON file ({e}); give the study.json of `timm-pnnh study`') from None
    missing = [k for k in STUDY_KEYS if k not in study] if isinstance(study, dict) else list(STUDY_KEYS)
    if missing:
        raise UsageError(f'--from={args.source!r} is not a study.json of `timm-pnnh study`: no {", ".join(missing)}')
    if args.write_readme:
        check_markers(args.write_readme, MARKERS)
        if args.plots_dir is not None:
            check_output_dir('--plots-dir', os.path.join(os.path.dirname(args.write_readme), args.plots_dir))


def check_bench_arguments(args) -> None:
    """``bench --json``: a file that can be written (the models and numbers are checked while parsing)."""
    if args.json:
        check_output_file('--json', args.json)


ARGUMENT_CHECKS = {'study': check_study_arguments, 'report': check_report_arguments, 'bench': check_bench_arguments}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ARGUMENT_CHECKS:
            ARGUMENT_CHECKS[args.command](args)
        return int(args.func(args) or 0)
    except UsageError as err:
        message = ' '.join(line.strip() for line in str(err).splitlines())
        print(f'timm-pnnh {args.command}: error: {message}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

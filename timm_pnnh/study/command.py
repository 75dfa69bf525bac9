"""The ``timm-pnnh study`` command: its arguments, the run (sweep, speed, summary, plots, study.json)
and what it prints."""
import argparse
import shlex
import sys
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import torch

from timm_pnnh.bench import check_device, int_arg
from timm_pnnh.data import require_fashion_mnist
from timm_pnnh.errors import UsageError, check_output_dir
from timm_pnnh.files import write_json
from timm_pnnh.study.plots import write_plots
from timm_pnnh.study.presets import PRESETS, Preset, _epochs, preset_rows, resolve_preset
from timm_pnnh.study.runs import check_output, hardware, load_data, measure_speed, sweep
from timm_pnnh.study.summary import epochs_table, quick_note, study_table, summarize
from timm_pnnh.training import cpu_has_native_bf16


def check_arguments(args) -> None:
    """The ``study`` values, checked before the sweep starts (the preset's own checks, as UsageErrors)."""
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
        preset = resolve_preset(args)
    except UsageError:
        raise
    except ValueError as e:
        raise UsageError(str(e)) from None
    computes = not (args.finished_only and args.speed_repeats == 0)  # trains or times the nets
    on_cpu = torch.device(preset.device).type == 'cpu'
    if preset.recipe.amp == 'bf16' and args.amp is None and computes and on_cpu and not cpu_has_native_bf16():
        raise UsageError(f'--preset={args.preset} trains with amp=bf16, which this CPU only emulates (torch CPU capability '
                         f'{torch.backends.cpu.get_cpu_capability()}, no AVX-512 BF16 or AMX): its matrix products then run in fp32 kernels on bf16 operands, slower than fp32; '
                         f'run it on a CPU with native bf16, or pass --amp bf16 to run it anyway, or --amp fp32 for a '
                         f'study of its own')
    require_fashion_mnist(args.data_dir)
    if args.out is not None:
        check_output_dir('--out', args.out)


def command_line(args) -> str:
    parts = ['timm-pnnh', 'study', '--preset', args.preset]
    for name in ('seeds', 'depths', 'rows', 'steps', 'epochs', 'batch_size', 'amp', 'train_size', 'test_size', 'diag_batch', 'device',
                 'data_dir', 'out'):
        value = getattr(args, name)
        if value is not None and not (name == 'out' and value == default_out(args.preset)):
            parts += [f'--{name.replace("_", "-")}', *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
    if not args.resume:
        parts.append('--no-resume')
    if args.finished_only:
        parts.append('--finished-only')
    if args.retime:
        parts.append('--retime')
    return shlex.join(parts)


def default_out(preset: str) -> str:
    return f'output/study-{preset}'


# the presets whose study.json makes a results page, in the order the README's index lists them (adding a
# page is one entry here); the quick demonstration's numbers never do. Each page's study is
# results_study(preset), the ``--out`` its page names; ``timm-pnnh report --write-index`` reads them.
RESULTS_PAGES = {'long-cpu': 'docs/results-long-cpu.md', 'converged-cpu': 'docs/results-converged-cpu.md',
                 'vit-cpu': 'docs/results-vit-cpu.md', 'depth-cpu': 'docs/results-depth-cpu.md',
                 'converged': 'docs/results-gpu.md'}


INDEX_COMMAND = 'timm-pnnh report --write-index README.md --write-index MODEL_CARD.md'


def results_study(preset: str) -> str:
    """The study.json of a preset's results page, relative to the repository root."""
    return f'results/study-{preset}/study.json'


def results_page_command(args, preset: Preset, out: Path) -> Optional[str]:
    """The ``report`` command that writes this study into the results page: for a converged preset run as
    defined (on any device); None for every other study."""
    if args.preset not in RESULTS_PAGES:
        return None
    defined = _epochs(PRESETS[args.preset])
    if replace(preset, device=defined.device) != defined:
        return None
    return f'timm-pnnh report --from {out / "study.json"} --write-readme {RESULTS_PAGES[args.preset]}'


def run(args) -> int:
    check_arguments(args)
    preset = resolve_preset(args)
    out = Path(args.out if args.out is not None else default_out(args.preset))
    rows = preset_rows(preset)
    data = load_data(preset, args.data_dir)  # found by check_arguments; sizes it cannot give are UsageErrors
    print(f'study --preset {preset.name}: {len(rows)} models x {len(preset.seeds)} seeds {list(preset.seeds)}; '
          f'{preset.recipe.steps} steps of {preset.recipe.batch_size}'
          f'{f" ({preset.epochs} epochs, test scored after each)" if preset.epochs else ""} on {preset.device}; {data.source}; '
          f'{torch.get_num_threads()} CPU threads; records in {out / "runs"}', flush=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    check_output(out, len(rows) * len(preset.seeds))
    pending: List[str] = []
    records = sweep(rows, preset, data, out, resume=args.resume, log=log, train=not args.finished_only, pending=pending)
    if args.finished_only:  # time and summarize the rows that have a finished run
        rows = [row for row in rows if any(r['label'] == row.label for r in records)]
        if not rows:
            raise UsageError(f'--finished-only: no finished run in {out / "runs"} matches the {preset.name} preset')
    speed = (measure_speed(rows, preset, data, out, args.speed_repeats, args.resume and not args.retime, log)
             if args.speed_repeats else None)
    summary = summarize(rows, records, speed)
    plots, message = write_plots(summary, out)
    study = dict(
        command=command_line(args), preset=preset.name, date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
        hardware=hardware(preset.device), epochs=preset.epochs, seeds=list(preset.seeds), recipe=asdict(preset.recipe),
        depths=list(preset.depths), data=data.source, train_seconds=sum(r['seconds'] for r in records),
        speed=speed and {k: speed[k] for k in ('config', 'ratios', 'settings')}, plots=plots, summary=summary, runs=records,
        pending=pending)
    write_json(out / 'study.json', study)
    print()
    print(study_table(summary))
    note = quick_note(summary, preset.recipe.steps) if preset.name == 'quick' else ''
    if note:
        print('\n' + note)
    if preset.epochs:
        print('\nTest accuracy after each epoch:\n\n' + epochs_table(summary))
    print(f'\nwrote {out / "study.json"}' + (' and ' + ', '.join(str(out / p) for p in plots) if plots else ''))
    if message:
        print(message, file=sys.stderr)
    report = results_page_command(args, preset, out)
    if report:
        print(f'Results page: {report}\nThen the index of the pages (from {results_study(args.preset)}): {INDEX_COMMAND}')
    return 0


def kept(args) -> str:
    """What an interrupted study keeps (``timm-pnnh`` prints it on Ctrl-C)."""
    out = Path(args.out if args.out is not None else default_out(args.preset))
    return (f'the records of the finished runs are kept in {out / "runs"} (and, for a preset that counts epochs, the '
            f'training state after the last finished epoch); run the same command to resume from them')


def register(subparsers) -> None:
    parser = subparsers.add_parser('study', help='the depth sweep: plain vs residual vs PNNH on Fashion-MNIST (the main job)',
                                   description='The paper\'s claims measured side by side on Fashion-MNIST (the main job); '
                                               'the presets are described in docs/study.md.')
    parser.add_argument('--preset', choices=tuple(PRESETS), default='quick')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='override the preset\'s seeds')
    parser.add_argument('--depths', type=int, nargs='+', default=None, help='override the preset\'s ResNet depths')
    parser.add_argument('--rows', nargs='+', default=None, metavar='LABEL',
                        help='only these rows of the preset, by the labels the study prints (quoted where they have a '
                             'space: \'pnnh-vit mlp_ratio=3.0\'); to split a study between processes or machines that '
                             'share OUT/runs')
    parser.add_argument('--steps', type=int, default=None, help='override the preset\'s SGD steps')
    parser.add_argument('--epochs', type=int, default=None, help='override the preset\'s epochs (presets that count epochs)')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: the preset\'s)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--amp', choices=('fp32', 'bf16'), default=None,
                        help="override the preset's precision: fp32, or bf16 autocast")
    parser.add_argument('--train-size', type=int, default=None)
    parser.add_argument('--test-size', type=int, default=None)
    parser.add_argument('--diag-batch', type=int, default=None, help='images per retention batch (fit and score)')
    parser.add_argument('--data-dir', default=None, help='folder holding FashionMNIST/raw (Debian\'s package is found on its own)')
    parser.add_argument('--out', default=None, help='output folder (default: output/study-PRESET)')
    parser.add_argument('--finished-only', action='store_true',
                        help='train nothing: time, summarize and plot the runs finished so far; the rest are listed as pending')
    parser.add_argument('--speed-repeats', type=int_arg('--speed-repeats', 0), default=5,
                        help='timed repeats of the side-by-side speed measurement after training (0: skip it)')
    parser.add_argument('--resume', action=argparse.BooleanOptionalAction, default=True,
                        help='reuse finished runs and speed figures whose settings match (default: on)')
    parser.add_argument('--retime', action='store_true',
                        help='measure the speed figures on this machine even where OUT/speed.json has them for these '
                             'settings (by default they are reused, also when measured on another machine)')
    parser.set_defaults(func=run, kept=kept)

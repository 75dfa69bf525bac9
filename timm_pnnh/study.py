"""``timm-pnnh study``: the paper's claims measured side by side on Fashion-MNIST (the main job).

A depth sweep over the plain / residual / PNNH families (CIFAR-style ResNets; the small-image ViTs
when they are registered), every model trained with one shared schedule (``training.Recipe``: timm's
SGD and cosine scheduler) and the same seeds. Each run records test accuracy, parameters, training
images/s and per-block input retention (``diagnostics.retention``) at initialisation and after
training. One JSON record per finished run is written atomically to ``OUT/runs/``; a rerun reuses every
record whose settings match (``--no-resume`` redoes them), so a half-finished sweep resumes. At the end
``OUT/study.json`` holds the settings, the runs and the per-model summary, ``OUT/*.png`` the plots.

Presets:

* ``quick`` -- depths 20 and 56, 3 seeds, 120 SGD steps of 64 images (one pass over 7,680 training
  images), 2,000 test images, retention on 2 x 128 images. ResNets only: a ViT-tiny costs more
  per image than ResNet-56. Sized to finish within 15 minutes on 2 idle CPU cores (README).
* ``full`` -- depths 20, 56, 110 and the ViTs, 3 seeds, 3,000 steps of 128 images (6.4 epochs),
  the whole test set. For a GPU machine or a long night.
* ``ablation`` -- the PNNH knobs the paper leaves open, one at a time from the registered defaults,
  plus the residual reference, at depth 56 on the quick schedule.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from timm_pnnh import training
from timm_pnnh.bench import check_device
from timm_pnnh.data import load_fashion_mnist
from timm_pnnh.diagnostics import MEASURES, diagnosis_images, plot_retention, retention
from timm_pnnh.files import save_figure, write_json
from timm_pnnh.training import Recipe

FAMILIES = ('plain', 'residual', 'pnnh')
RETENTION_METHOD = 'ridge-gcv space-to-depth R^2, linear CKA, fraction > 0'  # records measured otherwise are redone
RESNET_NAMES = {'plain': 'plain_resnet{depth}', 'residual': 'cifar_resnet{depth}', 'pnnh': 'pnnh_resnet{depth}'}
# small-image ViTs: rows only for the names timm knows (registered by timm_pnnh when that family is present)
VIT_NAMES = {'plain': 'plain_vit_tiny_patch4_32', 'residual': 'cifar_vit_tiny_patch4_32', 'pnnh': 'pnnh_vit_tiny_patch4_32'}
VIT_KWARGS = (('img_size', 28),)
# one knob at a time from the registered defaults (models/pnnh_resnet.py PNNH_KNOBS), then the
# combination of the project notes' first reading (C/2 3x3 Kaiming coder with a norm)
ABLATION_KNOBS: Tuple[Tuple[Tuple[str, Any], ...], ...] = (
    (), (('coder_lr_scale', 1.0),), (('coder_lr_scale', 0.01),), (('coder_ratio', 0.5),), (('coder_ratio', 0.25),), (('coder_kernel', 3),), (('coder_init', 'kaiming'),),
    (('coder_init', 'orthogonal'),), (('coder_norm', True),), (('learner_ratio', 0.5),), (('learner_ratio', 0.25),),
    (('coder_ratio', 0.5), ('coder_kernel', 3), ('coder_init', 'kaiming'), ('coder_norm', True)),
)


@dataclass(frozen=True)
class Row:
    """One model of the sweep: ``label`` names it in tables and plots."""
    label: str
    family: str
    model: str
    arch: str  # 'resnet' or 'vit'
    depth: Optional[int] = None  # ResNet depth (6n+2); None for the ViTs
    kwargs: Tuple[Tuple[str, Any], ...] = ()


# (family, model kwargs) per depth: the families at their registered defaults
FAMILY_VARIANTS: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = tuple((f, ()) for f in FAMILIES)
# the rows that decide the claims (issue: converged study): the PNNH width variants that could put it
# ahead, and residual nets whose branch is as narrow as the PNNH learner (timm's ``block_reduce_first``
# divides the first conv of every residual block, so the control has the same budget)
DECIDING_VARIANTS = FAMILY_VARIANTS + (
    ('pnnh', (('learner_ratio', 0.5),)),
    ('residual', (('block_reduce_first', 2),)),
)
CONVERGED_VARIANTS = DECIDING_VARIANTS + (
    ('pnnh', (('learner_ratio', 0.25),)),
    ('pnnh', (('coder_ratio', 0.5), ('learner_ratio', 0.5))),  # deployed form no wider than the residual net
    ('pnnh', (('coder_sharing', 'stage'),)),  # the other reading of "weight-sharing coder" (PAPER.md)
    ('residual', (('block_reduce_first', 4),)),
)


@dataclass(frozen=True)
class Preset:
    """A study: rows (``variants`` at every depth, or the ablation), a recipe, seeds and data sizes.

    With ``epochs`` the recipe's steps are ``epochs`` passes over the training images (the last partial
    batch of each pass dropped) and the test set is scored after every epoch.
    """
    name: str
    recipe: Recipe
    depths: Tuple[int, ...]
    seeds: Tuple[int, ...]
    train_size: int
    test_size: Optional[int]  # None: the whole test set
    diag_batch: int
    vit: bool = False
    ablation: bool = False
    epochs: Optional[int] = None
    variants: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = FAMILY_VARIANTS
    device: str = 'cpu'

    @property
    def steps_per_epoch(self) -> Optional[int]:
        return self.train_size // self.recipe.batch_size if self.epochs else None


def _epochs(preset: Preset) -> Preset:
    """``preset`` with its recipe's steps set from ``epochs`` (unchanged without epochs)."""
    if not preset.epochs:
        return preset
    if preset.train_size < preset.recipe.batch_size:
        raise ValueError(f'train_size={preset.train_size} is not allowed with epochs: it must be at least the batch '
                         f'size {preset.recipe.batch_size}')
    return replace(preset, recipe=replace(preset.recipe, steps=preset.epochs * preset.steps_per_epoch))


PRESETS = {
    'quick': Preset('quick', Recipe(steps=120, batch_size=64), depths=(20, 56), seeds=(0, 1, 2), train_size=7680,
                    test_size=2000, diag_batch=128),
    'full': Preset('full', Recipe(steps=3000, batch_size=128), depths=(20, 56, 110), seeds=(0, 1, 2), train_size=60000,
                   test_size=None, diag_batch=256, vit=True),
    'ablation': Preset('ablation', Recipe(steps=120, batch_size=64), depths=(56,), seeds=(0, 1, 2), train_size=7680,
                       test_size=2000, diag_batch=128, ablation=True),
    # the whole of Fashion-MNIST until the ranking stops changing: for a GPU (bf16, channels_last)
    'converged': Preset('converged', Recipe(batch_size=128, channels_last=True, amp='bf16'), depths=(20, 56, 110),
                        seeds=(0, 1, 2), train_size=60000, test_size=None, diag_batch=256, vit=True, epochs=30,
                        variants=CONVERGED_VARIANTS, device='cuda'),
    # the rows that decide the claims, at depth 56, on 2 CPU cores (about 2.5 hours)
    'converged-cpu': Preset('converged-cpu', Recipe(batch_size=128, channels_last=True), depths=(56,), seeds=(0, 1),
                            train_size=60000, test_size=None, diag_batch=256, epochs=3, variants=DECIDING_VARIANTS),
}


def _knob_label(kwargs) -> str:
    return ' '.join(f'{k}={v}' for k, v in kwargs)


def preset_rows(preset: Preset) -> List[Row]:
    """The preset's models: ResNet rows per depth, then the ViT rows whose names timm knows."""
    rows = []
    if preset.ablation:
        for depth in preset.depths:
            rows.append(Row(f'residual-{depth}', 'residual', RESNET_NAMES['residual'].format(depth=depth), 'resnet', depth))
            for knobs in ABLATION_KNOBS:
                label = f'pnnh-{depth}' + (f' {_knob_label(knobs)}' if knobs else '')
                rows.append(Row(label, 'pnnh', RESNET_NAMES['pnnh'].format(depth=depth), 'resnet', depth, knobs))
        return rows
    for depth in preset.depths:
        for family, knobs in preset.variants:
            label = f'{family}-{depth}' + (f' {_knob_label(knobs)}' if knobs else '')
            rows.append(Row(label, family, RESNET_NAMES[family].format(depth=depth), 'resnet', depth, knobs))
    if preset.vit:
        for family in FAMILIES:
            if timm.is_model(VIT_NAMES[family]):
                rows.append(Row(f'{family}-vit', family, VIT_NAMES[family], 'vit', None, VIT_KWARGS))
    return rows


def run_key(row: Row, seed: int) -> str:
    return re.sub(r'[^A-Za-z0-9_.=-]+', '_', f'{row.label}-seed{seed}')


def _digest(settings: Dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Data:
    train: Tuple[torch.Tensor, torch.Tensor]
    test: Tuple[torch.Tensor, torch.Tensor]
    diag: Tuple[torch.Tensor, torch.Tensor]
    source: str


def load_data(preset: Preset, data_dir=None, data_seed: int = 0) -> Data:
    """Fashion-MNIST subsets drawn once with ``data_seed`` (the same for every run); FileNotFoundError if absent."""
    images, labels = load_fashion_mnist(data_dir, train=True)
    test_images, test_labels = load_fashion_mnist(data_dir, train=False)
    for name, size, available in (('train_size', preset.train_size, len(images)), ('test_size', preset.test_size, len(test_images))):
        if size is not None and not 0 < size <= available:
            raise ValueError(f'{name}={size} is not allowed: it must be in [1, {available}]')
    gen = torch.Generator().manual_seed(data_seed)
    train_idx = torch.randperm(len(images), generator=gen)[:preset.train_size]
    test_idx = torch.randperm(len(test_images), generator=gen)[:preset.test_size or len(test_images)]
    fit, score, source = diagnosis_images(preset.diag_batch, 1, images.shape[-1], data_dir, data_seed)
    return Data((images[train_idx], labels[train_idx]), (test_images[test_idx], test_labels[test_idx]), (fit, score),
                f'Fashion-MNIST: {len(train_idx)} training images (of {len(images)}), {len(test_idx)} test images; '
                f'retention on {source}')


def run_one(row: Row, seed: int, preset: Preset, data: Data, log=print) -> Dict:
    """Train and measure one (model, seed); return its record."""
    kwargs = dict(row.kwargs, num_classes=10, in_chans=data.train[0].shape[1])
    tic = time.perf_counter()
    torch.manual_seed(seed)  # the same initialisation train_and_evaluate builds
    init_model = timm.create_model(row.model, **kwargs)
    init_retention = retention(init_model, *data.diag, batch_stats=True)
    del init_model
    trained_retention: List[Dict] = []
    steps = preset.recipe.steps
    every = max(1, steps // 4)

    def progress(step, loss):
        if (step + 1) % every == 0 or step + 1 == steps:
            log(f'    step {step + 1}/{steps} loss {loss:.3f} ({time.perf_counter() - tic:.0f} s)')

    def on_trained(model):  # measured on the CPU in fp32, whatever the training device
        model = model.cpu().to(memory_format=torch.contiguous_format)
        trained_retention.extend(retention(model, *data.diag, batch_stats=False))

    result = training.train_and_evaluate(row.model, data.train, data.test, preset.recipe, seed=seed, model_kwargs=kwargs,
                                         progress=progress, on_trained=on_trained, device=preset.device,
                                         eval_every=preset.steps_per_epoch or 0)
    if preset.epochs:
        for point in result.curve:
            point['epoch'] = point['step'] / preset.steps_per_epoch
            log(f'    epoch {point["epoch"]:.2f}: test acc {point["test_acc"]:.2f}%')
    if result.diverged_step is not None:
        log(f'    diverged: the loss was not finite at step {result.diverged_step}')
    return dict(label=row.label, family=row.family, model=row.model, arch=row.arch, depth=row.depth,
                model_kwargs=dict(row.kwargs), seed=seed, params=result.params, test_acc=result.test_acc,
                final_train_loss=result.final_train_loss, train_images_per_s=result.train_images_per_s,
                diverged_step=result.diverged_step, curve=result.curve,
                blocks=len(init_retention), retention_init=init_retention, retention_trained=trained_retention,
                seconds=time.perf_counter() - tic)


def run_settings(row: Row, seed: int, preset: Preset, data: Data) -> Dict:
    """What a record must match to be reused."""
    return dict(model=row.model, kwargs=dict(row.kwargs), seed=seed, recipe=asdict(preset.recipe),
                train_size=len(data.train[0]), test_size=len(data.test[0]), diag_batch=preset.diag_batch,
                data=data.source, retention=RETENTION_METHOD, eval_every=preset.steps_per_epoch or 0,
                device=preset.device)


def sweep(rows: Sequence[Row], preset: Preset, data: Data, out: Path, resume: bool = True, log=print) -> List[Dict]:
    """Every (seed, row) run, seeds outermost; finished runs with matching settings are reused."""
    runs_dir = out / 'runs'
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = [(seed, row) for seed in preset.seeds for row in rows]
    records = []
    for i, (seed, row) in enumerate(todo, start=1):
        path = runs_dir / f'{run_key(row, seed)}.json'
        settings = run_settings(row, seed, preset, data)
        digest = _digest(settings)
        if resume and path.is_file():
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                record = {}
            if record.get('settings_digest') == digest:
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: finished earlier, reused '
                    f'({record["test_acc"]:.2f}%)')
                records.append(record)
                continue
            log(f'[{i}/{len(todo)}] {row.label} seed {seed}: a record with other settings exists; running again')
        log(f'[{i}/{len(todo)}] {row.label} seed {seed} ({row.model}{" " + _knob_label(row.kwargs) if row.kwargs else ""})')
        record = run_one(row, seed, preset, data, log)
        record.update(settings=settings, settings_digest=digest)
        write_json(path, record)
        log(f'    test acc {record["test_acc"]:.2f}%  {record["train_images_per_s"]:.0f} train img/s  '
            f'R^2 deepest block {record["retention_init"][-1]["r2"]:.2f} (init) -> {record["retention_trained"][-1]["r2"]:.2f}')
        records.append(record)
    return records


def _mean_curve(curves: List[List[Dict]]) -> List[Dict]:
    return [dict(curves[0][b], **{m: statistics.fmean(c[b][m] for c in curves) for m in MEASURES})
            for b in range(len(curves[0]))]


def summarize(rows: Sequence[Row], records: Sequence[Dict]) -> List[Dict]:
    """Per row: accuracy mean/std over seeds (std None for one seed), params, images/s, mean retention curves."""
    summary = []
    for row in rows:
        mine = [r for r in records if r['label'] == row.label]
        if not mine:
            continue
        accs = [r['test_acc'] for r in mine]
        summary.append(dict(
            label=row.label, family=row.family, model=row.model, arch=row.arch, depth=row.depth,
            model_kwargs=dict(row.kwargs), blocks=mine[0]['blocks'], params=mine[0]['params'],
            seeds=[r['seed'] for r in mine], test_accs=accs, acc_mean=statistics.fmean(accs),
            acc_std=statistics.stdev(accs) if len(accs) > 1 else None,
            train_images_per_s=statistics.fmean(r['train_images_per_s'] for r in mine),
            retention_init=_mean_curve([r['retention_init'] for r in mine]),
            retention_trained=_mean_curve([r['retention_trained'] for r in mine])))
    return summary


def fmt_acc(row: Dict) -> str:
    std = row['acc_std']
    return f"{row['acc_mean']:.2f} +- {std:.2f}" if std is not None else f"{row['acc_mean']:.2f} (one seed)"


def markdown_table(summary: Sequence[Dict]) -> str:
    lines = ['| model | family | depth | params | test acc % (mean +- std) | seeds | train img/s | '
             'R^2 deepest block: init -> trained | CKA deepest block: init -> trained |',
             '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
    for s in summary:
        depth = s['depth'] if s['depth'] is not None else f"{s['blocks']} blocks"
        lines.append(
            f"| {s['label']} (`{s['model']}`) | {s['family']} | {depth} | {s['params'] / 1e3:.0f}k | {fmt_acc(s)} | "
            f"{len(s['seeds'])} | {s['train_images_per_s']:.0f} | {s['retention_init'][-1]['r2']:.2f} -> "
            f"{s['retention_trained'][-1]['r2']:.2f} | {s['retention_init'][-1]['cka']:.2f} -> "
            f"{s['retention_trained'][-1]['cka']:.2f} |")
    return '\n'.join(lines)


PLOTS = ('accuracy_vs_depth.png', 'accuracy_vs_params.png', 'retention_vs_depth.png')


def write_plots(summary: Sequence[Dict], out: Path) -> Optional[str]:
    """The three PNGs in ``out``; returns a message instead when matplotlib is missing."""
    curves = {}
    for s in summary:
        curves[f"{s['label']} init"] = s['retention_init']
        curves[f"{s['label']} trained"] = s['retention_trained']
    message = plot_retention(out / PLOTS[2], curves, title='input retention per block (dashed: init, solid: trained)')
    if message:
        return message
    import matplotlib.pyplot as plt
    colors = {'plain': 'tab:red', 'residual': 'tab:blue', 'pnnh': 'tab:green'}
    fig, ax = plt.subplots(figsize=(6, 4))
    for family in FAMILIES:
        pts = sorted((s['depth'], s['acc_mean'], s['acc_std'] or 0) for s in summary
                     if s['family'] == family and s['arch'] == 'resnet' and not s['model_kwargs'])
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker='o', capsize=3,
                        label=family, color=colors[family])
    ax.set_xlabel('depth (CIFAR-style ResNet)'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    save_figure(fig, out / PLOTS[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summary:
        ax.errorbar(s['params'] / 1e3, s['acc_mean'], s['acc_std'] or 0, marker='o', capsize=3, color=colors[s['family']])
        ax.annotate(s['label'], (s['params'] / 1e3, s['acc_mean']), fontsize=6, xytext=(3, 3), textcoords='offset points')
    ax.set_xscale('log'), ax.set_xlabel('parameters (thousands)'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / PLOTS[1])
    return None


def hardware(device: str = 'cpu') -> Dict[str, Any]:
    cpu = platform.processor() or ''
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    dev = torch.device(device)
    return dict(cpu=cpu, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=str(dev),
                gpu=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None,
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                platform=platform.platform())


def resolve_preset(args) -> Preset:
    """The named preset with the command-line overrides applied (ValueError on bad values)."""
    preset = PRESETS[args.preset]
    recipe = preset.recipe
    if args.steps is not None or args.batch_size is not None:
        recipe = replace(recipe, steps=args.steps if args.steps is not None else recipe.steps,
                         batch_size=args.batch_size if args.batch_size is not None else recipe.batch_size)
    changes = dict(recipe=recipe)
    for name in ('seeds', 'depths'):
        value = getattr(args, name)
        if value is not None:
            if not value or len(set(value)) != len(value):
                raise ValueError(f'--{name}={value} is not allowed: give distinct values')
            changes[name] = tuple(value)
    for depth in changes.get('depths', preset.depths):
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f'--depths value {depth} is not allowed: CIFAR-style ResNet depths are 6n+2 (20, 32, 44, 56, 110, ...)')
    for name in ('train_size', 'test_size', 'diag_batch', 'epochs'):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f'--{name.replace("_", "-")}={value} is not allowed: it must be >= 1')
            changes[name] = value
    if args.steps is not None and (changes.get('epochs') or preset.epochs):
        raise ValueError(f'--steps={args.steps} is not allowed with the {preset.name} preset, which counts epochs: '
                         'use --epochs')
    if args.device is not None:
        changes['device'] = str(check_device(args.device))
    return _epochs(replace(preset, **changes))


def command_line(args) -> str:
    parts = ['timm-pnnh', 'study', '--preset', args.preset]
    for name in ('seeds', 'depths', 'steps', 'epochs', 'batch_size', 'train_size', 'test_size', 'diag_batch', 'device',
                 'data_dir', 'out'):
        value = getattr(args, name)
        if value is not None and not (name == 'out' and value == default_out(args.preset)):
            parts += [f'--{name.replace("_", "-")}', *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
    if not args.resume:
        parts.append('--no-resume')
    return ' '.join(parts)


def default_out(preset: str) -> str:
    return f'output/study-{preset}'


def run(args) -> int:
    preset = resolve_preset(args)
    out = Path(args.out if args.out is not None else default_out(args.preset))
    rows = preset_rows(preset)
    try:
        data = load_data(preset, args.data_dir)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    skipped_vit = [n for n in VIT_NAMES.values() if preset.vit and not timm.is_model(n)]
    print(f'study --preset {preset.name}: {len(rows)} models x {len(preset.seeds)} seeds {list(preset.seeds)}; '
          f'{preset.recipe.steps} steps of {preset.recipe.batch_size}'
          f'{f" ({preset.epochs} epochs, test scored after each)" if preset.epochs else ""} on {preset.device}; {data.source}; '
          f'{torch.get_num_threads()} CPU threads; records in {out / "runs"}' +
          (f'\n(ViT rows skipped, not registered: {", ".join(skipped_vit)})' if skipped_vit else ''), flush=True)
    tic = time.perf_counter()
    records = sweep(rows, preset, data, out, resume=args.resume, log=lambda m: print(m, flush=True))
    summary = summarize(rows, records)
    study = dict(
        command=command_line(args), preset=preset.name, date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
        hardware=hardware(preset.device), epochs=preset.epochs, seeds=list(preset.seeds), recipe=asdict(preset.recipe), depths=list(preset.depths),
        data=data.source, wall_seconds=time.perf_counter() - tic, plots=list(PLOTS), summary=summary, runs=records)
    write_json(out / 'study.json', study)
    message = write_plots(summary, out)
    print()
    print(markdown_table(summary))
    print(f'\nwrote {out / "study.json"}' + ('' if message else ' and ' + ', '.join(str(out / p) for p in PLOTS)))
    if message:
        print(message, file=sys.stderr)
    print(f'README Results: timm-pnnh report --from {out / "study.json"} --write-readme README.md')
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser('study', help='the depth sweep: plain vs residual vs PNNH on Fashion-MNIST (the main job)',
                                   description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', choices=tuple(PRESETS), default='quick')
    parser.add_argument('--seeds', type=int, nargs='+', default=None, help='override the preset\'s seeds')
    parser.add_argument('--depths', type=int, nargs='+', default=None, help='override the preset\'s ResNet depths')
    parser.add_argument('--steps', type=int, default=None, help='override the preset\'s SGD steps')
    parser.add_argument('--epochs', type=int, default=None, help='override the preset\'s epochs (presets that count epochs)')
    parser.add_argument('--device', default=None, help='cpu, cuda or cuda:N (default: the preset\'s)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--train-size', type=int, default=None)
    parser.add_argument('--test-size', type=int, default=None)
    parser.add_argument('--diag-batch', type=int, default=None, help='images per retention batch (fit and score)')
    parser.add_argument('--data-dir', default=None, help='folder holding FashionMNIST/raw (Debian\'s package is found on its own)')
    parser.add_argument('--out', default=None, help='output folder (default: output/study-PRESET)')
    parser.add_argument('--resume', action=argparse.BooleanOptionalAction, default=True,
                        help='reuse finished runs whose settings match (default: on)')
    parser.set_defaults(func=run)

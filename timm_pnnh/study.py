"""``timm-pnnh study``: the paper's claims measured side by side on Fashion-MNIST (the main job).

A depth sweep over the plain / residual / PNNH families (CIFAR-style ResNets; the small-image ViTs
when they are registered) and their width variants, every model trained with one shared schedule
(``training.Recipe``: timm's SGD and cosine scheduler; AdamW for the ViTs) and the same seeds. Each
run records test accuracy (after every epoch for the presets that count epochs), parameters and
per-block input retention (``diagnostics.retention``) at initialisation and after training. One JSON
record per finished run is written atomically to ``OUT/runs/``; a rerun reuses every record whose
settings match (``--no-resume`` redoes them), so a half-finished sweep resumes, and a record that is
empty, cut off or not JSON is run again. After training, every row is timed side by side in one
process by ``bench.benchmark`` (training, eval and deployed images/s, saved activations; written to
``OUT/speed.json``, reused likewise). ``OUT/study.json`` holds the settings, the runs, the speed
report and the per-model summary; ``OUT/*.png`` the plots (accuracy against epochs, and the fronts of
accuracy against parameters, training and deployed images/s).

Presets:

* ``quick`` -- depths 20 and 56, 3 seeds, 120 SGD steps of 64 images (one pass over 7,680 training
  images), 2,000 test images, retention on 2 x 128 images. A demonstration sized to finish within 15
  minutes on 2 idle CPU cores; its short schedule favours shallow nets.
* ``converged-cpu`` -- the rows that decide the claims at depth 56 (plain, residual, PNNH, PNNH with
  a half-width learner, and a residual net whose branch is as narrow: timm's ``block_reduce_first=2``),
  2 seeds, 3 epochs of the whole training set, the whole test set, channels_last. About 2 hours on 2
  CPU cores.
* ``converged`` -- for a GPU: depths 20, 56 and 110, every width variant (``learner_ratio`` 0.5 and 0.25,
  ``coder_ratio`` 0.5 with ``learner_ratio`` 0.5 (deployed no wider than the residual net),
  ``coder_sharing='stage'``, residual ``block_reduce_first`` 2 and 4), the ViTs, 3 seeds, 30 epochs,
  bf16 autocast and channels_last on ``cuda``.
* ``full`` -- depths 20, 56, 110 and the ViTs, 3 seeds, 3,000 steps of 128 images (6.4 epochs).
* ``ablation`` -- the PNNH knobs the paper leaves open, one at a time from the registered defaults,
  plus the residual reference, at depth 56 on the quick schedule.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shutil
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
from timm_pnnh.bench import benchmark, check_device, int_arg, model_spec
from timm_pnnh.data import load_fashion_mnist
from timm_pnnh.diagnostics import MEASURES, diagnosis_images, plot_retention, retention
from timm_pnnh.errors import UsageError
from timm_pnnh.models.pnnh_resnet import CIFAR_DEPTHS
from timm_pnnh.files import atomic_write, markdown_table as write_table, save_figure, write_json
from timm_pnnh.training import Recipe

FAMILIES = ('plain', 'residual', 'pnnh')
RETENTION_METHOD = 'ridge-gcv space-to-depth R^2, linear CKA, fraction > 0'  # records measured otherwise are redone
RESNET_NAMES = {'plain': 'plain_resnet{depth}', 'residual': 'cifar_resnet{depth}', 'pnnh': 'pnnh_resnet{depth}'}
# small-image ViTs: rows only for the names timm knows (registered by timm_pnnh when that family is present)
VIT_NAMES = {'plain': 'plain_vit_tiny_patch4_32', 'residual': 'cifar_vit_tiny_patch4_32', 'pnnh': 'pnnh_vit_tiny_patch4_32'}
VIT_KWARGS = (('img_size', 28),)
# ViTs train with AdamW (timm's and the ViT ablation's choice), not the ResNets' SGD at lr 0.1
VIT_RECIPE = dict(opt='adamw', lr=1e-3, weight_decay=0.05)


def row_recipe(row: 'Row', preset: 'Preset') -> Recipe:
    """The preset's recipe, with the ViT optimiser for ViT rows."""
    return replace(preset.recipe, **VIT_RECIPE) if row.arch == 'vit' else preset.recipe
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
# where the paper's claims would live: the block's hidden channels split between coder and learner
# (deployed exactly as wide as the residual net at 0.5/0.5), the same with one coder per stage (the
# other reading of "weight-sharing coder", PAPER.md), the quarter split, and the residual control of
# the quarter split's budget
SPLIT_VARIANTS = (
    ('pnnh', (('coder_ratio', 0.5), ('learner_ratio', 0.5))),
    ('pnnh', (('coder_ratio', 0.5), ('learner_ratio', 0.5), ('coder_sharing', 'stage'))),
    ('pnnh', (('coder_ratio', 0.25), ('learner_ratio', 0.25))),
    ('residual', (('block_reduce_first', 4),)),
)
CONVERGED_VARIANTS = DECIDING_VARIANTS + SPLIT_VARIANTS + (
    ('pnnh', (('learner_ratio', 0.25),)),
    ('pnnh', (('coder_sharing', 'stage'),)),
)
# the rows that decide, on a longer schedule: the residual net, PNNH at its defaults, and the split-width
# PNNH row (chosen before its 3-epoch result: it is the one deployed exactly as wide as the residual net)
LONG_VARIANTS = (('residual', ()), ('pnnh', ()), SPLIT_VARIANTS[0])


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
    # the rows that decide the claims, at depth 56, on 2 CPU cores (fp32: the recipe its first rows ran with)
    'converged-cpu': Preset('converged-cpu', Recipe(batch_size=128, channels_last=True), depths=(56,), seeds=(0, 1),
                            train_size=60000, test_size=None, diag_batch=256, epochs=3,
                            variants=DECIDING_VARIANTS + SPLIT_VARIANTS),
    # the deciding rows for 10 epochs on 2 CPU cores, with bf16 autocast (2x the fp32 training speed
    # on a CPU with AMX; docs/study.md has the paired check that it learns the same)
    'long-cpu': Preset('long-cpu', Recipe(batch_size=128, channels_last=True, amp='bf16'), depths=(56,), seeds=(0, 1),
                       train_size=60000, test_size=None, diag_batch=256, epochs=10, variants=LONG_VARIANTS),
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

    result = training.train_and_evaluate(row.model, data.train, data.test, row_recipe(row, preset), seed=seed, model_kwargs=kwargs,
                                         progress=progress, on_trained=on_trained, device=preset.device,
                                         eval_every=preset.steps_per_epoch or 0)
    if preset.epochs:
        for point in result.curve:
            point['epoch'] = point['step'] / preset.steps_per_epoch
            log(f'    epoch {point["epoch"]:.2f}: test acc {point["test_acc"]:.2f}%')
    if result.diverged_step is not None:  # nothing to measure in a diverged net
        log(f'    diverged: the loss was not finite at step {result.diverged_step}')
        trained_retention = [dict(r, **{m: float('nan') for m in MEASURES}) for r in init_retention]
    return dict(label=row.label, family=row.family, model=row.model, arch=row.arch, depth=row.depth,
                model_kwargs=dict(row.kwargs), seed=seed, params=result.params, test_acc=result.test_acc,
                final_train_loss=result.final_train_loss,
                diverged_step=result.diverged_step, curve=result.curve,
                blocks=len(init_retention), retention_init=init_retention, retention_trained=trained_retention,
                seconds=time.perf_counter() - tic)


def run_settings(row: Row, seed: int, preset: Preset, data: Data) -> Dict:
    """What a record must match to be reused."""
    return dict(model=row.model, kwargs=dict(row.kwargs), seed=seed, recipe=asdict(row_recipe(row, preset)),
                train_size=len(data.train[0]), test_size=len(data.test[0]), diag_batch=preset.diag_batch,
                data=data.source, retention=RETENTION_METHOD, eval_every=preset.steps_per_epoch or 0,
                device=preset.device)


RECORD_KEYS = ('settings_digest', 'test_acc', 'params', 'seed', 'label', 'retention_init', 'retention_trained', 'seconds')


def read_record(path: Path) -> Optional[Dict]:
    """The run record at ``path``, or None when it is unreadable, empty, cut off or lacks a record's keys."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and all(k in record for k in RECORD_KEYS) else None


RECORD_BYTES = 2 ** 20  # generous room per run record (they hold well under 100 kB), plus as much for plots


def check_output(out: Path, runs: int) -> None:
    """Fail before any training when ``out`` cannot take the study's files: not creatable, not
    writable, or too little free space for ``runs`` records. UsageError naming --out."""
    try:
        (out / 'runs').mkdir(parents=True, exist_ok=True)
        probe = out / 'runs' / '.write-probe'
        atomic_write(probe, lambda f: f.write('probe'))
        probe.unlink()
    except OSError as err:
        raise UsageError(f'--out={str(out)!r} is not writable: {err.strerror or err}') from None
    free, needed = shutil.disk_usage(out).free, (runs + 1) * RECORD_BYTES
    if free < needed:
        raise UsageError(f'--out={str(out)!r} has {free / 2 ** 20:.1f} MiB free; the study needs about '
                         f'{needed / 2 ** 20:.0f} MiB for {runs} run records and plots')


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
            record = read_record(path)
            if record is None:
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: {path} is empty, cut off or not a run record; running again')
            elif record.get('settings_digest') == digest:
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: finished earlier, reused '
                    f'({record["test_acc"]:.2f}%)')
                records.append(record)
                continue
            else:
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: a record with other settings exists; running again')
        log(f'[{i}/{len(todo)}] {row.label} seed {seed} ({row.model}{" " + _knob_label(row.kwargs) if row.kwargs else ""})')
        record = run_one(row, seed, preset, data, log)
        record.update(settings=settings, settings_digest=digest)
        write_json(path, record)
        log(f'    test acc {record["test_acc"]:.2f}%  '
            f'R^2 deepest block {record["retention_init"][-1]["r2"]:.2f} (init) -> {record["retention_trained"][-1]["r2"]:.2f}')
        records.append(record)
    return records


SPEED_STEPS, SPEED_WARMUP = 3, 2  # per timed repeat, and untimed steps first (``bench.benchmark``)


def speed_settings(rows: Sequence[Row], preset: Preset, data: Data, repeats: int) -> Dict:
    """What ``measure_speed`` runs: every row as a bench spec at the study's batch, input and device."""
    images = data.train[0]
    specs = {row.label: model_spec(row.model, dict(row.kwargs, num_classes=10, in_chans=images.shape[1])) for row in rows}
    reference = next((row.label for row in rows if row.family == 'residual' and not row.kwargs), rows[0].label)
    return dict(specs=specs, reference=specs[reference], batch_size=preset.recipe.batch_size, img_size=images.shape[-1],
                device=preset.device, channels_last=preset.recipe.channels_last, amp=preset.recipe.amp,
                repeats=repeats, steps=SPEED_STEPS, warmup=SPEED_WARMUP, hardware=hardware(preset.device))


def measure_speed(rows: Sequence[Row], preset: Preset, data: Data, out: Path, repeats: int, resume: bool = True,
                  log=print) -> Dict:
    """Training, eval and deployed images/s and saved activations of every row, all models in one
    ``bench.benchmark`` process taking turns (the project's one timer), written to ``OUT/speed.json``;
    a file with the same settings is reused. Run it on an otherwise idle machine."""
    settings = speed_settings(rows, preset, data, repeats)
    path = out / 'speed.json'
    if resume and path.is_file():
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            report = {}
        if report.get('settings_digest') == _digest(settings):
            log(f'speed: measured earlier, reused ({path})')
            return report
    log(f'speed: {len(rows)} models side by side, batch {settings["batch_size"]}, {repeats} repeats '
        f'(timings: keep the machine otherwise idle)')
    report = benchmark(list(settings['specs'].values()), batch_size=settings['batch_size'], img_size=settings['img_size'],
                       device=settings['device'], channels_last=settings['channels_last'], amp=settings['amp'],
                       repeats=repeats, steps=SPEED_STEPS, warmup=SPEED_WARMUP, reference=settings['reference'])
    report.update(settings=settings, settings_digest=_digest(settings))
    write_json(path, report)
    return report


def _mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _mean_curve(curves: List[List[Dict]]) -> List[Dict]:
    return [dict(curves[0][b], **{m: statistics.fmean(c[b][m] for c in curves) for m in MEASURES})
            for b in range(len(curves[0]))]


def _epoch_curve(records: Sequence[Dict]) -> List[Dict]:
    """Test accuracy per scored epoch, mean and std over the runs that reached it."""
    points: Dict[float, List[float]] = {}
    for r in records:
        for point in r.get('curve') or []:
            if 'epoch' in point:
                points.setdefault(point['epoch'], []).append(point['test_acc'])
    return [dict(epoch=e, acc_mean=_mean_std(v)[0], acc_std=_mean_std(v)[1], runs=len(v)) for e, v in sorted(points.items())]


SPEED_KEYS = ('train_img_s', 'infer_img_s', 'deploy_img_s', 'saved_mb', 'deploy_params_m')


def summarize(rows: Sequence[Row], records: Sequence[Dict], speed: Optional[Dict] = None) -> List[Dict]:
    """Per row: accuracy mean/std over seeds (std None for one seed), accuracy per epoch, params,
    diverged seeds, the bench figures (``speed``) and mean retention curves."""
    summary = []
    specs = speed['settings']['specs'] if speed else {}
    for row in rows:
        mine = [r for r in records if r['label'] == row.label]
        if not mine:
            continue
        accs = [r['test_acc'] for r in mine]
        measured = speed['results'].get(specs.get(row.label), {}) if speed else {}
        summary.append(dict(
            label=row.label, family=row.family, model=row.model, arch=row.arch, depth=row.depth,
            model_kwargs=dict(row.kwargs), blocks=mine[0]['blocks'], params=mine[0]['params'],
            seeds=[r['seed'] for r in mine], test_accs=accs, acc_mean=_mean_std(accs)[0], acc_std=_mean_std(accs)[1],
            diverged_seeds=[r['seed'] for r in mine if r.get('diverged_step') is not None],
            epochs=_epoch_curve(mine), **{key: measured.get(key) for key in SPEED_KEYS},
            retention_init=_mean_curve([r['retention_init'] for r in mine]),
            retention_trained=_mean_curve([r['retention_trained'] for r in mine])))
    return summary


def fmt_acc(row: Dict) -> str:
    std = row['acc_std']
    text = f"{row['acc_mean']:.2f} +- {std:.2f}" if std is not None else f"{row['acc_mean']:.2f} (one seed)"
    return text + (f" ({len(row['diverged_seeds'])} diverged)" if row.get('diverged_seeds') else '')


def _figure(value: Optional[float], fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def markdown_table(summary: Sequence[Dict]) -> str:
    header = ['model', 'family', 'depth', 'params', 'deployed params', 'test acc % (mean +- std)', 'seeds',
              'train img/s', 'deployed img/s', 'saved activations MB', 'R^2 deepest block: init -> trained',
              'CKA deepest block: init -> trained']
    rows = [[f"{s['label']} (`{s['model']}`)", s['family'], s['depth'] if s['depth'] is not None else f"{s['blocks']} blocks",
             f"{s['params'] / 1e3:.0f}k", _figure(s['deploy_params_m'] and s['deploy_params_m'] * 1e3, '.0f') + 'k'
             if s['deploy_params_m'] else '-', fmt_acc(s), len(s['seeds']), _figure(s['train_img_s'], '.0f'),
             _figure(s['deploy_img_s'], '.0f'), _figure(s['saved_mb'], '.1f'),
             f"{s['retention_init'][-1]['r2']:.2f} -> {s['retention_trained'][-1]['r2']:.2f}",
             f"{s['retention_init'][-1]['cka']:.2f} -> {s['retention_trained'][-1]['cka']:.2f}"] for s in summary]
    return write_table(header, rows, [False, False] + [True] * (len(header) - 2))


def epochs_table(summary: Sequence[Dict]) -> str:
    """Test accuracy after each epoch (mean +- std over seeds), one row per model."""
    epochs = sorted({p['epoch'] for s in summary for p in s['epochs']})
    if not epochs:
        return ''
    rows = []
    for s in summary:
        by_epoch = {p['epoch']: p for p in s['epochs']}
        rows.append([s['label']] + [fmt_acc(dict(by_epoch[e], diverged_seeds=[])) if e in by_epoch else '-' for e in epochs])
    return write_table(['model'] + [f'epoch {e:g}' for e in epochs], rows)


FAMILY_COLORS = {'plain': 'tab:red', 'residual': 'tab:blue', 'pnnh': 'tab:green'}
# (file, x key, x label, scale to the axis unit, lower x is better)
FRONTS = (
    ('accuracy_vs_params.png', 'params', 'parameters (thousands)', 1e-3, True),
    ('accuracy_vs_train_speed.png', 'train_img_s', 'training images/s (bench, side by side)', 1, False),
    ('accuracy_vs_deploy_speed.png', 'deploy_img_s', 'deployed images/s (bench, reparameterized)', 1, False),
)
PLOTS = ('accuracy_vs_epochs.png', 'accuracy_vs_depth.png', *(f[0] for f in FRONTS), 'retention_vs_depth.png')


def pareto_front(points: Sequence[Tuple[float, float]], lower_is_better: bool) -> List[Tuple[float, float]]:
    """The points no other point beats on both x (cheaper) and accuracy, sorted from cheap to costly."""
    ordered = sorted(points, key=lambda p: (p[0] if lower_is_better else -p[0], -p[1]))
    front, best = [], float('-inf')
    for x, acc in ordered:
        if acc > best:
            front.append((x, acc))
            best = acc
    return front


def write_plots(summary: Sequence[Dict], out: Path) -> Tuple[List[str], Optional[str]]:
    """The PNGs in ``out`` that the data allow; returns (written, message when matplotlib is missing)."""
    curves = {}
    for s in summary:
        curves[f"{s['label']} init"] = s['retention_init']
        curves[f"{s['label']} trained"] = s['retention_trained']
    message = plot_retention(out / PLOTS[-1], curves, title='input retention per block (dashed: init, solid: trained)')
    if message:
        return [], message
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter
    written = [PLOTS[-1]]
    if any(s['epochs'] for s in summary):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        cmap = plt.get_cmap('tab10' if len(summary) <= 10 else 'tab20')
        for i, s in enumerate(summary):
            e = s['epochs']
            ax.errorbar([p['epoch'] for p in e], [p['acc_mean'] for p in e], [p['acc_std'] or 0 for p in e], marker='o',
                        capsize=3, label=s['label'], color=cmap(i % cmap.N))
        ax.set_xlabel('epoch'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        ax.set_title('test accuracy after each epoch (mean +- std over seeds)', fontsize=9)
        fig.tight_layout()
        save_figure(fig, out / PLOTS[0])
        written.append(PLOTS[0])
    depths = {s['depth'] for s in summary if s['arch'] == 'resnet'}
    if len(depths) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for family in FAMILIES:
            pts = sorted((s['depth'], s['acc_mean'], s['acc_std'] or 0) for s in summary
                         if s['family'] == family and s['arch'] == 'resnet' and not s['model_kwargs'])
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker='o', capsize=3,
                            label=family, color=FAMILY_COLORS[family])
        ax.set_xlabel('depth (CIFAR-style ResNet)'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3), ax.legend()
        fig.tight_layout()
        save_figure(fig, out / PLOTS[1])
        written.append(PLOTS[1])
    for name, key, xlabel, scale, lower in FRONTS:
        measured = [s for s in summary if s[key] is not None]
        if not measured:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family in FAMILIES:
            mine = [s for s in measured if s['family'] == family]
            if not mine:
                continue
            ax.errorbar([s[key] * scale for s in mine], [s['acc_mean'] for s in mine], [s['acc_std'] or 0 for s in mine],
                        fmt='o', capsize=3, color=FAMILY_COLORS[family], alpha=0.8)
            front = pareto_front([(s[key] * scale, s['acc_mean']) for s in mine], lower)
            ax.plot([p[0] for p in front], [p[1] for p in front], '-', color=FAMILY_COLORS[family], label=f'{family} front')
            for s in mine:
                ax.annotate(s['label'], (s[key] * scale, s['acc_mean']), fontsize=7, xytext=(4, -10),
                            textcoords='offset points')
        ax.set_xscale('log'), ax.set_xlabel(xlabel + (' (lower is cheaper)' if lower else ' (higher is faster)'))
        ax.xaxis.set_major_formatter(ScalarFormatter()), ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis='x', which='minor', labelsize=7)
        ax.set_ylabel('test accuracy (%), mean +- std'), ax.grid(alpha=0.3, which='both'), ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / name)
        written.append(name)
    return [p for p in PLOTS if p in written], None


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
    if args.amp is not None:
        recipe = replace(recipe, amp=None if args.amp == 'fp32' else args.amp)
    changes = dict(recipe=recipe)
    for name in ('seeds', 'depths'):
        value = getattr(args, name)
        if value is not None:
            if not value or len(set(value)) != len(value):
                raise ValueError(f'--{name}={value} is not allowed: give distinct values')
            changes[name] = tuple(value)
    for depth in changes.get('depths', preset.depths):
        if not all(timm.is_model(name.format(depth=depth)) for name in RESNET_NAMES.values()):
            raise ValueError(f'--depths value {depth} is not allowed: the registered CIFAR-style ResNet depths are '
                             f'{", ".join(map(str, CIFAR_DEPTHS))}')
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
    for name in ('seeds', 'depths', 'steps', 'epochs', 'batch_size', 'amp', 'train_size', 'test_size', 'diag_batch', 'device',
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
    log = lambda m: print(m, flush=True)  # noqa: E731
    check_output(out, len(rows) * len(preset.seeds))
    records = sweep(rows, preset, data, out, resume=args.resume, log=log)
    speed = measure_speed(rows, preset, data, out, args.speed_repeats, args.resume, log) if args.speed_repeats else None
    summary = summarize(rows, records, speed)
    plots, message = write_plots(summary, out)
    study = dict(
        command=command_line(args), preset=preset.name, date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
        hardware=hardware(preset.device), epochs=preset.epochs, seeds=list(preset.seeds), recipe=asdict(preset.recipe),
        depths=list(preset.depths), data=data.source, train_seconds=sum(r['seconds'] for r in records),
        speed=speed and {k: speed[k] for k in ('config', 'ratios', 'settings')}, plots=plots, summary=summary, runs=records)
    write_json(out / 'study.json', study)
    print()
    print(markdown_table(summary))
    if preset.epochs:
        print('\nTest accuracy after each epoch:\n\n' + epochs_table(summary))
    print(f'\nwrote {out / "study.json"}' + (' and ' + ', '.join(str(out / p) for p in plots) if plots else ''))
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
    parser.add_argument('--amp', choices=('fp32', 'bf16'), default=None,
                        help="override the preset's precision: fp32, or bf16 autocast")
    parser.add_argument('--train-size', type=int, default=None)
    parser.add_argument('--test-size', type=int, default=None)
    parser.add_argument('--diag-batch', type=int, default=None, help='images per retention batch (fit and score)')
    parser.add_argument('--data-dir', default=None, help='folder holding FashionMNIST/raw (Debian\'s package is found on its own)')
    parser.add_argument('--out', default=None, help='output folder (default: output/study-PRESET)')
    parser.add_argument('--speed-repeats', type=int_arg('--speed-repeats', 0), default=5,
                        help='timed repeats of the side-by-side speed measurement after training (0: skip it)')
    parser.add_argument('--resume', action=argparse.BooleanOptionalAction, default=True,
                        help='reuse finished runs whose settings match (default: on)')
    parser.set_defaults(func=run)

"""Running the study: the data, one run, the sweep with its resume (one JSON record per finished run,
reused while its settings match), and the side-by-side speed measurement."""
import hashlib
import json
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch

from timm_pnnh import training
from timm_pnnh.bench import benchmark, cpu_name, model_spec
from timm_pnnh.data import load_fashion_mnist
from timm_pnnh.diagnostics import MEASURES, diagnosis_images, retention
from timm_pnnh.errors import UsageError, check_writable
from timm_pnnh.files import write_json
from timm_pnnh.schema import RUN_RECORD, SPEED_REPORT, read_json
from timm_pnnh.study.presets import Preset, Row, knob_label, row_recipe

RETENTION_METHOD = 'ridge-gcv space-to-depth R^2, linear CKA, fraction > 0'  # records measured otherwise are redone


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
    """Fashion-MNIST subsets drawn once with ``data_seed`` (the same for every run); FileNotFoundError if absent,
    a UsageError naming the flag for sizes the dataset cannot give."""
    images, labels = load_fashion_mnist(data_dir, train=True)
    test_images, test_labels = load_fashion_mnist(data_dir, train=False)
    for flag, size, available in (('--train-size', preset.train_size, len(images)),
                                  ('--test-size', preset.test_size, len(test_images))):
        if size is not None and not 0 < size <= available:
            raise UsageError(f'{flag}={size} is not allowed: it must be in [1, {available}] (the images of the dataset)')
    gen = torch.Generator().manual_seed(data_seed)
    train_idx = torch.randperm(len(images), generator=gen)[:preset.train_size]
    test_idx = torch.randperm(len(test_images), generator=gen)[:preset.test_size or len(test_images)]
    fit, score, source = diagnosis_images(preset.diag_batch, 1, images.shape[-1], data_dir, data_seed, arg='--diag-batch')
    return Data((images[train_idx], labels[train_idx]), (test_images[test_idx], test_labels[test_idx]), (fit, score),
                f'Fashion-MNIST: {len(train_idx)} training images (of {len(images)}), {len(test_idx)} test images; '
                f'retention on {source}')


def run_one(row: Row, seed: int, preset: Preset, data: Data, log=print, checkpoint: Optional[Path] = None) -> Dict:
    """Train and measure one (model, seed); return its record. With ``checkpoint`` (presets that count
    epochs) the training state is kept there after every epoch and a stopped run continues from it."""
    kwargs = dict(row.model_kwargs, num_classes=10, in_chans=data.train[0].shape[1])
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

    recipe = row_recipe(row, preset)
    result = training.train_and_evaluate(row.model, data.train, data.test, recipe, seed=seed, model_kwargs=kwargs,
                                         progress=progress, on_trained=on_trained, device=preset.device,
                                         eval_every=preset.steps_per_epoch or 0, checkpoint=checkpoint)
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
                seconds=time.perf_counter() - tic + result.earlier_seconds, resumed_step=result.resumed_step,
                cpu=cpu_name(),  # the machine that finished it (seconds and bf16 speed depend on it)
                bf16_through_fp32=training.bf16_through_fp32(torch.device(preset.device), recipe.amp))


def run_settings(row: Row, seed: int, preset: Preset, data: Data) -> Dict:
    """What a record must match to be reused."""
    return dict(model=row.model, kwargs=row.model_kwargs, seed=seed, recipe=asdict(row_recipe(row, preset)),
                train_size=len(data.train[0]), test_size=len(data.test[0]), diag_batch=preset.diag_batch,
                data=data.source, retention=RETENTION_METHOD, eval_every=preset.steps_per_epoch or 0,
                device=preset.device)


def read_record(path: Path) -> Dict:
    """The run record at ``path``; a UsageError saying why when it is unreadable, empty, cut off or not a
    run record (``schema.RUN_RECORD``: a field missing, of another type, not finite or out of range)."""
    return read_json(None, path, RUN_RECORD, 'a run record')


RECORD_BYTES = 2 ** 20  # generous room per run record (they hold well under 100 kB), plus as much for plots


def check_output(out: Path, runs: int) -> None:
    """Fail before any training when ``out`` cannot take the study's files: not creatable, not
    writable, or too little free space for ``runs`` records. UsageError naming --out."""
    check_writable('--out', str(out), str(out))
    try:
        (out / 'runs').mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f'--out={str(out)!r} is not writable ({err.strerror or err})') from None
    check_writable('--out', str(out), str(out / 'runs'))
    free, needed = shutil.disk_usage(out).free, (runs + 1) * RECORD_BYTES
    if free < needed:
        raise UsageError(f'--out={str(out)!r} has {free / 2 ** 20:.1f} MiB free; the study needs about '
                         f'{needed / 2 ** 20:.0f} MiB for {runs} run records and plots')


def sweep(rows: Sequence[Row], preset: Preset, data: Data, out: Path, resume: bool = True, log=print,
          train: bool = True, pending: Optional[List[str]] = None) -> List[Dict]:
    """Every (seed, row) run, seeds outermost; finished runs with matching settings are reused. With
    ``train=False`` nothing is trained: the runs not finished yet are logged and named in ``pending``."""
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
                record = read_record(path)
            except UsageError as err:
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: {err}; running again')
            else:
                if record['settings_digest'] == digest:
                    log(f'[{i}/{len(todo)}] {row.label} seed {seed}: finished earlier, reused ({record["test_acc"]:.2f}%)')
                    records.append(record)
                    continue
                log(f'[{i}/{len(todo)}] {row.label} seed {seed}: a record with other settings exists; running again')
        if not train:
            log(f'[{i}/{len(todo)}] {row.label} seed {seed}: not finished yet (--finished-only: not trained)')
            if pending is not None:
                pending.append(f'{row.label} seed {seed}')
            continue
        log(f'[{i}/{len(todo)}] {row.label} seed {seed} ({row.model}{" " + knob_label(row.kwargs) if row.kwargs else ""})')
        state = runs_dir / f'.{run_key(row, seed)}.{digest}.state' if preset.epochs else None
        if state is not None and state.is_file():
            log(f'    continuing from the training state saved after its last finished epoch ({state.name})')
        record = run_one(row, seed, preset, data, log, checkpoint=state)
        record.update(settings=settings, settings_digest=digest)
        write_json(path, record)
        if state is not None:
            state.unlink(missing_ok=True)
        log(f'    test acc {record["test_acc"]:.2f}%  '
            f'R^2 deepest block {record["retention_init"][-1]["r2"]:.2f} (init) -> {record["retention_trained"][-1]["r2"]:.2f}')
        records.append(record)
    return records


SPEED_STEPS, SPEED_WARMUP = 3, 2  # per timed repeat, and untimed steps first (``bench.benchmark``)


def speed_settings(rows: Sequence[Row], preset: Preset, data: Data, repeats: int) -> Dict:
    """What ``measure_speed`` runs: every row as a bench spec at the study's batch, input and device."""
    images = data.train[0]
    specs = {row.label: model_spec(row.model, dict(row.model_kwargs, num_classes=10, in_chans=images.shape[1])) for row in rows}
    reference = next((row.label for row in rows if row.family == 'residual' and not row.kwargs), rows[0].label)
    return dict(specs=specs, reference=specs[reference], batch_size=preset.recipe.batch_size, img_size=images.shape[-1],
                device=preset.device, channels_last=preset.recipe.channels_last, amp=preset.recipe.amp,
                repeats=repeats, steps=SPEED_STEPS, warmup=SPEED_WARMUP, hardware=hardware(preset.device))


def measure_speed(rows: Sequence[Row], preset: Preset, data: Data, out: Path, repeats: int, resume: bool = True,
                  log=print) -> Dict:
    """Training, eval and deployed images/s and saved activations of every row, all models in one
    ``bench.benchmark`` process taking turns (the project's one timer), written to ``OUT/speed.json``;
    a file with the same settings is reused (with ``resume``), also when it was measured on another machine
    (the figures name their machine), so a study resumes to the same tables anywhere; ``resume=False``
    measures on this one. Run it on an otherwise idle machine."""
    settings = speed_settings(rows, preset, data, repeats)
    path = out / 'speed.json'
    if resume and path.is_file():
        try:
            report = read_json(None, path, SPEED_REPORT, 'the speed figures of a study')
        except UsageError as err:
            log(f'speed: {err}; measuring again')
            report = dict(settings={})
        earlier = report['settings']
        if _digest(_but_hardware(earlier)) == _digest(_but_hardware(settings)):
            if earlier.get('hardware') == settings['hardware']:
                log(f'speed: measured earlier, reused ({path})')
            else:
                machine = earlier.get('hardware', {}).get('cpu') or 'another machine'
                log(f'speed: measured earlier on {machine}, reused ({path}); --retime measures on this machine')
            return report
    log(f'speed: {len(rows)} models side by side, batch {settings["batch_size"]}, {repeats} repeats '
        f'(timings: keep the machine otherwise idle)')
    report = benchmark(list(settings['specs'].values()), batch_size=settings['batch_size'], img_size=settings['img_size'],
                       device=settings['device'], channels_last=settings['channels_last'], amp=settings['amp'],
                       repeats=repeats, steps=SPEED_STEPS, warmup=SPEED_WARMUP, reference=settings['reference'])
    report.update(settings=settings)
    write_json(path, report)
    return report


def _but_hardware(settings: Dict) -> Dict:
    return {k: v for k, v in settings.items() if k != 'hardware'}


def hardware(device: str = 'cpu') -> Dict[str, Any]:
    dev = torch.device(device)
    return dict(cpu=cpu_name(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), device=str(dev),
                gpu=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None,
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                platform=platform.platform())

"""``timm-pnnh bench``: speed, size and memory of timm models side by side, as ratios to a baseline.

The paper (arXiv:2402.08645, Figure 4) reports up to 0.3x higher training throughput for PNNH nets
than for residual ones, and residual nets running out of GPU memory where PNNH nets did not. This
command measures what such a claim rests on, for any timm model names (``pnnh_*``, their ``plain_*``
baselines, timm's own ``resnet34`` ...):

* ``params_m``: parameters (millions) of the training form; ``deploy_params_m`` of the deployed form
  (below).
* ``gflops`` / ``deploy_gflops``: forward FLOPs per image (``torch.utils.flop_counter``; a
  multiply-add counts as 2), eval mode. ``train_gflops``: FLOPs per image of a training step's forward,
  cross-entropy and backward, whatever backward computes (a PNNH coder's recomputed code included).
* ``train_img_s``: training steps (forward, cross-entropy, backward, timm SGD step) per second times
  the batch size.
* ``infer_img_s``: eval-mode forward under ``no_grad``; ``deploy_img_s``: the same for the
  deployed model: timm's ``reparameterize_model`` (the deployed form: PNNH blocks folded into plain
  conv stacks), then ``timm_pnnh.reparam.fold_batchnorms``, which folds the conv -> BN pairs left
  (the stem; every BatchNorm of timm's own ``resnet*``), so the deployment ratio is fair.
* ``saved_mb``: bytes of the tensors autograd saves for backward in one training forward
  (``torch.autograd.graph.saved_tensors_hooks``, each storage once, parameters excluded): the
  activation memory a training step holds at its peak, on any device. It leaves out weights,
  gradients, optimizer state and transient buffers; always measured on the eager model.
* ``peak_step_mb`` (CUDA only): ``torch.cuda.max_memory_allocated`` during one training step, above
  what was allocated before it (weights and optimizer state of all models under test).

All models are built in one process, at the same batch and input size; each figure is the median of
``--repeats`` timed runs of ``--steps`` steps after ``--warmup`` steps, and the models take turns in
every repeat, so that a load change on a shared machine hits them all alike.
"""
import argparse
import ast
import datetime
import platform
import re
import statistics
import time
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.utils.model import reparameterize_model
from torch.utils.flop_counter import FlopCounterMode

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.cpu import cpuinfo
from timm_pnnh.errors import UsageError, check_image_size, check_output_file
from timm_pnnh.files import check_markers, markdown_table as write_table, write_between_markers, write_json
from timm_pnnh.models.coder_ops import matmul_1x1_on
from timm_pnnh.reparam import fold_batchnorms
from timm_pnnh.training import AMP_DTYPES, autocast as training_autocast, bf16_kernels, precision

__all__ = ['benchmark', 'bench_table', 'METRICS', 'parse_model', 'model_spec', 'flops_per_image', 'train_flops_per_image']

# (key, label, higher is better)
METRICS = (
    ('params_m', 'params (M)', False),
    ('deploy_params_m', 'params deployed (M)', False),
    ('gflops', 'GFLOPs / image', False),
    ('deploy_gflops', 'GFLOPs / image deployed', False),
    ('train_gflops', 'GFLOPs / image training step', False),
    ('train_img_s', 'train images/s', True),
    ('infer_img_s', 'eval images/s', True),
    ('deploy_img_s', 'deployed images/s', True),
    ('saved_mb', 'saved activations (MB)', False),
    ('peak_step_mb', 'CUDA peak of a train step (MB)', False),
)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, else ``platform``) and the vector instructions torch runs on it,
    e.g. ``'AMD EPYC, AVX2'``: timings and bf16 speed depend on both, and machines differ between runs."""
    name = (cpuinfo() or {}).get('model name') or platform.processor() or platform.machine()
    return f'{name}, {torch.backends.cpu.get_cpu_capability()}'


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f'{name}={value!r} is not allowed: it must be a positive integer')
    return value


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not allowed: it must be 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f"device={device!r} is not allowed: it must be 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device={device!r} is not available: torch sees no CUDA device here')
    return dev


def parse_model(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``'NAME'`` or ``'NAME:key=value,key=value'`` -> ``(NAME, kwargs)``; values are Python literals or
    plain words (``pnnh_resnet56:learner_ratio=0.5,coder_init=kaiming``). ValueError on a bad spec."""
    name, _, knobs = spec.partition(':')
    if not timm.is_model(name):
        raise ValueError(f'model {name!r} is not a registered timm model '
                         f'(see `timm-pnnh models --names-only` or timm.list_models())')
    kwargs: Dict[str, Any] = {}
    for item in filter(None, knobs.split(',')):
        key, eq, text = item.partition('=')
        if not eq or not key.isidentifier():
            raise ValueError(f'model {spec!r} is not allowed: write NAME or NAME:key=value,key=value')
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return name, kwargs


def model_spec(name: str, kwargs: Dict[str, Any]) -> str:
    """The inverse of ``parse_model``."""
    return name + (':' + ','.join(f'{k}={v}' for k, v in kwargs.items()) if kwargs else '')


def check_models(specs: List[str]) -> List[str]:
    if not specs:
        raise ValueError('models=[] is not allowed: give at least one model name')
    for spec in specs:
        parse_model(spec)
    if len(set(specs)) != len(specs):
        raise ValueError(f'models={specs} is not allowed: each model may be given once')
    return specs


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the in-place ``addmm_`` (which it leaves out): the deployed coder's
    decoder on channels_last input adds its product into the learner's output with it."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops})


def flops_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs of ``model`` on the first image of ``x`` (a multiply-add counts as 2)."""
    with torch.no_grad(), _flop_counter() as counter:
        model(x[:1])
    return counter.get_total_flops() / 1e9


def train_flops_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """GFLOPs per image of a training step's forward, cross-entropy and backward on the first two images
    of ``x`` (one if it has one); leaves no gradient behind."""
    with _flop_counter() as counter:
        F.cross_entropy(model(x[:2]), y[:2]).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9 / len(x[:2])


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> int:
    """Bytes of the storages autograd saves for backward in one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(saved.values())


class _Entry:
    """One model under test: its training form, optimizer, and (later) its deployed form."""

    def __init__(self, spec: str, device, channels_last: bool, compile_: bool, batch_size: int, img_size: int):
        self.name = spec
        name, kwargs = parse_model(spec)
        model = timm.create_model(name, **kwargs).to(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=memory_format)
        in_chans = model.pretrained_cfg['input_size'][0] if 'in_chans' not in kwargs else kwargs['in_chans']
        self.x = torch.randn(batch_size, in_chans, img_size, img_size, device=device).to(memory_format=memory_format)
        self.y = torch.randint(0, model.num_classes, (batch_size,), device=device)
        self.optimizer = create_optimizer_v2(model, opt='sgd', lr=0.01, momentum=0.9, weight_decay=5e-5)
        self.run = torch.compile(model) if compile_ else model
        self.compile = compile_
        self.deployed = self.run_deployed = None
        self.times: Dict[str, List[float]] = {'train_img_s': [], 'infer_img_s': [], 'deploy_img_s': []}

    def deploy(self) -> None:
        self.deployed = fold_batchnorms(reparameterize_model(self.model.eval()))
        self.run_deployed = torch.compile(self.deployed) if self.compile else self.deployed


def benchmark(
        models: List[str],
        batch_size: int = 32,
        img_size: Optional[int] = None,
        device: str = 'cpu',
        channels_last: bool = False,
        amp: Optional[str] = None,
        compile: bool = False,
        repeats: int = 5,
        steps: int = 5,
        warmup: int = 2,
        reference: Optional[str] = None,
) -> Dict:
    """Measure ``models`` alternately; return ``{'config', 'results': {name: metrics}, 'ratios'}``.

    ``models`` are timm names or ``NAME:key=value,...`` specs (``parse_model``). Ratios are each
    model's figure divided by ``reference``'s (default: ``models[1]``, the first ``--vs``, or
    ``models[0]`` when only one model is given); for the timings, the median over repeats of the
    ratio within the repeat (the models ran back to back in it), which cancels slow load drifts.
    """
    check_models(models)
    if reference is not None and reference not in models:
        raise ValueError(f'reference={reference!r} is not allowed: it must be one of the models {models}')
    for name, value in (('batch_size', batch_size), ('repeats', repeats), ('steps', steps)):
        _positive(name, value)
    if img_size is not None:
        _positive('img_size', img_size)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f'warmup={warmup!r} is not allowed: it must be an integer >= 0')
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f'amp={amp!r} is not allowed: it must be one of {sorted(AMP_DTYPES)} or None')
    dev = check_device(device)
    if img_size is None:
        name, kwargs = parse_model(models[0])
        img_size = kwargs.get('img_size', timm.get_pretrained_cfg(name).input_size[-1])

    def autocast():
        return precision(dev, amp)

    torch.manual_seed(0)
    entries = [_Entry(name, dev, channels_last, compile, batch_size, img_size) for name in models]
    for e in entries:
        check_image_size('--img-size', e.name, e.model, img_size)
    results: Dict[str, Dict] = {}
    for e in entries:
        e.model.eval()
        results[e.name] = {'params_m': sum(p.numel() for p in e.model.parameters()) / 1e6,
                           'gflops': flops_per_image(e.model, e.x)}
        e.model.train()
        results[e.name]['train_gflops'] = train_flops_per_image(e.model, e.x, e.y)
        results[e.name]['saved_mb'] = _saved_bytes(e.model, e.x, e.y, autocast()) / 2 ** 20

    def train_step(e: _Entry) -> None:
        e.optimizer.zero_grad(set_to_none=True)
        with bf16_kernels(dev, amp):  # forward and backward
            with training_autocast(dev, amp):
                loss = F.cross_entropy(e.run(e.x), e.y)
            loss.backward()
        e.optimizer.step()

    def infer(e: _Entry) -> None:
        with torch.no_grad(), autocast():
            e.run(e.x)

    def infer_deployed(e: _Entry) -> None:
        with torch.no_grad(), autocast():
            e.run_deployed(e.x)

    def measure(key: str, fn, mode: str) -> None:
        for e in entries:
            e.model.train(mode == 'train')
            for _ in range(warmup):
                fn(e)
        for _ in range(repeats):
            for e in entries:
                e.model.train(mode == 'train')
                _sync(dev)
                start = time.perf_counter()
                for _ in range(steps):
                    fn(e)
                _sync(dev)
                e.times[key].append(batch_size * steps / (time.perf_counter() - start))

    measure('train_img_s', train_step, 'train')
    if dev.type == 'cuda':
        for e in entries:
            e.model.train()
            e.optimizer.zero_grad(set_to_none=True)
            _sync(dev)
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            train_step(e)
            _sync(dev)
            results[e.name]['peak_step_mb'] = (torch.cuda.max_memory_allocated(dev) - before) / 2 ** 20
    measure('infer_img_s', infer, 'eval')
    for e in entries:
        e.deploy()
        results[e.name]['deploy_params_m'] = sum(p.numel() for p in e.deployed.parameters()) / 1e6
        results[e.name]['deploy_gflops'] = flops_per_image(e.deployed, e.x)
    measure('deploy_img_s', infer_deployed, 'eval')
    for e in entries:
        for key, values in e.times.items():
            results[e.name][key] = statistics.median(values)
            results[e.name][key + '_runs'] = values

    reference = reference or (models[1] if len(models) > 1 else models[0])
    ratios = {name: {key: r[key] / results[reference][key] for key, _, _ in METRICS
                     if key in r and results[reference].get(key)} for name, r in results.items()}
    for name, r in results.items():  # timings: the median of the ratios within each repeat (paired)
        for key in entries[0].times:
            ratios[name][key] = statistics.median(a / b for a, b in zip(r[key + '_runs'], results[reference][key + '_runs']))
    # what time would be if it followed arithmetic: the reference's FLOPs over the model's (a training step's
    # for training)
    flop_limits = {name: {'train_img_s': results[reference]['train_gflops'] / r['train_gflops'],
                          'infer_img_s': results[reference]['gflops'] / r['gflops'],
                          'deploy_img_s': results[reference]['deploy_gflops'] / r['deploy_gflops']} for name, r in results.items()}
    config = dict(models=models, reference=reference, batch_size=batch_size, img_size=img_size, device=str(dev),
                  device_name=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_name(),
                  channels_last=channels_last, coder_1x1='matmul' if channels_last and matmul_1x1_on(dev.type) else 'conv',
                  amp=amp, compile=compile, repeats=repeats, steps=steps, warmup=warmup,
                  threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    return dict(config=config, results=results, ratios=ratios, flop_limits=flop_limits)


TIMINGS = ('train_img_s', 'infer_img_s', 'deploy_img_s')


def bench_table(report: Dict) -> str:
    """Metrics as rows, one column per model, then one ratio column per model against the reference.

    Timings show the median with the lowest and highest repeat; timing ratios the ratio the FLOPs allow
    beside the measured one."""
    names, reference = report['config']['models'], report['config']['reference']
    others = [n for n in names if n != reference]

    def value(name: str, key: str) -> str:
        r = report['results'][name]
        runs = r.get(key + '_runs')
        return f"{r[key]:.4g} ({min(runs):.4g}-{max(runs):.4g})" if key in TIMINGS and runs else f"{r[key]:.4g}"

    def ratio(name: str, key: str) -> str:
        if key not in report['ratios'][name]:
            return '-'
        limit = report.get('flop_limits', {}).get(name, {}).get(key)
        return f"{report['ratios'][name][key]:.3f}x" + (f' (FLOPs: {limit:.3f}x)' if limit is not None else '')

    header = ['metric'] + [f'`{n}`' for n in names] + [f'`{n}` / `{reference}`' for n in others]
    rows = [[f"{label} ({'higher' if higher_better else 'lower'} is better)"] + [value(n, key) for n in names]
            + [ratio(n, key) for n in others]
            for key, label, higher_better in METRICS if key in report['results'][names[0]]]
    return write_table(header, rows)


def markers(section: str = 'bench') -> Tuple[str, str]:
    """The markers ``--write-readme`` writes between: ``<!-- SECTION:start -->`` ... ``<!-- SECTION:end -->``."""
    return f'<!-- {section}:start -->', f'<!-- {section}:end -->'


def _section(text: str) -> str:
    if not re.fullmatch(r'[a-z0-9][a-z0-9-]*', text):
        raise ValueError(f'--section={text!r} is not allowed: it must be lower-case letters, digits and dashes')
    return text


def command_line(args) -> str:
    """The ``timm-pnnh bench`` command that ``args`` come from (without --json and --write-readme)."""
    parts = ['timm-pnnh bench', '--model', args.model] + [w for vs in args.vs for w in ('--vs', vs)]
    parts += ['--batch-size', str(args.batch_size)] + (['--img-size', str(args.img_size)] if args.img_size else [])
    parts += (['--device', args.device] if args.device != 'cpu' else []) + (['--channels-last'] if args.channels_last else [])
    parts += (['--amp', args.amp] if args.amp else []) + (['--compile'] if args.compile else [])
    return ' '.join(parts + ['--repeats', str(args.repeats), '--steps', str(args.steps), '--warmup', str(args.warmup)])


def check_arguments(args) -> None:
    """``bench --json``: a file that can be written; ``--write-readme``: a file with the bench markers (the
    models and numbers are checked while parsing)."""
    if args.json:
        check_output_file('--json', args.json)
    if args.write_readme:
        check_markers(args.write_readme, markers(args.section))


def run(args) -> int:
    check_arguments(args)
    try:
        report = benchmark([args.model] + args.vs, batch_size=args.batch_size, img_size=args.img_size,
                           device=args.device, channels_last=args.channels_last, amp=args.amp,
                           compile=args.compile, repeats=args.repeats, steps=args.steps, warmup=args.warmup)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from None
    c = report['config']
    header = (f"# {c['date']}  device={c['device']} ({c['device_name']}, {c['threads']} threads)  batch={c['batch_size']}  "
          f"input={c['img_size']}x{c['img_size']}  channels_last={c['channels_last']}  coder_1x1={c['coder_1x1']}  "
          f"amp={c['amp']}  compile={c['compile']}  median of {c['repeats']} x {c['steps']} steps after {c['warmup']} warm-up; "
          f"torch {c['torch']}, timm {c['timm']}")
    table = bench_table(report)
    print(header)
    print(table)
    if args.write_readme:
        write_between_markers(args.write_readme, markers(args.section), f'`{command_line(args)}`\n\n{header[2:]}\n\n{table}')
        print(f'wrote the table into {args.write_readme}')
    if args.json:
        write_json(args.json, report)
        print(f'wrote {args.json}')
    return 0


def _arg(check):
    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = check.__name__
    return parse


def int_arg(name: str, minimum: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f'{name}={text!r} is not allowed: it must be an integer >= {minimum}')
        return value
    return _arg(check)


def _model_arg(text: str) -> str:
    return check_models([text])[0]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'bench', help='params, GFLOPs, train/eval/deployed images/s and memory of models, as ratios',
        description='Measure --model and each --vs alternately in one process; ratios are to the first --vs.')
    parser.add_argument('--model', required=True, type=_arg(_model_arg),
                        help='timm model name, e.g. pnnh_resnet56, or NAME:key=value,... (pnnh_resnet56:learner_ratio=0.5)')
    parser.add_argument('--vs', action='append', default=[], type=_arg(_model_arg),
                        help='a model to compare with (repeatable); ratios are to the first one')
    parser.add_argument('--batch-size', type=int_arg('--batch-size', 1), default=32)
    parser.add_argument('--img-size', type=int_arg('--img-size', 1), default=None,
                        help="input height and width (default: the --model's default input size)")
    parser.add_argument('--device', type=_arg(lambda t: str(check_device(t))), default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--channels-last', action='store_true', help='channels_last memory format (for the GPU)')
    parser.add_argument('--amp', choices=sorted(AMP_DTYPES), default=None, help='autocast to this dtype')
    parser.add_argument('--compile', action='store_true', help='torch.compile every form (train, eval, deployed)')
    parser.add_argument('--repeats', type=int_arg('--repeats', 1), default=5, help='timed runs; the median is kept')
    parser.add_argument('--steps', type=int_arg('--steps', 1), default=5, help='steps per timed run')
    parser.add_argument('--warmup', type=int_arg('--warmup', 0), default=2, help='untimed steps before timing')
    parser.add_argument('--json', default=None, help='also write the full report (every run) to this JSON file')
    parser.add_argument('--write-readme', metavar='FILE', default=None,
                        help='also write the command and the table between the --section markers of this file (docs/speed.md)')
    parser.add_argument('--section', type=_arg(_section), default='bench',
                        help='with --write-readme: write between <!-- SECTION:start --> and <!-- SECTION:end --> (default: bench)')
    parser.set_defaults(func=run)

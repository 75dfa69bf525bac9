"""A short, seeded training run on in-memory tensors, built from timm's parts.

Used by the study (``timm-pnnh study``). The recipe (the paper's first
measurement, arXiv:2402.08645): SGD with Nesterov momentum 0.9, weight decay 5e-4, peak lr 0.1 with linear warm-up over
the first 10% of the steps and cosine decay (timm's ``CosineLRScheduler``, stepped per update), batch
128; ``opt='adamw'`` for the study's ViT rows. ``channels_last`` and bf16 autocast are the recipe's too
(on CPU channels_last is what makes the memory-bound 1x1 coder convolutions affordable: docs/speed.md).
A run whose loss stops being finite ends there and is reported as diverged, with the step. For long
runs on real datasets use timm's own train.py (``timm-pnnh run train.py``).
"""
import logging
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import accuracy

from timm_pnnh.checkpoint import save_checkpoint
from timm_pnnh.cpu import CPUINFO, cpuinfo

_logger = logging.getLogger(__name__)

OPTIMIZERS = ('sgd', 'adamw')
AMP_DTYPES = {'bf16': torch.bfloat16}


def autocast(device: torch.device, amp: Optional[str]):
    """torch.autocast to ``AMP_DTYPES[amp]`` on ``device``'s type, or nothing when ``amp`` is None."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else nullcontext()


BF16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16', 'bf16'})  # x86 AVX-512 BF16 and AMX, Arm's bf16 extension


def cpu_flags(path: str = CPUINFO) -> Optional[frozenset]:
    """The instruction-set flags the kernel lists for the first CPU (``flags`` on x86, ``Features`` on
    Arm), or None where ``path`` cannot be read (not Linux)."""
    fields = cpuinfo(path)
    if fields is None:
        return None
    return frozenset((fields.get('flags') or fields.get('Features') or '').split())


def cpu_has_native_bf16(path: str = CPUINFO) -> bool:
    """True when this CPU computes in bf16 itself: oneDNN has bf16 kernels and the CPU has bf16
    instructions (``BF16_CPU_FLAGS``; where the flags cannot be read, oneDNN's answer alone). oneDNN also
    says yes on AVX-512 without them, and there bf16 autocast is emulated too: with torch's own bf16
    kernels the PNNH ViT of ``vit-cpu`` trained at 74 images/s in bf16 against 215 in fp32 on such an Intel
    Xeon, and with AVX2 alone a training step of the study's CNNs ran 13x to 14x slower than fp32
    (docs/speed.md); so there ``bf16_kernels`` runs the products in fp32 kernels."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    flags = cpu_flags(path)
    return flags is None or bool(flags & BF16_CPU_FLAGS)


class Bf16ThroughFp32Kernels(TorchDispatchMode):
    """bf16 autocast's matrix products computed by torch's fp32 kernels: inside this mode a matrix
    product, convolution or fused attention (forward or backward) whose operands are bf16 is run on
    those operands widened to fp32 (exactly) and its result is rounded to bf16, as torch's own bf16 CPU
    kernels do after accumulating in fp32; only the order of the fp32 sums differs. Every other op, and
    every tensor the network keeps, is bf16 as under plain autocast. For CPUs without bf16 instructions
    (``cpu_has_native_bf16``), where torch's bf16 kernels are emulated: with AVX2 alone one training step
    of the ``vit-cpu`` SAS-P ViT took 11.3 s with them, 1.65 s in this mode and 1.2 s in fp32 (2 threads)."""
    OPS = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
                     torch.ops.aten.baddbmm.default, torch.ops.aten.convolution.default,
                     torch.ops.aten.convolution_backward.default,
                     torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
                     torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default})
    FP32_OUTPUTS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: 1}  # its logsumexp is fp32 in bf16 too

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in self.OPS or not any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
            return func(*args, **kwargs)
        out = func(*(a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a for a in args), **kwargs)
        if isinstance(out, torch.Tensor):
            return out.to(torch.bfloat16)
        keep = self.FP32_OUTPUTS.get(func)
        return type(out)(o.to(torch.bfloat16) if isinstance(o, torch.Tensor) and i != keep else o for i, o in enumerate(out))


def bf16_through_fp32(device: torch.device, amp: Optional[str]) -> bool:
    """True where ``amp`` on ``device`` is bf16 on a CPU without native bf16 (``Bf16ThroughFp32Kernels``)."""
    return amp == 'bf16' and device.type == 'cpu' and not cpu_has_native_bf16()


def bf16_kernels(device: torch.device, amp: Optional[str]):
    """The mode a bf16 forward and backward run under on ``device``: ``Bf16ThroughFp32Kernels`` on a CPU
    without native bf16, nothing elsewhere (or without amp)."""
    return Bf16ThroughFp32Kernels() if bf16_through_fp32(device, amp) else nullcontext()


@contextmanager
def precision(device: torch.device, amp: Optional[str]):
    """``autocast`` inside ``bf16_kernels``, for code whose backward (if any) runs in the same block."""
    with bf16_kernels(device, amp), autocast(device, amp):
        yield


@dataclass
class Recipe:
    """The schedule shared by every model of a comparison."""
    steps: int = 250
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.1
    eval_batch_size: int = 500
    opt: str = 'sgd'
    channels_last: bool = False
    amp: Optional[str] = None  # 'bf16': bfloat16 autocast

    def __post_init__(self):
        for name in ('steps', 'batch_size', 'eval_batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name}={value!r} is not allowed: it must be a positive integer')
        for name in ('lr', 'weight_decay', 'momentum', 'warmup_fraction'):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f'{name}={value!r} is not allowed: it must be a finite number >= 0')
        if self.warmup_fraction >= 1:
            raise ValueError(f'warmup_fraction={self.warmup_fraction!r} is not allowed: it must be in [0, 1)')
        if self.opt not in OPTIMIZERS:
            raise ValueError(f'opt={self.opt!r} is not allowed: it must be one of {OPTIMIZERS}')
        if not isinstance(self.channels_last, bool):
            raise ValueError(f'channels_last={self.channels_last!r} is not allowed: it must be True or False')
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f'amp={self.amp!r} is not allowed: it must be None or one of {tuple(AMP_DTYPES)}')

    def autocast(self, device: torch.device):
        return autocast(device, self.amp)


@dataclass
class RunResult:
    model: str
    seed: int
    params: int
    test_acc: float
    final_train_loss: float
    recipe: Dict[str, Any] = field(default_factory=dict)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    curve: List[Dict[str, float]] = field(default_factory=list)  # test accuracy every ``eval_every`` steps
    diverged_step: Optional[int] = None  # the first step whose loss was not finite
    resumed_step: Optional[int] = None  # the step a saved training state was continued from
    earlier_seconds: float = 0.0  # wall time spent on the steps before ``resumed_step``, by an earlier process


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500,
             recipe: Optional[Recipe] = None) -> float:
    """Top-1 accuracy in percent, in eval mode, on the model's device with the recipe's memory format and autocast."""
    model.eval()
    recipe = recipe or Recipe()
    device = next(model.parameters()).device
    correct = 0.0
    for start in range(0, len(images), batch_size):
        with precision(device, recipe.amp):
            logits = model(_batch(images[start:start + batch_size], device, recipe))
        correct += accuracy(logits.float(), labels[start:start + batch_size].to(device), topk=(1,))[0].item() * len(logits) / 100
    return 100.0 * correct / len(images)


def _batch(images: torch.Tensor, device: torch.device, recipe: Recipe) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if recipe.channels_last else images


def train_and_evaluate(
        model_name: str,
        train: tuple,
        test: tuple,
        recipe: Optional[Recipe] = None,
        seed: int = 0,
        model_kwargs: Optional[Dict[str, Any]] = None,
        progress: Optional[Callable[[int, float], None]] = None,
        on_trained: Optional[Callable[[torch.nn.Module], None]] = None,
        eval_every: int = 0,
        device: str = 'cpu',
        checkpoint: Optional[os.PathLike] = None,
) -> RunResult:
    """Train ``model_name`` on ``train = (images, labels)`` with ``recipe``; score it on ``test``.

    The seed fixes the model's initialisation and the batch order, so two models trained with the
    same seed see the same batches. ``progress(step, loss)`` is called after every step;
    ``on_trained(model)`` once with the trained model (in eval mode), after scoring, unless the run
    diverged. With
    ``eval_every=N`` the test accuracy after every N steps goes into ``RunResult.curve`` (the last
    point is the final score). A loss that is not finite stops the run: ``diverged_step`` names the
    step and the test accuracy is that of the model at that point. Speed is not measured here
    (``timm_pnnh.bench`` times models side by side).

    With ``checkpoint=PATH`` (and ``eval_every``) the run's whole state (model, optimizer, scheduler,
    batch order, random state, curve) is written to PATH, atomically, at every curve point; a run that
    finds there the state of the same run (model, model arguments, seed, recipe, training-set size,
    ``eval_every``) continues from it and ends as the uninterrupted run would. A state of another run
    is ignored (and overwritten at the next curve point). Removing PATH once the result is stored is
    the caller's job.
    """
    recipe = recipe or Recipe()
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f'eval_every={eval_every!r} is not allowed: it must be an integer >= 0 (0: only at the end)')
    if checkpoint is not None and not eval_every:
        raise ValueError(f'checkpoint={str(checkpoint)!r} is not allowed with eval_every=0: the state is written at '
                         f'every curve point, so it needs eval_every >= 1')
    dev = torch.device(device)
    images, labels = train
    model_kwargs = dict(model_kwargs or {})
    model_kwargs.setdefault('num_classes', int(labels.max()) + 1)
    model_kwargs.setdefault('in_chans', images.shape[1])
    torch.manual_seed(seed)
    model = timm.create_model(model_name, **model_kwargs).to(dev)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_kwargs = dict(momentum=recipe.momentum, nesterov=True) if recipe.opt == 'sgd' else {}
    optimizer = create_optimizer_v2(model, recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay, **opt_kwargs)
    scheduler = CosineLRScheduler(optimizer, t_initial=recipe.steps, lr_min=0.0,
                                  warmup_t=int(recipe.warmup_fraction * recipe.steps), warmup_lr_init=recipe.lr / 100,
                                  t_in_epochs=False)
    images, labels = images.to(dev), labels.to(dev)  # the whole set on the device once (a no-op on CPU)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    position = 0
    model.train()
    loss = torch.tensor(float('nan'))
    curve: List[Dict[str, float]] = []
    diverged_step = None
    identity = dict(model=model_name, model_kwargs=model_kwargs, seed=seed, recipe=asdict(recipe),
                    train_size=len(images), eval_every=eval_every)
    start, earlier_seconds, tic = 0, 0.0, time.perf_counter()
    state = _read_state(checkpoint, identity) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        generator.set_state(state['generator'])
        torch.set_rng_state(state['rng'])
        if dev.type == 'cuda':
            torch.cuda.set_rng_state(state['cuda_rng'], dev)
        order, position, start, curve = state['order'], state['position'], state['step'], state['curve']
        earlier_seconds = state['seconds']
        _logger.info('%s seed %d: continuing from step %d (%s)', model_name, seed, start, checkpoint)
    for step in range(start, recipe.steps):
        if position + recipe.batch_size > len(images):  # a new epoch: a new order, the remainder dropped
            order = torch.randperm(len(images), generator=generator)
            position = 0
        index = order[position:position + recipe.batch_size]
        position += recipe.batch_size
        with bf16_kernels(dev, recipe.amp):  # forward and backward
            with recipe.autocast(dev):
                loss = F.cross_entropy(model(_batch(images[index], dev, recipe)), labels[index])
            if not torch.isfinite(loss):
                diverged_step = step
                _logger.warning('%s seed %d: loss %s at step %d; the run stops here', model_name, seed, loss.item(), step)
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        if progress is not None:
            progress(step, loss.item())
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < recipe.steps:
            curve.append(dict(step=step + 1, test_acc=evaluate(model, *test, recipe.eval_batch_size, recipe),
                              train_loss=loss.item()))
            model.train()
            if checkpoint is not None:
                state = dict(identity=identity, step=step + 1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                             scheduler=scheduler.state_dict(), generator=generator.get_state(), rng=torch.get_rng_state(),
                             order=order, position=position, curve=curve,
                             seconds=earlier_seconds + time.perf_counter() - tic)
                if dev.type == 'cuda':
                    state['cuda_rng'] = torch.cuda.get_rng_state(dev)
                save_checkpoint(state, checkpoint)
    test_acc = evaluate(model, *test, recipe.eval_batch_size, recipe)
    if eval_every:
        curve.append(dict(step=step + 1 if diverged_step is None else diverged_step, test_acc=test_acc,
                          train_loss=loss.item()))
    if on_trained is not None and diverged_step is None:
        on_trained(model)
    return RunResult(
        model=model_name, seed=seed, params=sum(p.numel() for p in model.parameters()), test_acc=test_acc,
        final_train_loss=loss.item(),
        recipe=asdict(recipe), model_kwargs={k: v for k, v in model_kwargs.items()}, curve=curve,
        diverged_step=diverged_step, resumed_step=start or None, earlier_seconds=earlier_seconds)


def _read_state(path: os.PathLike, identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The training state at ``path`` when it is one of the run ``identity`` names; None otherwise.
    Not ``checkpoint.read_checkpoint``: a state file this module wrote that cannot be read is no user
    error but a run to start over, so any failure to load it means None."""
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as err:  # cut off or not a state file: the run starts over
        _logger.warning('%s is not a training state (%s); starting from step 0', path, err)
        return None
    if not isinstance(state, dict) or state.get('identity') != identity:
        _logger.warning('%s holds the state of another run; starting from step 0', path)
        return None
    return state

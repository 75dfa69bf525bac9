"""A short, seeded training run on in-memory tensors, built from timm's parts.

Used by ``timm-pnnh compare`` and the study. The recipe (PAPER.md's first measurement): SGD with
Nesterov momentum 0.9, weight decay 5e-4, peak lr 0.1 with linear warm-up over the first 10% of the
steps and cosine decay (timm's ``CosineLRScheduler``, stepped per update), batch 128. For long runs
and real datasets use timm's own train.py (``timm-pnnh run train.py``).
"""
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import timm
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import accuracy

_logger = logging.getLogger(__name__)


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


@dataclass
class RunResult:
    model: str
    seed: int
    params: int
    test_acc: float
    final_train_loss: float
    train_images_per_s: float
    recipe: Dict[str, Any] = field(default_factory=dict)
    model_kwargs: Dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent, in eval mode."""
    model.eval()
    correct = 0.0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        correct += accuracy(logits, labels[start:start + batch_size], topk=(1,))[0].item() * len(logits) / 100
    return 100.0 * correct / len(images)


def train_and_evaluate(
        model_name: str,
        train: tuple,
        test: tuple,
        recipe: Optional[Recipe] = None,
        seed: int = 0,
        model_kwargs: Optional[Dict[str, Any]] = None,
        progress: Optional[Callable[[int, float], None]] = None,
        on_trained: Optional[Callable[[torch.nn.Module], None]] = None,
) -> RunResult:
    """Train ``model_name`` on ``train = (images, labels)`` with ``recipe``; score it on ``test``.

    The seed fixes the model's initialisation and the batch order, so two models trained with the
    same seed see the same batches. ``progress(step, loss)`` is called after every step;
    ``on_trained(model)`` once with the trained model (in eval mode), after scoring.
    """
    recipe = recipe or Recipe()
    images, labels = train
    model_kwargs = dict(model_kwargs or {})
    model_kwargs.setdefault('num_classes', int(labels.max()) + 1)
    model_kwargs.setdefault('in_chans', images.shape[1])
    torch.manual_seed(seed)
    model = timm.create_model(model_name, **model_kwargs)
    optimizer = create_optimizer_v2(model, 'sgd', lr=recipe.lr, weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum, nesterov=True)
    scheduler = CosineLRScheduler(optimizer, t_initial=recipe.steps, lr_min=0.0,
                                  warmup_t=int(recipe.warmup_fraction * recipe.steps), warmup_lr_init=recipe.lr / 100,
                                  t_in_epochs=False)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    model.train()
    loss = torch.tensor(float('nan'))
    timed_images, timed_seconds = 0, 0.0
    for step in range(recipe.steps):
        start = (step * recipe.batch_size) % len(images)
        if start + recipe.batch_size > len(images):
            order = torch.randperm(len(images), generator=generator)
            start = 0
        index = order[start:start + recipe.batch_size]
        tic = time.perf_counter()
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        if step >= min(3, recipe.steps - 1):  # the first steps warm up allocators and kernels
            timed_seconds += time.perf_counter() - tic
            timed_images += len(index)
        if progress is not None:
            progress(step, loss.item())
    test_acc = evaluate(model, *test, batch_size=recipe.eval_batch_size)
    if on_trained is not None:
        on_trained(model)
    return RunResult(
        model=model_name, seed=seed, params=sum(p.numel() for p in model.parameters()), test_acc=test_acc,
        final_train_loss=loss.item(), train_images_per_s=timed_images / max(timed_seconds, 1e-9),
        recipe=asdict(recipe), model_kwargs={k: v for k, v in model_kwargs.items()})

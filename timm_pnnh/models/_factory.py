"""What the model families share: knob checks, coder widths and inits, argument checks, the deployed form."""
import inspect
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, reparameterize_model

__all__ = ['Knobs', 'knob', 'CODER_INITS', 'DEPLOY_FORMS', 'MAX_CODER_RATIO', 'UnknownModelArgument', 'BUILDER_ARGS', 'check_model_kwargs',
           'check_ratio', 'check_choice', 'coder_width', 'signed_dirac_', 'deployable']

CODER_INITS = ('dirac', 'kaiming', 'orthogonal')
# what a PNNH block's reparameterize() folds it into (docs/speed.md "Deployment"): the learner's layers
# beside the coder's, summed (the training form's arithmetic), or the coder merged into the learner's
# layers as extra hidden channels (one conv or linear per layer, more arithmetic)
DEPLOY_FORMS = ('side_by_side', 'merged')
# C_c / C: up to 2, where the signed Dirac init E = [I; -I] makes the coder the exact identity
MAX_CODER_RATIO = 2.0

# arguments that create_model / build_model_with_cfg consume before the model class sees them
BUILDER_ARGS = frozenset(set(inspect.signature(build_model_with_cfg).parameters) - {'model_cls', 'variant', 'pretrained', 'kwargs'}
                         | {'features_only', 'out_indices', 'feature_cls', 'pruned'})


class UnknownModelArgument(TypeError, ValueError):
    """An argument the model does not take: a ValueError that names it, and the TypeError timm's API
    contract (its tests/test_models.py) expects for unknown constructor arguments."""


def knob(default: Any, check: Callable[[str, Any], Any], doc: str) -> Any:
    """One field of a ``Knobs`` table: its default, its check (called with the name and the value) and what it does."""
    return field(default=default, metadata=dict(check=check, doc=doc))


@dataclass(frozen=True)
class Knobs:
    """Base of a family's knob table (a frozen dataclass of ``knob`` fields, as timm's ``ByoBlockCfg``). An
    instance is valid: every field is checked once, when it is made (``dataclasses.replace`` included), in
    field order, so a call with several bad knobs names the first."""

    def __post_init__(self):
        for f in fields(self):
            f.metadata['check'](f.name, getattr(self, f.name))


def check_model_kwargs(variant: str, kwargs: Dict[str, Any], model_args: Iterable[str],
                       fixed: Optional[Mapping[str, str]] = None) -> Tuple[str, ...]:
    """Raise UnknownModelArgument for any of ``kwargs`` that neither the model nor timm's builder takes,
    and a ValueError for any in ``fixed`` (timm's arguments that ``variant`` sets itself: name -> why)."""
    fixed = fixed or {}
    allowed = tuple(sorted((set(model_args) | BUILDER_ARGS) - {'self', 'kwargs', 'args'} - set(fixed)))
    for name, value in kwargs.items():
        if name in fixed:
            raise ValueError(f'{variant}: {name}={value!r} is not allowed: {fixed[name]}')
        if name not in allowed:
            raise UnknownModelArgument(
                f'{variant}: unknown model argument {name}={value!r}; allowed: {", ".join(allowed)}')
    return allowed


def check_ratio(name: str, value, low: float, high: float) -> float:
    """``value`` as a float in ``(low, high]``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value <= high):
        raise ValueError(f'{name}={value!r} is not allowed: it must be a number in ({low}, {high}]')
    return float(value)


def check_choice(name: str, value, allowed: Tuple) -> None:
    """A ValueError naming ``name`` unless ``value`` is one of ``allowed`` and of their type (bools only
    match bools, ints only ints: ``1.0`` and ``True`` are not ``1``)."""
    kind = type(allowed[0])
    if value not in allowed or isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        what = 'True or False' if kind is bool else f'an int, one of {allowed}' if kind is int else f'one of {allowed}'
        raise ValueError(f'{name}={value!r} is not allowed: it must be {what}')


def coder_width(channels: int, ratio: float, name: str) -> int:
    """``channels * ratio`` as an exact whole number of channels, or a ValueError naming ``name``."""
    width = channels * ratio
    if abs(width - round(width)) > 1e-6 or round(width) < 1:
        raise ValueError(
            f'{name}={ratio!r} does not divide {channels} channels into a whole number '
            f'({channels} * {ratio} = {width:g}); choose a ratio r with {channels} * r a positive integer')
    return int(round(width))


@torch.no_grad()
def signed_dirac_(weight: torch.Tensor) -> torch.Tensor:
    """``coder_init='dirac'`` in every family: the signed identity ``E = [I ; -I]`` cut to C_c rows.

    Row r of ``weight`` (C_c x C, or C_c x C x k x k with the 1 at the kernel centre) is ``e_(r mod C)``
    for r < C and ``-e_(r mod C)`` for C <= r < 2C. With C_c <= C it is the identity's first C_c rows;
    with C_c = 2C, ``adj(E) act(E x) = act(x) - act(-x) = x`` for ReLU, GELU and SiLU.
    """
    coder_dim, dim = weight.shape[:2]
    rows = torch.arange(coder_dim, device=weight.device)
    centre = tuple(k // 2 for k in weight.shape[2:])
    weight.zero_()[(rows, rows % dim, *centre)] = torch.where(rows // dim % 2 == 0, 1.0, -1.0).to(weight.dtype)
    return weight


def deployable(model_cls: Callable, inference_mode: bool) -> Callable:
    """``model_cls``, or with ``inference_mode=True`` a builder of its deployed form: the model folded by
    timm's ``reparameterize_model`` (every ``reparameterize()``) before timm's builder loads weights into
    it (timm's byobnet / fastvit ``inference_mode``). So weights saved after timm's function (or
    ``validate.py --reparam``) load into ``create_model(name, inference_mode=True)`` exactly."""
    check_choice('inference_mode', inference_mode, (False, True))
    if not inference_mode:
        return model_cls

    def build(**kwargs):
        model = model_cls(**kwargs)
        reparameterize_model(model.eval(), inplace=True)
        return model.train()
    return build

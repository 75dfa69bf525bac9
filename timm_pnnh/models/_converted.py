"""Converted weight tags: timm's published residual weights, loaded into PNNH nets with the same outputs.

A PNNH block contains the residual block it replaces (README "The PNNH block"):

* ResNet. A stride-1 block's input is the output of a ReLU, so it is non-negative, and a Dirac coder
  (``coder_ratio=1``, no coder norm) gives ``adj(E) relu(E x) = x`` (and ``relu(relu(.))`` crossing a
  bottleneck is ``relu(.)``): ``relu(coder + learner)`` is ``relu(x + F(x))``, timm's ``BasicBlock`` /
  ``Bottleneck`` with the same ``conv*``/``bn*`` weights. The transition blocks are timm's residual
  blocks already. The coder Parameter holds ``E / sqrt(coder_lr_scale)`` (``_Coder``), so the Dirac
  kernel is stored divided by the coder's gain.
* ViT. The sequential PNNH block with the signed Dirac coder ``E = [I; -I]`` (``coder_ratio=2``) computes
  ``E^T act(E u) = act(u) - act(-u) = u`` for GELU (and ReLU, SiLU), so ``h = x + A(x)``, ``y = h + M(h)``:
  timm's ``Block`` with the same attention, MLP, norm and LayerScale weights.

So a timm residual state dict becomes a PNNH one by adding the coder weights; nothing else changes.
Each family says which coder weights its nets need (``pnnh_resnet_coders`` in ``pnnh_resnet.py``,
``pnnh_vit_coders`` in ``pnnh_vit.py``) and hands them to :func:`convert_state_dict` in its timm
``pretrained_filter_fn`` (inside timm's own ``load_pretrained``); a state dict that already has coders,
or the model's own keys (a folded net), passes through unchanged. This module imports no family.

Names and tags. A tag picks weights, never the network: each converted tag belongs to a name whose
registered network is the form that carries timm's net exactly. ``pnnh_resnet18`` / ``pnnh_resnet34``
are that form already (a C-wide coder); the bottleneck and ViT defaults are cheaper forms, so the exact
forms have names of their own, ``pnnh_resnet50_identity`` (``coder_ratio=1.0``) and
``pnnh_vit_small_patch16_224_identity`` (``arrangement='sequential', coder_ratio=2.0``), as timm names
``resnet50d`` rather than tagging it. The converted tag is the tag of timm's default weights for the
residual architecture (``pnnh_resnet34.a1_in1k`` <- ``timm/resnet34.a1_in1k``): the cfg's ``hf_hub_id``
is timm's repository, its data config is timm's, and its ``notes`` say it is converted.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

import torch
from timm.models import get_pretrained_cfg
from timm.models._pretrained import PretrainedCfg

from timm_pnnh.checkpoint import mismatches
from timm_pnnh.models._cfgs import PretrainedLoadError, WEIGHTS_FILE, _where

__all__ = ['Conversion', 'CONVERSIONS', 'ConversionError', 'converted_cfgs', 'add_coders', 'convert_state_dict']

# data-config fields copied from timm's cfg of the source weights (the converted net sees the same images)
_DATA_FIELDS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation', 'crop_pct',
                'test_crop_pct', 'crop_mode', 'mean', 'std', 'num_classes', 'label_offset', 'label_names',
                'label_descriptions', 'pool_size', 'test_pool_size', 'first_conv', 'classifier', 'license')


@dataclass(frozen=True)
class Conversion:
    """``model`` (a PNNH name, as registered) computes what timm's ``source`` ('arch.tag') computes."""
    model: str
    source: str

    @property
    def tag(self) -> str:
        return self.source.split('.', 1)[1]

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'


# timm 1.0's default tag of each residual architecture (timm.get_pretrained_cfg(arch).tag), pinned so that
# a tag name does not change with the installed timm
CONVERSIONS: Dict[str, Conversion] = {c.name: c for c in (
    Conversion('pnnh_resnet18', 'resnet18.a1_in1k'),
    Conversion('pnnh_resnet34', 'resnet34.a1_in1k'),
    Conversion('pnnh_resnet50_identity', 'resnet50.a1_in1k'),
    Conversion('pnnh_resnet101_identity', 'resnet101.a1h_in1k'),
    Conversion('pnnh_resnet152_identity', 'resnet152.a1h_in1k'),
    Conversion('pnnh_vit_tiny_patch16_224_identity', 'vit_tiny_patch16_224.augreg_in21k_ft_in1k'),
    Conversion('pnnh_vit_small_patch16_224_identity', 'vit_small_patch16_224.augreg_in21k_ft_in1k'),
    Conversion('pnnh_vit_base_patch16_224_identity', 'vit_base_patch16_224.augreg2_in21k_ft_in1k'),
)}


class ConversionError(ValueError):
    """A residual state dict or model that cannot become a PNNH one exactly."""


def converted_cfgs(prefix: str) -> Dict[str, Dict[str, Any]]:
    """``'model.tag': cfg`` for the conversions whose model name starts with ``prefix``, for a family's
    ``generate_default_cfgs`` input (put them first: they become the default tags)."""
    cfgs = {}
    for name, conversion in CONVERSIONS.items():
        if not conversion.model.startswith(prefix):
            continue
        source = get_pretrained_cfg(conversion.source)
        cfgs[name] = {
            **{k: getattr(source, k) for k in _DATA_FIELDS if getattr(source, k) is not None},
            'hf_hub_id': source.hf_hub_id, 'hf_hub_filename': WEIGHTS_FILE, 'origin_url': source.origin_url,
            'description': f'timm {conversion.source} (residual), converted exactly to {conversion.model} at load time',
            'notes': (f'converted from {source.hf_hub_id}: function-identical to the residual net, accuracy is '
                      f'the source\'s (not PNNH-trained)',),
        }
    return cfgs


def add_coders(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module, coders: Dict[str, torch.Tensor],
               ignore: tuple = ()) -> Dict[str, torch.Tensor]:
    """``state_dict`` plus ``coders``, after checking that its keys are exactly the residual net's:
    the model's keys less the coders (keys starting with ``ignore``, the classifier, are timm's to adapt)."""
    expected = {k: v for k, v in model.state_dict().items() if k not in coders}
    # keys only: shapes are load_state_dict's to check, after timm adapts what it adapts (pos_embed, classifier)
    problem = mismatches(expected, state_dict, ignore=ignore, shapes=False, first=6)
    if problem:
        raise ConversionError(f'not the residual net of this model: {problem}')
    ref = next(iter(state_dict.values()))
    return {**state_dict, **{k: v.to(ref.device) for k, v in coders.items()}}


def _is_pnnh(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.endswith(('.coder.weight', '.coder2.weight')) for k in state_dict)


def _load_error(model: torch.nn.Module, error: Exception) -> PretrainedLoadError:
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    architecture, tag = cfg.get('architecture') or type(model).__name__, cfg.get('tag')
    name = f'{architecture}.{tag}' if tag else architecture
    fields = {k: v for k, v in cfg.items() if k in PretrainedCfg.__dataclass_fields__}
    where = _where(PretrainedCfg(**fields))
    return PretrainedLoadError(f'{name}: the pretrained weights from {where} do not convert to a PNNH net: {error}')


def _same_keys(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, ignore: tuple) -> bool:
    """The state dict has the model's keys (those starting with ``ignore`` aside): nothing to add."""
    return not mismatches(model.state_dict(), state_dict, ignore=ignore, shapes=False)


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module,
                       coders_fn: Callable[[torch.nn.Module], Dict[str, torch.Tensor]], classifier: str
                       ) -> Dict[str, torch.Tensor]:
    """The body of a family's timm ``pretrained_filter_fn``: a residual state dict plus the coder weights
    ``coders_fn(model)`` gives (exact), or, unchanged, a state dict that is a PNNH net's already (it has
    coders, or it has the model's keys: e.g. a folded net's for ``inference_mode=True``). ``classifier``:
    the head's module name, whose keys timm adapts afterwards. A state dict that does not convert raises
    PretrainedLoadError naming the model, its tag and the source."""
    ignore = (classifier + '.',)
    if _is_pnnh(state_dict) or _same_keys(state_dict, model, ignore):
        return state_dict
    try:
        return add_coders(state_dict, model, coders_fn(model), ignore=ignore)
    except ConversionError as e:
        raise _load_error(model, e) from e

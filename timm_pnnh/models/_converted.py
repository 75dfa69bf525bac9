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
:func:`residual_to_pnnh_resnet` and :func:`residual_to_pnnh_vit` do that as timm ``pretrained_filter_fn``
(inside timm's own ``load_pretrained``); a state dict that already has coders passes through unchanged.

Tags. Each ImageNet-style PNNH name gets, as its default tag, the tag of timm's default weights for the
residual architecture (``pnnh_resnet34.a1_in1k`` <- ``timm/resnet34.a1_in1k``): the cfg's ``hf_hub_id`` is
timm's repository, its data config is timm's, and its ``notes`` say it is converted. timm's cfgs cannot
carry model arguments, so the knobs the conversion needs live in :data:`CONVERSIONS` and the entrypoints
apply them (:func:`converted_model_args`) when the tag's weights are loaded (``pretrained=True``) or the
tag is named (``pnnh_vit_small_patch16_224.augreg_in21k_ft_in1k``); ``create_model('pnnh_resnet50')``
without either keeps the registered defaults. A knob given with a different value is a ValueError.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

import torch
from timm.models import get_pretrained_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._pretrained import PretrainedCfg

from timm_pnnh.models._cfgs import PretrainedLoadError, WEIGHTS_FILE, _where

__all__ = ['Conversion', 'CONVERSIONS', 'ConversionError', 'converted_cfgs', 'converted_model_args',
           'conversion_of', 'residual_to_pnnh_resnet', 'residual_to_pnnh_vit', 'pnnh_resnet_coders',
           'pnnh_vit_coders']

# data-config fields copied from timm's cfg of the source weights (the converted net sees the same images)
_DATA_FIELDS = ('input_size', 'test_input_size', 'min_input_size', 'fixed_input_size', 'interpolation', 'crop_pct',
                'test_crop_pct', 'crop_mode', 'mean', 'std', 'num_classes', 'label_offset', 'label_names',
                'label_descriptions', 'pool_size', 'test_pool_size', 'first_conv', 'classifier', 'license')
_VIT_ARGS = dict(arrangement='sequential', coder_ratio=2.0, coder_init='dirac', coder_act='mlp', coder_norm=False)
_RESNET_ARGS = dict(coder_ratio=1.0, coder_norm=False)  # the registered bottleneck default is coder_ratio=0.25


@dataclass(frozen=True)
class Conversion:
    """``model`` (a PNNH name) built with ``model_args`` computes what timm's ``source`` ('arch.tag') computes."""
    model: str
    source: str
    model_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.source.split('.', 1)[1]

    @property
    def name(self) -> str:
        return f'{self.model}.{self.tag}'


# timm 1.0's default tag of each residual architecture (timm.get_pretrained_cfg(arch).tag), pinned so that
# a tag name does not change with the installed timm
CONVERSIONS: Dict[str, Conversion] = {c.name: c for c in (
    Conversion('pnnh_resnet18', 'resnet18.a1_in1k', _RESNET_ARGS),
    Conversion('pnnh_resnet34', 'resnet34.a1_in1k', _RESNET_ARGS),
    Conversion('pnnh_resnet50', 'resnet50.a1_in1k', _RESNET_ARGS),
    Conversion('pnnh_resnet101', 'resnet101.a1h_in1k', _RESNET_ARGS),
    Conversion('pnnh_resnet152', 'resnet152.a1h_in1k', _RESNET_ARGS),
    Conversion('pnnh_vit_tiny_patch16_224', 'vit_tiny_patch16_224.augreg_in21k_ft_in1k', _VIT_ARGS),
    Conversion('pnnh_vit_small_patch16_224', 'vit_small_patch16_224.augreg_in21k_ft_in1k', _VIT_ARGS),
    Conversion('pnnh_vit_base_patch16_224', 'vit_base_patch16_224.augreg2_in21k_ft_in1k', _VIT_ARGS),
)}


class ConversionError(ValueError):
    """A residual state dict or model that cannot become a PNNH one exactly."""


def _args_text(args: Mapping[str, Any]) -> str:
    return ', '.join(f'{k}={v!r}' for k, v in args.items())


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
                      f'the source\'s (not PNNH-trained)',
                      f'implies model args {_args_text(conversion.model_args)}'),
        }
    return cfgs


def conversion_of(variant: str, pretrained_cfg: Any = None, overlay: Optional[Dict[str, Any]] = None
                  ) -> Optional[Conversion]:
    """The conversion of the tag ``variant`` resolves to (None for other tags)."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, overlay)
    return CONVERSIONS.get(f'{variant}.{cfg.tag}') if cfg is not None and cfg.tag else None


def converted_model_args(variant: str, pretrained: bool, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The model arguments a converted tag implies, when its weights are loaded or the tag is named.

    ``kwargs`` are the entrypoint's (``pretrained_cfg`` is the tag of a ``model.tag`` name). Raises
    ValueError for a knob in ``kwargs`` that contradicts the tag.
    """
    if not pretrained and kwargs.get('pretrained_cfg') is None:
        return {}
    conversion = conversion_of(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    if conversion is None:
        return {}
    for name, value in conversion.model_args.items():
        if name in kwargs and kwargs[name] != value:
            raise ValueError(
                f'{name}={kwargs[name]!r} is not allowed with {conversion.name}: its weights are timm\'s '
                f'{conversion.source} converted exactly, which needs {_args_text(conversion.model_args)}')
    return dict(conversion.model_args)


def _is_identity_act(act: torch.nn.Module) -> bool:
    """``act(u) - act(-u) == u``: the signed Dirac coder then passes tokens through exactly."""
    u = torch.linspace(-8, 8, 257, dtype=torch.float64)
    return torch.allclose(act(u) - act(-u), u, rtol=0, atol=1e-12)


def pnnh_resnet_coders(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``{'layerX.Y.coder.weight': Dirac / gain}`` for every PNNH block of a ResNet-family ``model``.

    Raises ConversionError when the model cannot carry a residual net exactly: a coder narrower than its
    block, a coder norm, a non-ReLU activation, or plain transition blocks.
    """
    from timm_pnnh import PlainBasicBlock, PlainBottleneck, PnnhBasicBlock, PnnhBottleneck
    coders, problems = {}, []
    for name, block in model.named_modules():
        if isinstance(block, (PlainBasicBlock, PlainBottleneck)):
            problems.append(f'{name} is a plain transition block (plain_transitions=True), a residual block has a '
                            'shortcut there')
        if not isinstance(block, (PnnhBasicBlock, PnnhBottleneck)) or block.inference_mode:
            continue
        weight = block.coder.weight
        if weight.shape[0] != weight.shape[1]:
            problems.append(f'{name}.coder has {weight.shape[0]} of {weight.shape[1]} channels (coder_ratio=1.0 needed)')
        if not isinstance(block.coder.norm, torch.nn.Identity):
            problems.append(f'{name}.coder has a norm (coder_norm=False needed)')
        acts = [block.act1, block.act2] + ([block.act3] if hasattr(block, 'act3') else [])
        if not all(type(a) is torch.nn.ReLU for a in acts):
            problems.append(f'{name} uses {type(block.act1).__name__}, not ReLU: its input may be negative')
        dirac = torch.zeros_like(weight, device='cpu', dtype=torch.float32)
        torch.nn.init.dirac_(dirac)
        coders[f'{name}.coder.weight'] = dirac / block.coder.gain
    if problems:
        raise ConversionError('; '.join(problems[:4]) + (f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''))
    return coders


def pnnh_vit_coders(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``{'blocks.i.coder.weight': [I; -I], 'blocks.i.coder2.weight': [I; -I]}`` for a PNNH ViT ``model``.

    Raises ConversionError unless every block is sequential, with a 2C-wide coder, no coder norm and a
    coder activation with ``act(u) - act(-u) = u``.
    """
    from timm_pnnh.models.pnnh_vit import PnnhBlock
    coders, problems = {}, []
    for name, block in model.named_modules():
        if not isinstance(block, PnnhBlock):
            continue
        if block.inference_mode:  # folded: its weights are the deployed form, nothing to convert
            continue
        if block.coder2 is None:
            problems.append(f'{name} is not sequential (arrangement=\'sequential\' needed)')
            continue
        for coder_name in ('coder', 'coder2'):
            coder = getattr(block, coder_name)
            coder_dim, dim = coder.weight.shape
            if coder_dim != 2 * dim:
                problems.append(f'{name}.{coder_name} has {coder_dim} rows for {dim} channels (coder_ratio=2.0 needed)')
                continue
            if not _is_identity_act(coder.act):
                problems.append(f'{name}.{coder_name} uses {type(coder.act).__name__}: act(u) - act(-u) != u')
            eye = torch.eye(dim)
            coders[f'{name}.{coder_name}.weight'] = torch.cat([eye, -eye], 0)
        if block.coder_norm:
            problems.append(f'{name} reads normed tokens (coder_norm=False needed)')
    if problems:
        raise ConversionError('; '.join(problems[:4]) + (f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''))
    return coders


def add_coders(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module, coders: Dict[str, torch.Tensor],
               ignore: tuple = ()) -> Dict[str, torch.Tensor]:
    """``state_dict`` plus ``coders``, after checking that its keys are exactly the residual net's:
    the model's keys less the coders (keys starting with ``ignore``, the classifier, are timm's to adapt)."""
    expected = set(model.state_dict()) - set(coders)
    given = set(state_dict)
    missing = sorted(k for k in expected - given if not k.startswith(ignore))
    unexpected = sorted(k for k in given - expected if not k.startswith(ignore))
    if missing or unexpected:
        raise ConversionError(f'not the residual net of this model: {len(missing)} missing keys {missing[:6]}, '
                              f'{len(unexpected)} unexpected keys {unexpected[:6]}')
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


def _filter(state_dict, model, coders_fn, classifier: str):
    if _is_pnnh(state_dict):
        return state_dict
    try:
        return add_coders(state_dict, model, coders_fn(model), ignore=(classifier + '.',))
    except ConversionError as e:
        raise _load_error(model, e) from e


def residual_to_pnnh_resnet(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: a timm ``resnet*`` state dict -> the PNNH ``model``'s (exact)."""
    return _filter(state_dict, model, pnnh_resnet_coders, 'fc')


def residual_to_pnnh_vit(state_dict: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: a timm ``vit_*`` state dict (after timm's ViT ``checkpoint_filter_fn``)
    -> the PNNH ``model``'s (exact)."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    return _filter(checkpoint_filter_fn(state_dict, model), model, pnnh_vit_coders, 'head')

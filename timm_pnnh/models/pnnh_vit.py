"""PNNH Vision Transformers, their plain baselines and small-image residual baselines, on timm's
``VisionTransformer`` (through its ``block_fn`` argument).

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning", arXiv:2402.08645.
The paper reports PNNH Transformers on CIFAR and ImageNet; the block itself is not in the text we
hold. ``PnnhBlock`` is this project's reading (its docstring gives the equations and where we chose).

Families (the residual baselines are timm's own ``vit_*_patch16_224``):

* ``pnnh_vit_{tiny,small,base}_patch16_224``: PNNH blocks, no residual add anywhere.
* ``plain_vit_{tiny,small,base}_patch16_224``: timm's ``Block`` with its two residual adds removed.
* 32x32 inputs, patch 4 (64 tokens + class token): ``pnnh_vit_{tiny,small}_patch4_32``,
  ``plain_vit_{tiny,small}_patch4_32`` and the residual ``cifar_vit_{tiny,small}_patch4_32``
  (timm's ``Block``; the ``cifar_`` prefix keeps clear of timm's names).

Each entrypoint at the bottom of this file names its block and size (``model_args``). The knob
defaults are :data:`PNNH_VIT_KNOBS`, read by ``PnnhBlock``'s signature and by the entrypoints.

Deployed form: timm's ``reparameterize_model`` (``validate.py --reparam``) calls every ``PnnhBlock``'s
``reparameterize()``; ``inference_mode=True`` builds exactly that form, to load its weights.
"""
import inspect
from dataclasses import asdict, dataclass, replace
from collections import OrderedDict
from typing import Any, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import LayerScale, Mlp, get_act_layer
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer, checkpoint_filter_fn

from timm_pnnh.models._cfgs import CIFAR10_MEAN, CIFAR10_STD, build_model_with_hub, hub_cfgs
from timm_pnnh.models._converted import ConversionError, convert_state_dict, converted_cfgs
from timm_pnnh.models._factory import (
    CODER_INITS, DEPLOY_FORMS, MAX_CODER_RATIO, Knobs, check_choice, check_model_kwargs, check_ratio, coder_width, deployable,
    knob)
from timm_pnnh.models.coders import LinearCoder

__all__ = ['LinearCoder', 'PnnhBlock', 'PlainBlock', 'SplitAct', 'PNNH_VIT_KNOBS', 'CODER_ACTS', 'ARRANGEMENTS', 'SIZES',
           'check_pnnh_vit_args', 'pnnh_vit_coders', 'residual_to_pnnh_vit']

CODER_ACTS = ('mlp', 'gelu', 'relu')
ARRANGEMENTS = ('parallel', 'sequential')



@dataclass(frozen=True)
class PnnhVitKnobs(Knobs):
    """The knobs the paper leaves open (docs/block.md "Knobs"), one field each (default, check, meaning),
    checked once when made. Defaults: a C-wide Dirac coder through the MLP's GELU, read from the raw tokens,
    in a parallel block with zero-initialised learner outputs; the C-wide coder over the exact-identity
    signed Dirac one (coder_ratio=2) is a cost choice (docs/block.md). ``create_model`` makes one per model
    and every block reads it. Adding a knob is one field here plus its use in ``PnnhBlock``."""
    coder_ratio: float = knob(1.0, lambda n, v: check_ratio(n, v, 0.0, MAX_CODER_RATIO), 'coder width / C')
    coder_init: str = knob('dirac', lambda n, v: check_choice(n, v, CODER_INITS), "the coder's initialisation")
    coder_act: str = knob('mlp', lambda n, v: check_choice(n, v, CODER_ACTS), "the coder's act ('mlp': the MLP's)")
    arrangement: str = knob('parallel', lambda n, v: check_choice(n, v, ARRANGEMENTS),
                            "'parallel': one coder beside attention and MLP; 'sequential': one beside each")
    coder_norm: bool = knob(False, lambda n, v: check_choice(n, v, (False, True)), 'the coder reads the normed tokens')
    zero_init_last: bool = knob(True, lambda n, v: check_choice(n, v, (False, True)),
                                "zero the learner's last projections (the block starts as its coder)")
    deploy_form: str = knob('side_by_side', lambda n, v: check_choice(n, v, DEPLOY_FORMS),
                            "what ``reparameterize()`` folds a block into")


# the knob defaults, by name
PNNH_VIT_KNOBS: Dict[str, Any] = asdict(PnnhVitKnobs())

# the registered sizes (as timm's vit_tiny/small/base; each entrypoint below writes its architecture)
SIZES = ('tiny', 'small', 'base')
SMALL_IMAGE_SIZES = ('tiny', 'small')



def check_pnnh_vit_args(**knobs: Any) -> None:
    """Validate the PNNH ViT knobs given (names from ``PNNH_VIT_KNOBS``); raise ValueError naming the bad
    one, its value and what is allowed."""
    unknown = sorted(set(knobs) - set(PNNH_VIT_KNOBS))
    if unknown:
        raise TypeError(f'check_pnnh_vit_args: unknown knob {", ".join(unknown)}; '
                        f'the knobs are {", ".join(PNNH_VIT_KNOBS)}')
    PnnhVitKnobs(**knobs)


class SplitAct(nn.Module):
    """Two pointwise activations side by side on the last dim: ``act1`` on the first ``split`` channels,
    ``act2`` on the rest. The hidden activation of a folded PNNH block whose coder and MLP acts differ."""

    def __init__(self, act1: nn.Module, act2: nn.Module, split: int):
        super().__init__()
        self.act1, self.act2, self.split = act1, act2, split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.act1(x[..., :self.split]), self.act2(x[..., self.split:])], -1)

    def extra_repr(self) -> str:
        return f'split={self.split}'


def _same_act(a: nn.Module, b: nn.Module) -> bool:
    """The same activation function: same class and same settings (``repr``)."""
    return type(a) is type(b) and repr(a) == repr(b)


def _layer_scale(ls: nn.Module, where: str) -> Optional[torch.Tensor]:
    """LayerScale's ``gamma`` (None for ``nn.Identity``); any other module cannot fold."""
    if isinstance(ls, nn.Identity):
        return None
    if isinstance(ls, LayerScale):
        return ls.gamma
    raise ValueError(f'{where}={type(ls).__name__} cannot fold: only LayerScale or nn.Identity is allowed')


@torch.no_grad()
def _fold_layer_scale_(ls: nn.Module, layer: nn.Linear, where: str) -> None:
    """Scale ``layer``'s outputs by the LayerScale ``ls`` that follows it, in place (nothing for ``nn.Identity``)."""
    gamma = _layer_scale(ls, where)
    if gamma is not None:
        layer.weight.mul_(gamma[:, None])
        if layer.bias is not None:
            layer.bias.mul_(gamma)


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                      dtype=weight.dtype)
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer


class PnnhBlock(Block):
    """PNNH Transformer block: a linear coder carries each token in place of the residual stream.

    timm's pre-norm ``Block`` computes ``x + attn(N1 x)`` then ``h + mlp(N2 h)``. Here no term is
    the input itself. With ``coder(u) = E^T act(E u)`` (``LinearCoder``, E of shape C_c x C) and
    ``A = drop_path(ls1(attn(N1 .)))``, ``M = drop_path(ls2(mlp(N2 .)))`` the learner::

        parallel (default):  y = coder(u) + A(x) + M(x),        u = N2 x if coder_norm else x
        sequential:          h = coder1(u1) + A(x),             u1 = N1 x if coder_norm else x
                             y = coder2(u2) + M(h),             u2 = N2 h if coder_norm else h

    ``act`` is the MLP's activation (``coder_act='mlp'``, GELU in timm's ViT) or ReLU / GELU. The
    learner outputs start at zero (``zero_init_last``: ``attn.proj`` and ``mlp.fc2`` weights and biases
    zeroed, as ResNet's zero-init-last BN), so at initialisation the block is its coder alone, which
    for the signed-Dirac E with C_c = 2C is exactly the identity map -- through a learnable
    weight and a non-linearity, not a skip. The default is the C-wide Dirac coder, ``E = I``, whose
    output at initialisation is ``GELU(x)``: it keeps the positive half of each token and damps the
    negative half, at half the coder parameters of the exact signed-Dirac identity (why it is the
    default: docs/block.md, "Choices and what they rest on"). With ``coder_norm=True`` and ``coder_act='mlp'`` the
    parallel coder reads the MLP's input, and the block folds into a plain parallel block whose MLP
    is ``[E ; W1]`` -> act -> ``[E^T | W2]`` (C_c + H hidden units): the paper's weight-sharing coder
    and learner as one plain layer pair with part of its weights shared (``reparameterize()`` builds it;
    with coder_norm=False fc1 reads ``concat(x, N2 x)`` through ``[[E, 0], [0, W1]]``). ``drop_path`` drops the learner
    only; the coder is the path that stays, as the identity does in a residual block.

    Parameters (H = mlp_ratio * C, C_c = coder_ratio * C, k = 1 parallel / 2 sequential,
    b_qkv / b_proj = 1 with qkv_bias / proj_bias else 0, s = 1 with layer scale else 0)::

        4 C  +  3 C^2 + 3 C b_qkv  +  C^2 + C b_proj  +  2 C H + (H + C) b_proj  +  2 C s  +  k C_c C

    i.e. timm's ``Block`` plus ``k * C_c * C`` (the decoder shares the encoder's Parameter).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            knobs: Optional[PnnhVitKnobs] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            device=None,
            dtype=None,
            **kwargs,
    ) -> None:
        knob_args = {name: kwargs.pop(name) for name in PNNH_VIT_KNOBS if name in kwargs}
        if knobs is None or knob_args:  # a block built on its own: its knobs from its keyword arguments
            knobs = replace(knobs or PnnhVitKnobs(), **knob_args)
        super().__init__(dim, num_heads, act_layer=act_layer, device=device, dtype=dtype, **kwargs)
        coder_act_layer = act_layer if knobs.coder_act == 'mlp' else get_act_layer(knobs.coder_act)
        coder_dim = coder_width(dim, knobs.coder_ratio, 'coder_ratio')
        coder_init = knobs.coder_init
        dd = {'device': device, 'dtype': dtype}
        self.coder_norm = knobs.coder_norm
        self.sequential = knobs.arrangement == 'sequential'
        self.coder = LinearCoder(dim, coder_dim, coder_init, coder_act_layer, **dd)
        self.coder2 = LinearCoder(dim, coder_dim, coder_init, coder_act_layer, **dd) if self.sequential else None
        self.zero_learner = knobs.zero_init_last
        self.deploy_form = knobs.deploy_form
        self.inference_mode = False
        self.init_weights()

    def zero_init_last(self) -> None:
        """Zero the learner's last projections so that the block starts as its coder alone."""
        for layer in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def init_weights(self) -> None:
        """Coder init, then ``zero_init_last()`` when built with ``zero_init_last=True``.

        timm's ViT init calls this after initialising the block's Linear layers.
        """
        self.coder.reset_parameters()
        if self.coder2 is not None:
            self.coder2.reset_parameters()
        if self.zero_learner:
            self.zero_init_last()

    def reset_parameters(self) -> None:
        self.init_weights()

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the block, in place, into its plain deployment form (eval form). Idempotent.

        ``deploy_form='side_by_side'`` (the default): the coder(s), attention and MLP stay as they are
        (the summed training form's arithmetic); the LayerScale gammas fold into ``attn.proj`` and
        ``mlp.fc2``, and DropPath, an identity in eval, is dropped. ``deploy_form='merged'``:

        The coder that meets the MLP (parallel: ``coder``; sequential: ``coder2``) and the MLP become one
        ``mlp = Sequential(fc1, act, fc2)``, with no residual add::

            fc1 = [[E, 0], [0, W1]], bias [0 ; b1]   on concat(x, N2 x)   (coder_norm=False)
            fc1 = [E ; W1],          bias [0 ; b1]   on N2 x              (coder_norm=True)
            fc2 = [E^T | g2 W2],     bias g2 b2                           (g2: ls2's gamma, 1 without)

        ``act`` is the MLP's activation when the coder's is the same function (``coder_act='mlp'``, the
        default); otherwise (e.g. ``coder_act='relu'`` with GELU in the MLP) ``SplitAct`` keeps both, the
        coder's on the first C_c hidden units and the MLP's on the rest: still one pointwise
        non-linearity between two linears. ``ls1``'s gamma is folded into ``attn.proj``. The LayerNorms
        stay (per-token statistics cannot fold into a linear). DropPath and the MLP's dropouts, identities in eval,
        are dropped. In the sequential arrangement the first half, ``coder(u1) + attn(N1 x)``, is plain
        already and keeps its coder. timm's ``reparameterize_model`` calls this.

        Cost: with ``coder_norm=False`` fc1 reads 2C inputs through a block-diagonal weight, twice the
        multiply-adds of the summed form's ``E`` and ``W1``; with ``coder_norm=True`` it is the same.
        Raises ValueError for an MLP other than timm's ``Mlp`` without a hidden norm, or a layer scale
        other than ``LayerScale``.
        """
        if self.inference_mode:
            return
        if self.deploy_form == 'side_by_side':
            _layer_scale(self.ls2, 'ls2')  # raises before anything changes
            _fold_layer_scale_(self.ls1, self.attn.proj, 'ls1')
            _fold_layer_scale_(self.ls2, self.mlp.fc2, 'ls2')
            self.ls1 = self.ls2 = self.drop_path1 = self.drop_path2 = nn.Identity()
            self.inference_mode = True
            return
        mlp = self.mlp
        if type(mlp) is not Mlp or not all(isinstance(m, nn.Linear) for m in (mlp.fc1, mlp.fc2)) \
                or not isinstance(mlp.norm, nn.Identity):
            raise ValueError(f'mlp={type(mlp).__name__} cannot fold with the coder: only timm\'s Mlp with Linear '
                             'layers and no hidden norm (scale_mlp_norm=False) is allowed')
        _layer_scale(self.ls1, 'ls1')  # raises before anything changes
        gamma2 = _layer_scale(self.ls2, 'ls2')
        coder = self.coder2 if self.sequential else self.coder
        enc = coder.weight
        coder_dim, dim = enc.shape
        w1, b1 = mlp.fc1.weight, mlp.fc1.bias
        if self.coder_norm:
            fc1_w = torch.cat([enc, w1], 0)
        else:
            fc1_w = enc.new_zeros(coder_dim + w1.shape[0], 2 * dim)
            fc1_w[:coder_dim, :dim] = enc
            fc1_w[coder_dim:, dim:] = w1
        fc1_b = None if b1 is None else torch.cat([b1.new_zeros(coder_dim), b1])
        w2, b2 = mlp.fc2.weight, mlp.fc2.bias
        if gamma2 is not None:
            w2, b2 = w2 * gamma2[:, None], None if b2 is None else b2 * gamma2
        act = mlp.act if _same_act(coder.act, mlp.act) else SplitAct(coder.act, mlp.act, coder_dim)
        fused = nn.Sequential(OrderedDict(
            fc1=_linear(fc1_w, fc1_b), act=act, fc2=_linear(torch.cat([enc.t(), w2], 1), b2)))
        _fold_layer_scale_(self.ls1, self.attn.proj, 'ls1')
        self.mlp = fused
        self.ls1 = self.ls2 = self.drop_path1 = self.drop_path2 = nn.Identity()
        if self.sequential:
            del self.coder2
        else:
            del self.coder
        self.inference_mode = True

    def _forward_deployed(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool) -> torch.Tensor:
        if self.sequential:
            x1 = self.norm1(x)
            x = self.coder(x1 if self.coder_norm else x) + self.attn(x1, attn_mask=attn_mask, is_causal=is_causal)
            return self.mlp(self._fc1_input(x))
        return self.mlp(self._fc1_input(x)) + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)

    def _fc1_input(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.norm2(x)
        return x2 if self.coder_norm else torch.cat([x, x2], -1)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        if self.inference_mode and self.deploy_form == 'merged':
            return self._forward_deployed(x, attn_mask, is_causal)
        if self.coder2 is not None:
            x1 = self.norm1(x)
            h = self.coder(x1 if self.coder_norm else x)
            h = h + self.drop_path1(self.ls1(self.attn(x1, attn_mask=attn_mask, is_causal=is_causal)))
            h2 = self.norm2(h)
            y = self.coder2(h2 if self.coder_norm else h)
            return y + self.drop_path2(self.ls2(self.mlp(h2)))
        x2 = self.norm2(x)
        y = self.coder(x2 if self.coder_norm else x)
        y = y + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return y + self.drop_path2(self.ls2(self.mlp(x2)))


class PlainBlock(Block):
    """timm's ``Block`` with its two residual adds removed and nothing else (the plain baseline)::

        h = drop_path1(ls1(attn(norm1(x))));  y = drop_path2(ls2(mlp(norm2(h))))
    """

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        x = self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


class _PnnhBlockFn:
    """A ``block_fn`` for ``VisionTransformer`` that builds ``PnnhBlock`` with fixed PNNH knobs."""

    def __init__(self, knobs: PnnhVitKnobs):
        self.knobs = knobs

    def __call__(self, *args, **kwargs) -> PnnhBlock:
        return PnnhBlock(*args, **kwargs, knobs=self.knobs)


def _is_identity_act(act: nn.Module) -> bool:
    """``act(u) - act(-u) == u``: the signed Dirac coder then passes tokens through exactly."""
    u = torch.linspace(-8, 8, 257, dtype=torch.float64)
    return torch.allclose(act(u) - act(-u), u, rtol=0, atol=1e-12)


def pnnh_vit_coders(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{'blocks.i.coder.weight': [I; -I], 'blocks.i.coder2.weight': [I; -I]}`` for a PNNH ViT ``model``:
    the coder weights that make it compute timm's residual ViT with the same other weights (``_converted``).

    Raises ConversionError unless every block is sequential, with a 2C-wide coder, no coder norm and a
    coder activation with ``act(u) - act(-u) = u``.
    """
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


def residual_to_pnnh_vit(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: a timm ``vit_*`` state dict (after timm's ViT ``checkpoint_filter_fn``)
    -> the PNNH ``model``'s (exact)."""
    return convert_state_dict(checkpoint_filter_fn(state_dict, model), model, pnnh_vit_coders, 'head')


def _create_vit(variant: str, pretrained: bool, model_args: Dict[str, Any], **kwargs) -> VisionTransformer:
    """Build ``variant``: timm's ``VisionTransformer`` with its entrypoint's ``model_args`` (``block_fn``, the
    size; ``kwargs`` may change the size) and the caller's ``kwargs`` (with ``PnnhBlock`` also its knobs).
    Bad arguments raise ValueError (an unknown one also TypeError)."""
    block_fn = model_args['block_fn']
    pnnh = block_fn is PnnhBlock
    kwargs = dict({k: v for k, v in model_args.items() if k != 'block_fn'}, **kwargs)
    allowed = set(inspect.signature(VisionTransformer.__init__).parameters) | {'inference_mode'}
    fixed = dict(block_fn=f'the name sets its block ({block_fn.__name__})')
    check_model_kwargs(variant, kwargs, allowed | set(PNNH_VIT_KNOBS) if pnnh else allowed, fixed)
    if pnnh:
        knobs = PnnhVitKnobs(**{name: kwargs.pop(name) for name in PNNH_VIT_KNOBS if name in kwargs})  # checked here
        coder_width(kwargs.get('embed_dim', 768), knobs.coder_ratio, 'coder_ratio')
        block_fn = _PnnhBlockFn(knobs)
    out_indices = kwargs.pop('out_indices', 3)
    model_cls = deployable(VisionTransformer, kwargs.pop('inference_mode', False))
    return build_model_with_hub(
        model_cls, variant, pretrained, block_fn=block_fn,
        pretrained_filter_fn=residual_to_pnnh_vit if pnnh else checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    # as timm's ViT cfg, so that the PNNH, plain and timm residual models share one data pipeline
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 0.9,
        'interpolation': 'bicubic', 'fixed_input_size': True, 'mean': IMAGENET_INCEPTION_MEAN,
        'std': IMAGENET_INCEPTION_STD, 'first_conv': 'patch_embed.proj', 'classifier': 'head',
        **kwargs}  # license, paper: hub_cfgs


def _small_image_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(3, 32, 32), crop_pct=1.0, mean=CIFAR10_MEAN, std=CIFAR10_STD, **kwargs)


# the *_identity names: each block computes timm's Block when its coders are the signed Dirac E = [I; -I]
# (act(u) - act(-u) = u), so timm's residual weights load exactly (_converted.py)
_IDENTITY_ARGS = dict(arrangement='sequential', coder_ratio=2.0)

default_cfgs = generate_default_cfgs(hub_cfgs({
    **converted_cfgs('pnnh_vit'),  # the *_identity names' tags: timm's weights, converted at load time
    **{f'{f}_vit_{size}_patch16_224.in1k': _cfg() for f in ('pnnh', 'plain') for size in SIZES},
    **{f'{p}_vit_{size}_patch4_32.cifar10': _small_image_cfg() for p in ('pnnh', 'plain', 'cifar')
       for size in SMALL_IMAGE_SIZES},
}))


@register_model
def pnnh_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 16, PNNH (linear coder + attention/MLP learner, no residual add)."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('pnnh_vit_tiny_patch16_224', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 16, PNNH (linear coder + attention/MLP learner, no residual add)."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('pnnh_vit_small_patch16_224', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Base, patch 16, PNNH (linear coder + attention/MLP learner, no residual add)."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vit('pnnh_vit_base_patch16_224', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_tiny_patch16_224_identity(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 16, PNNH in the form timm's vit_tiny_patch16_224 weights load into exactly (sequential,
    signed Dirac coders of width 2C)."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=192, depth=12, num_heads=3, **_IDENTITY_ARGS)
    return _create_vit('pnnh_vit_tiny_patch16_224_identity', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_small_patch16_224_identity(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 16, PNNH in the form timm's vit_small_patch16_224 weights load into exactly."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=384, depth=12, num_heads=6, **_IDENTITY_ARGS)
    return _create_vit('pnnh_vit_small_patch16_224_identity', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_base_patch16_224_identity(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Base, patch 16, PNNH in the form timm's vit_base_patch16_224 weights load into exactly."""
    model_args = dict(block_fn=PnnhBlock, patch_size=16, embed_dim=768, depth=12, num_heads=12, **_IDENTITY_ARGS)
    return _create_vit('pnnh_vit_base_patch16_224_identity', pretrained, model_args, **kwargs)


@register_model
def plain_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 16, plain (residual adds removed)."""
    model_args = dict(block_fn=PlainBlock, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('plain_vit_tiny_patch16_224', pretrained, model_args, **kwargs)


@register_model
def plain_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 16, plain (residual adds removed)."""
    model_args = dict(block_fn=PlainBlock, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('plain_vit_small_patch16_224', pretrained, model_args, **kwargs)


@register_model
def plain_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Base, patch 16, plain (residual adds removed)."""
    model_args = dict(block_fn=PlainBlock, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vit('plain_vit_base_patch16_224', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 4, 32x32 input, PNNH (linear coder + attention/MLP learner, no residual add)."""
    model_args = dict(block_fn=PnnhBlock, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('pnnh_vit_tiny_patch4_32', pretrained, model_args, **kwargs)


@register_model
def pnnh_vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 4, 32x32 input, PNNH (linear coder + attention/MLP learner, no residual add)."""
    model_args = dict(block_fn=PnnhBlock, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('pnnh_vit_small_patch4_32', pretrained, model_args, **kwargs)


@register_model
def plain_vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 4, 32x32 input, plain (residual adds removed)."""
    model_args = dict(block_fn=PlainBlock, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('plain_vit_tiny_patch4_32', pretrained, model_args, **kwargs)


@register_model
def plain_vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 4, 32x32 input, plain (residual adds removed)."""
    model_args = dict(block_fn=PlainBlock, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('plain_vit_small_patch4_32', pretrained, model_args, **kwargs)


@register_model
def cifar_vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 4, 32x32 input, residual baseline (timm Block)."""
    model_args = dict(block_fn=Block, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('cifar_vit_tiny_patch4_32', pretrained, model_args, **kwargs)


@register_model
def cifar_vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 4, 32x32 input, residual baseline (timm Block)."""
    model_args = dict(block_fn=Block, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('cifar_vit_small_patch4_32', pretrained, model_args, **kwargs)

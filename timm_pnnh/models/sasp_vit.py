"""SAS-P Vision Transformers: the skipless, parallel "simplified" Transformer block as a timm ViT.

Paper: He and Hofmann, "Simplifying Transformer Blocks", ICLR 2024 (arXiv:2311.01906); the authors'
code is bobby-he/simplified_transformers (``model_utils.py``, config ``skipless-parallel``). A baseline
for the PNNH ViTs: a Transformer with **no skip connection** that trains by shaping its attention
matrix so that each block starts as the identity map.

``SaspBlock`` on timm's ``VisionTransformer`` (through ``block_fn``), one norm in front of two
parallel sub-blocks and no residual add::

    u = N x
    y = g_a * SA(u) + g_m * drop_path(MLP(u))
    SA(u) = merge_heads( (alpha_h I + beta_h softmax(q k^T / sqrt(d)) - gamma_h C) u_h )

``C`` is the uniform matrix ``1/T`` (uniform over the allowed keys when timm passes ``attn_mask`` or
``is_causal``), the per-head ``alpha, beta, gamma`` are trainable, initialised to 1, and the queries'
weights (and bias) start at zero, so that softmax is uniform, ``beta softmax - gamma C = 0`` and
``SA(u) = u``: a fresh block computes ``N x + g_m MLP(N x)``. The value and output projections are fixed to the identity
(no parameters), so the attention sub-block holds only the query and key weights: about 15% fewer
parameters than timm's ``Block`` at ``mlp_ratio=4``. ``g_a`` (init 1) and ``g_m`` (init 0.1, the
authors' default) are trainable scalars.

Where we chose: LayerNorm (timm's ViT norm) instead of the authors' RMSNorm; timm's GELU ``Mlp`` with
biases (as the residual ViT it is compared with) instead of a bias-free ReLU MLP; identity value and
projection in every block (the paper's SAS-P; the authors' config also gives the first block a
trainable value matrix, which we leave out); ``drop_path`` drops the MLP branch only, since the
attention branch is the path that carries the tokens. There is nothing to reparameterise: the
deployed form is the trained form.
"""
from typing import Any, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, Mlp, register_notrace_function
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention, VisionTransformer

from timm_pnnh.models._cfgs import hub_cfgs
from timm_pnnh.models.pnnh_vit import _cfg, _create_vit, _small_image_cfg

__all__ = ['ShapedAttention', 'SaspBlock', 'MLP_GAIN_INIT']

MLP_GAIN_INIT = 0.1  # the authors' g_m at depth 18 (they scale it as O(1/sqrt(depth)))
PAPER = dict(paper_ids='arXiv:2311.01906', paper_name='Simplifying Transformer Blocks', license='apache-2.0')


@register_notrace_function  # torch.fx traces the mask arguments as Proxies: the branch runs on real values
def uniform_mix(v: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool) -> torch.Tensor:
    """``C v``: each query's mean over the keys it may see (softmax of the mask alone).

    Without a mask ``C`` is the uniform matrix ``1/T`` and ``C v`` the token mean; with ``attn_mask``
    (bool or additive, as ``scaled_dot_product_attention`` takes it) or ``is_causal``, ``C`` is uniform
    over the allowed keys, so that ``beta softmax - gamma C`` still starts at zero.
    """
    if attn_mask is None and not is_causal:
        return v.mean(dim=2, keepdim=True)
    return F.scaled_dot_product_attention(torch.zeros_like(v), v, v, attn_mask=attn_mask, is_causal=is_causal)


class ShapedAttention(nn.Module):
    """Shaped attention with identity values and no output projection.

    ``forward(u) = alpha u + beta softmax(q k^T * scale) u - gamma mean_tokens(u)`` per head: the
    matrix ``alpha I + beta softmax(.) - gamma C`` applied to the tokens, computed without forming
    ``I`` or ``C``. Parameters: ``qk`` (2C x C) and the per-head ``alpha, beta, gamma`` (shape (H,),
    so that timm's optimizer factory keeps weight decay off them).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0., norm_layer: Type[nn.Module] = LayerNorm, device=None, dtype=None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'num_heads={num_heads} is not allowed: it must divide the width {dim}')
        dd = {'device': device, 'dtype': dtype}
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qk = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.alpha = nn.Parameter(torch.ones(num_heads, **dd))
        self.beta = nn.Parameter(torch.ones(num_heads, **dd))
        self.gamma = nn.Parameter(torch.ones(num_heads, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """Zero queries and ``alpha = beta = gamma = 1``: the attention matrix is the identity."""
        dim = self.qk.in_features
        with torch.no_grad():
            self.qk.weight[:dim].zero_()
            if self.qk.bias is not None:
                self.qk.bias[:dim].zero_()
            for gain in (self.alpha, self.beta, self.gamma):
                gain.fill_(1.0)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k = self.qk(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        v = x.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.attn_drop if self.training else 0., scale=self.scale)
        alpha, beta, gamma = (g.view(1, -1, 1, 1) for g in (self.alpha, self.beta, self.gamma))
        out = alpha * v + beta * mixed - gamma * uniform_mix(v, attn_mask, is_causal)
        return out.transpose(1, 2).reshape(batch, tokens, dim)


class SaspBlock(nn.Module):
    """The skipless parallel block (module docstring): ``y = g_a SA(N x) + g_m MLP(N x)``, no residual add.

    Takes the arguments timm's ``VisionTransformer`` gives every ``block_fn``. Refused, each in one
    line: ``init_values`` (LayerScale; the block has its own gains), ``scale_attn_norm`` (there is no
    output projection to normalise for) and an ``attn_layer`` other than timm's default ``Attention``.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_attn_norm: bool = False,
            scale_mlp_norm: bool = False,
            proj_bias: bool = True,
            proj_drop: float = 0.,
            attn_drop: float = 0.,
            init_values: Optional[float] = None,
            drop_path: float = 0.,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = LayerNorm,
            mlp_layer: Type[nn.Module] = Mlp,
            attn_layer: Any = Attention,
            depth: int = 0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        for name, value, allowed in (('init_values', init_values, (None,)),
                                     ('scale_attn_norm', scale_attn_norm, (False,)),
                                     ('attn_layer', attn_layer, (Attention, 'attention'))):
            if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
                raise ValueError(f'{name}={value!r} is not allowed for a SAS-P block: it must be '
                                 f'{" or ".join(repr(a) for a in allowed)}')
        dd = {'device': device, 'dtype': dtype}
        self.norm1 = norm_layer(dim, **dd)
        self.attn = ShapedAttention(dim, num_heads, qkv_bias, qk_norm, attn_drop, norm_layer, **dd)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                             norm_layer=norm_layer if scale_mlp_norm else None, bias=proj_bias, drop=proj_drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.attn_gain = nn.Parameter(torch.ones((), **dd))
        self.mlp_gain = nn.Parameter(torch.full((), MLP_GAIN_INIT, **dd))

    def init_weights(self) -> None:
        """Called by timm's ViT init after the block's Linear layers: identity attention, gains reset."""
        self.attn.init_weights()
        with torch.no_grad():
            self.attn_gain.fill_(1.0)
            self.mlp_gain.fill_(MLP_GAIN_INIT)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        u = self.norm1(x)
        return self.attn_gain * self.attn(u, attn_mask=attn_mask, is_causal=is_causal) + self.mlp_gain * self.drop_path(self.mlp(u))


default_cfgs = generate_default_cfgs(hub_cfgs({  # no weights are published for this baseline
    **{f'sasp_vit_{size}_patch16_224': _cfg(**PAPER) for size in ('tiny', 'small', 'base')},
    **{f'sasp_vit_{size}_patch4_32': _small_image_cfg(**PAPER) for size in ('tiny', 'small')},
}))


@register_model
def sasp_vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 16, SAS-P (shaped attention, parallel MLP, no skip)."""
    model_args = dict(block_fn=SaspBlock, patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('sasp_vit_tiny_patch16_224', pretrained, model_args, **kwargs)


@register_model
def sasp_vit_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 16, SAS-P (shaped attention, parallel MLP, no skip)."""
    model_args = dict(block_fn=SaspBlock, patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('sasp_vit_small_patch16_224', pretrained, model_args, **kwargs)


@register_model
def sasp_vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Base, patch 16, SAS-P (shaped attention, parallel MLP, no skip)."""
    model_args = dict(block_fn=SaspBlock, patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vit('sasp_vit_base_patch16_224', pretrained, model_args, **kwargs)


@register_model
def sasp_vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Tiny, patch 4, 32x32 input, SAS-P (shaped attention, parallel MLP, no skip)."""
    model_args = dict(block_fn=SaspBlock, img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)
    return _create_vit('sasp_vit_tiny_patch4_32', pretrained, model_args, **kwargs)


@register_model
def sasp_vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Small, patch 4, 32x32 input, SAS-P (shaped attention, parallel MLP, no skip)."""
    model_args = dict(block_fn=SaspBlock, img_size=32, patch_size=4, embed_dim=384, depth=12, num_heads=6)
    return _create_vit('sasp_vit_small_patch4_32', pretrained, model_args, **kwargs)

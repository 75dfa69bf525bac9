"""Deployment form: fold a trained net into plain convolutions with bias (timm's ``--reparam``).

A PNNH block is plain by construction; written with concatenated weights it *is* a plain conv stack
(paper, arXiv:2402.08645: no residual connection; this project's reading of the block, see
``timm_pnnh.models.pnnh_resnet``). ``PnnhBasicBlock.reparameterize()`` and ``PnnhBottleneck.reparameterize()``
fold the BatchNorms, the weight-sharing coder ``E`` / ``adj(E)`` and the learner into that stack, in
place. timm's ``timm.utils.reparameterize_model`` (and so ``validate.py --reparam``) calls every
``reparameterize()`` it finds, so it already turns each stride-1 PNNH block into
``conv -> act -> conv -> act`` (bottleneck: three convs). ``reparameterize_model`` here does that and
also folds the BatchNorms of the remaining conv -> BN pairs (stem, transition blocks, downsample
projections), which keep their shortcut: they are residual by design (paper, Figure 2).

The fold uses the BatchNorm running statistics, i.e. it reproduces the model in eval mode. The
result is for inference; it is no longer a PNNH net (the coder weight is no longer shared).
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from timm.utils import reparameterize_model as timm_reparameterize_model

__all__ = ['reparameterize_model', 'fold_batchnorms', 'bn_scale_shift', 'pad_kernel', 'adjoint_conv_weight',
           'dense_weight']


def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(z) == scale * z + shift`` per channel in eval mode."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        raise ValueError(f'cannot fold norm layer {type(bn).__name__}: only BatchNorm with running statistics '
                         'folds into a convolution')
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def pad_kernel(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pad a centred ``k x k`` kernel to ``kernel_size x kernel_size`` (same output, odd sizes)."""
    pad = (kernel_size - weight.shape[-1]) // 2
    if pad < 0 or (kernel_size - weight.shape[-1]) % 2:
        raise ValueError(f'cannot pad a {weight.shape[-1]}x{weight.shape[-1]} kernel to {kernel_size}x{kernel_size}')
    return F.pad(weight, [pad] * 4) if pad else weight


def adjoint_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The ``conv2d`` weight of ``conv_transpose2d(z, weight)`` at stride 1 and 'same' padding.

    ``weight`` is ``C_c x C x k x k`` (the encoder ``E``); the result is ``C x C_c x k x k``.
    """
    return weight.transpose(0, 1).flip(-1, -2)


def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv weight (``out x in/groups x k x k``) as the equivalent dense, block-diagonal one."""
    if groups == 1:
        return weight
    out_per_group, in_per_group = weight.shape[0] // groups, weight.shape[1]
    dense = weight.new_zeros(weight.shape[0], in_per_group * groups, *weight.shape[2:])
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        dense[rows, g * in_per_group:(g + 1) * in_per_group] = weight[rows]
    return dense


@torch.no_grad()
def _fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    scale, shift = bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return fused


def _foldable(conv, bn) -> bool:
    return (type(conv) is nn.Conv2d and isinstance(bn, nn.modules.batchnorm._BatchNorm)
            and bn.running_var is not None and bn.num_features == conv.out_channels)


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold BatchNorms into the convolution right before them, in place, where that order is certain.

    Folded: ``convN`` / ``bnN`` (N = 1, 2, 3) of timm's ``ResNet`` stem and of its ``BasicBlock`` /
    ``Bottleneck`` (and subclasses: the plain blocks), whose forward applies ``bnN`` directly to
    ``convN``'s output; and a ``Conv2d`` followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` (the
    downsample projections, deep stems). The BatchNorm becomes ``nn.Identity``. Nothing else changes.
    """
    for module in model.modules():
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            for n in (1, 2, 3):
                conv, bn = getattr(module, f'conv{n}', None), getattr(module, f'bn{n}', None)
                if _foldable(conv, bn):
                    setattr(module, f'conv{n}', _fold_conv_bn(conv, bn))
                    setattr(module, f'bn{n}', nn.Identity())
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                conv, bn = module._modules[first], module._modules[second]
                if _foldable(conv, bn):
                    module._modules[first] = _fold_conv_bn(conv, bn)
                    module._modules[second] = nn.Identity()
    return model


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """timm's ``reparameterize_model`` (every ``reparameterize()``), then ``fold_batchnorms``.

    Works on any model: on timm's residual ResNets it folds the BatchNorms only, which makes it the
    fair deployment baseline for a PNNH net. Returns a copy unless ``inplace``.
    """
    model = timm_reparameterize_model(model, inplace=inplace)
    return fold_batchnorms(model)

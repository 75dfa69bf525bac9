"""Folding helpers for the deployed form (timm's ``reparameterize_model``, ``validate.py --reparam``).

The deployed form of every model this package registers is what timm's own
``timm.utils.model.reparameterize_model`` produces: it calls ``reparameterize()`` on every submodule
that has one (as for byobnet's RepVGG blocks), and ``create_model(..., inference_mode=True)`` builds
exactly that form, so folded weights saved after timm's function load into it.

* A PNNH block (``PnnhBasicBlock``, ``PnnhBottleneck``, the ViT's ``PnnhBlock``) folds into a plain
  block (paper, arXiv:2402.08645: no residual connection; this project's reading of the block, see
  ``timm_pnnh.models.pnnh_resnet``). ``deploy_form='side_by_side'`` (the default): its learner, BatchNorms
  folded, beside its coder ``E`` / ``adj(E)``, summed before the last act (the ViT: LayerScale folded);
  ``deploy_form='merged'``: one stack ``conv -> act -> conv -> act`` (bottleneck: three convs; the ViT:
  coder and MLP as one ``Linear -> act -> Linear``), the coder carried as extra hidden channels.
* The transition blocks, the plain baselines' blocks and the ``cifar_resnet*`` residual blocks fold
  their conv -> BN pairs and their downsample projection (``fold_block_batchnorms``); the transitions
  keep their shortcut, they are residual by design (paper, Figure 2).
* The stem's conv -> BN pair stays: timm's function calls ``reparameterize()`` on a model's
  submodules, not on the model itself, and the stem's two layers are the model's own.

The fold uses the BatchNorm running statistics, i.e. it reproduces the model in eval mode. The
result is for inference; it is no longer a PNNH net (the coder weight is no longer shared).

``fold_batchnorms(model)`` folds the conv -> BN pairs of any timm ResNet, stem included, without
touching anything else: a deployment runtime's conv-BN fusion, for comparing nets that have no
``reparameterize()`` (timm's own ``resnet*``) with folded ones on equal terms.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ['fold_batchnorms', 'fold_block_batchnorms', 'fold_conv_bn', 'bn_scale_shift', 'pad_kernel', 'adjoint_conv_weight',
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
def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` in eval mode."""
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


def _fold_numbered(module: nn.Module) -> None:
    """``convN`` / ``bnN`` (N = 1, 2, 3): ``bnN`` folded into ``convN``, then ``nn.Identity``."""
    for n in (1, 2, 3):
        conv, bn = getattr(module, f'conv{n}', None), getattr(module, f'bn{n}', None)
        if _foldable(conv, bn):
            setattr(module, f'conv{n}', fold_conv_bn(conv, bn))
            setattr(module, f'bn{n}', nn.Identity())


def _fold_sequential(module: nn.Sequential) -> None:
    """Each ``Conv2d`` directly followed by a ``BatchNorm2d`` in ``module`` (a downsample projection)."""
    names = list(module._modules)
    for first, second in zip(names, names[1:]):
        conv, bn = module._modules[first], module._modules[second]
        if _foldable(conv, bn):
            module._modules[first] = fold_conv_bn(conv, bn)
            module._modules[second] = nn.Identity()


def fold_block_batchnorms(block: nn.Module) -> nn.Module:
    """Fold, in place, the BatchNorms of one timm ``BasicBlock`` / ``Bottleneck`` (or subclass).

    ``bnN`` into ``convN`` (N = 1, 2, 3: the block's forward applies ``bnN`` directly to ``convN``'s
    output) and, in the ``downsample`` projection, each BatchNorm into the conv right before it. A
    folded BatchNorm becomes ``nn.Identity`` (no state dict entries), its conv gets a bias. A pair that
    is not a plain ``Conv2d`` and a BatchNorm with running statistics stays as it is. Idempotent.
    """
    _fold_numbered(block)
    downsample = getattr(block, 'downsample', None)
    if isinstance(downsample, nn.Sequential):
        _fold_sequential(downsample)
    return block


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """Fold BatchNorms into the convolution right before them, in place, where that order is certain.

    Folded: ``convN`` / ``bnN`` of timm's ``ResNet`` stem and of its ``BasicBlock`` / ``Bottleneck``
    (and subclasses), and a ``Conv2d`` followed by a ``BatchNorm2d`` inside an ``nn.Sequential`` (the
    downsample projections, deep stems). The BatchNorm becomes ``nn.Identity``. Nothing else changes.
    Not the deployed form (that is timm's ``reparameterize_model``); a conv-BN fusion for any ResNet.
    """
    for module in model.modules():
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            _fold_numbered(module)
        elif isinstance(module, nn.Sequential):
            _fold_sequential(module)
    return model

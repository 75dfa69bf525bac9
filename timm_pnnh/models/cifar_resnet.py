"""CIFAR-style ResNets (He et al. 2016, section 4.2: 3x3 stride-1 stem, no max-pool, stages of 16/32/64
channels, 6n+2 layers) on timm's ``ResNet``: ``pnnh_resnet20/32/44/56/110`` (PNNH blocks, see
``pnnh_resnet``), ``plain_resnet20/...`` (every shortcut removed) and the residual ``cifar_resnet20/...``.
timm's ResNet projects the shortcut with a 1x1 conv where width changes (He et al.'s option B), which the
residual baseline keeps.

Each entrypoint at the bottom of this file names its block and stage depths (``model_args``); the
blocks and the argument checks are ``pnnh_resnet``'s.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import ResNet

from timm_pnnh.models._cfgs import CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD, hub_cfgs
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, _cfg, _create
from timm_pnnh.models.resnet_blocks import PlainBasicBlock, ResidualBasicBlock

__all__ = ['CifarResNet', 'CIFAR_DEPTHS', 'FMNIST_DEPTHS']

# the registered depths (each entrypoint below writes its architecture)
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
# depths with a Fashion-MNIST weight tag (1x28x28 input); the default tag stays .cifar10 (3x32x32)
FMNIST_DEPTHS = (20, 56)


class CifarResNet(ResNet):
    """timm's ``ResNet`` with the CIFAR stem of He et al. (2016, section 4.2).

    A 3x3 stride-1 convolution to ``channels[0]``, no max-pool, and three stages (strides 1, 2, 2). Everything else -- blocks, head, init, grad
    checkpointing, ``group_matcher``, ``reset_classifier`` -- is timm's.
    """

    # timm ResNet arguments this stem replaces (refused by name on the registered names)
    fixed_args = dict.fromkeys(('stem_type', 'stem_width', 'replace_stem_pool'),
                               'the CIFAR-style nets have their own stem (a 3x3 stride-1 conv, no max-pool)')

    def __init__(self, block, layers: Tuple[int, ...], channels: Tuple[int, ...] = (16, 32, 64),
                 in_chans: int = 3, **kwargs):
        if len(layers) != 3 or len(channels) != 3:
            raise ValueError(f'layers={tuple(layers)}, channels={tuple(channels)}: CifarResNet has exactly 3 stages')
        if channels[0] % 2:
            raise ValueError(f'channels={tuple(channels)}: the first stage width must be even')
        # a 'deep' stem of width channels[0] // 2 makes ResNet build layer1 for channels[0] inputs;
        # the stem itself is then replaced by the CIFAR one
        super().__init__(block, layers, channels=channels, in_chans=in_chans, stem_type='deep',
                         stem_width=channels[0] // 2, **kwargs)
        dd = {'device': self.bn1.weight.device, 'dtype': self.bn1.weight.dtype}
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, stride=1, padding=1, bias=False, **dd)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()
        self.stage_names = ('layer1', 'layer2', 'layer3')
        self.feature_info[0]['reduction'] = 1
        for i, info in enumerate(self.feature_info[1:]):
            info['reduction'] = 2 ** i

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """As timm's ``ResNet.forward_intermediates``: the stem output, then each stage's."""
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stage_names = self.stage_names[:max_index] if stop_early else self.stage_names
        for feat_idx, name in enumerate(stage_names, start=1):
            stage = getattr(self, name)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """As timm's ``ResNet.prune_intermediate_layers``, for the CIFAR stage count."""
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        for name in self.stage_names[max_index:]:
            setattr(self, name, nn.Sequential())
        prune_end = max_index < len(self.stage_names)
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return x


def _create_cifar_resnet(variant: str, pretrained: bool, model_args: Dict[str, Any], **kwargs) -> ResNet:
    """A CIFAR-style net: ``CifarResNet`` (3x3 stride-1 stem, stages of 16/32/64 channels)."""
    return _create(CifarResNet, variant, pretrained, model_args, **kwargs)

def _cifar_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                mean=CIFAR10_MEAN, std=CIFAR10_STD, label_names=CIFAR10_LABELS, **kwargs)


def _fmnist_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(7, 7), crop_pct=1.0,
                mean=FMNIST_MEAN, std=FMNIST_STD, label_names=FMNIST_LABELS, **kwargs)


default_cfgs = generate_default_cfgs(hub_cfgs({
    **{f'{p}_resnet{d}.cifar10': _cifar_cfg() for p in ('pnnh', 'plain', 'cifar') for d in CIFAR_DEPTHS},
    **{f'{p}_resnet{d}.fmnist': _fmnist_cfg() for p in ('pnnh', 'plain', 'cifar') for d in FMNIST_DEPTHS},
}))


@register_model
def pnnh_resnet20(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(3, 3, 3))
    return _create_cifar_resnet('pnnh_resnet20', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet32(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-32, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(5, 5, 5))
    return _create_cifar_resnet('pnnh_resnet32', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet44(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-44, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(7, 7, 7))
    return _create_cifar_resnet('pnnh_resnet44', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet56(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-56, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(9, 9, 9))
    return _create_cifar_resnet('pnnh_resnet56', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet110(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-110, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(18, 18, 18))
    return _create_cifar_resnet('pnnh_resnet110', pretrained, model_args, **kwargs)


@register_model
def plain_resnet20(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(3, 3, 3))
    return _create_cifar_resnet('plain_resnet20', pretrained, model_args, **kwargs)


@register_model
def plain_resnet32(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-32, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(5, 5, 5))
    return _create_cifar_resnet('plain_resnet32', pretrained, model_args, **kwargs)


@register_model
def plain_resnet44(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-44, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(7, 7, 7))
    return _create_cifar_resnet('plain_resnet44', pretrained, model_args, **kwargs)


@register_model
def plain_resnet56(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-56, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(9, 9, 9))
    return _create_cifar_resnet('plain_resnet56', pretrained, model_args, **kwargs)


@register_model
def plain_resnet110(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-110, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(18, 18, 18))
    return _create_cifar_resnet('plain_resnet110', pretrained, model_args, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20, residual baseline."""
    model_args = dict(block=ResidualBasicBlock, layers=(3, 3, 3))
    return _create_cifar_resnet('cifar_resnet20', pretrained, model_args, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-32, residual baseline."""
    model_args = dict(block=ResidualBasicBlock, layers=(5, 5, 5))
    return _create_cifar_resnet('cifar_resnet32', pretrained, model_args, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-44, residual baseline."""
    model_args = dict(block=ResidualBasicBlock, layers=(7, 7, 7))
    return _create_cifar_resnet('cifar_resnet44', pretrained, model_args, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-56, residual baseline."""
    model_args = dict(block=ResidualBasicBlock, layers=(9, 9, 9))
    return _create_cifar_resnet('cifar_resnet56', pretrained, model_args, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> ResNet:
    """CIFAR-style ResNet-110, residual baseline."""
    model_args = dict(block=ResidualBasicBlock, layers=(18, 18, 18))
    return _create_cifar_resnet('cifar_resnet110', pretrained, model_args, **kwargs)

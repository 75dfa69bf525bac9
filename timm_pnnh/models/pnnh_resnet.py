"""PNNH ResNets, their plain baselines and CIFAR-style residual baselines, on timm's ``ResNet``.

Families (paper, Figure 2: PNNH replaces the stride-1 blocks, the blocks that change stride or width
keep the original residual block unless ``plain_transitions=True``):

* ImageNet style (timm's ``ResNet``, 7x7 stem + max-pool, 4 stages): ``pnnh_resnet18/34/50/101/152``
  and ``plain_resnet18/34/50/101/152``; the residual baselines are timm's own ``resnet18`` ... ``152``.
* CIFAR style (He et al. 2016, section 4.2: 3x3 stride-1 stem, no max-pool, stages of 16/32/64
  channels, 6n+2 layers): ``pnnh_resnet20/32/44/56/110``, ``plain_resnet20/...`` and the residual
  ``cifar_resnet20/...``. timm's ResNet projects the shortcut with a 1x1 conv where width changes
  (He et al.'s option B), which the residual baseline keeps.
"""
import inspect
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from timm_pnnh.blocks import (
    BlockSelector, PlainBasicBlock, PlainBottleneck, PnnhBasicBlock, PnnhBottleneck, check_pnnh_args)
from timm_pnnh.models._converted import converted_cfgs, converted_model_args, residual_to_pnnh_resnet
from timm_pnnh.models._factory import check_model_kwargs, register_entrypoint
from timm_pnnh.models._cfgs import (
    CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, FMNIST_LABELS, FMNIST_MEAN, FMNIST_STD, build_model_with_hub, hub_cfgs)

__all__ = ['CifarResNet', 'PNNH_KNOBS', 'IMAGENET_DEPTHS', 'CIFAR_DEPTHS']


# defaults of the knobs the paper leaves open (see README "The PNNH block" and the ablation)
PNNH_KNOBS: Dict[str, Any] = dict(
    coder_ratio=1.0, learner_ratio=1.0, coder_kernel=1, coder_init='dirac', coder_norm=False, coder_lr_scale=0.1)
# A full-width coder in a bottleneck (C = 4 * planes) would cost 2*C*C multiply-adds per position,
# about twice the whole bottleneck; its default is one learner width (C / 4). A cost choice, not
# yet measured: ImageNet-scale ablations cannot run here.
BOTTLENECK_CODER_RATIO = 0.25

IMAGENET_DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                   101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
# depths with a Fashion-MNIST weight tag (1x28x28 input); the default tag stays .cifar10 (3x32x32)
FMNIST_DEPTHS = (20, 56)
FAMILIES = ('pnnh', 'plain', 'residual')


class CifarResNet(ResNet):
    """timm's ``ResNet`` with the CIFAR stem of He et al. (2016, section 4.2).

    A 3x3 stride-1 convolution to ``channels[0]``, no max-pool, and three stages (strides 1, 2, 2). Everything else -- blocks, head, init, grad
    checkpointing, ``group_matcher``, ``reset_classifier`` -- is timm's.
    """

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


def _model_args(model_cls, family: str) -> set:
    names = set(inspect.signature(ResNet.__init__).parameters) | set(inspect.signature(model_cls.__init__).parameters)
    names -= {'block', 'layers'}
    return names | set(PNNH_KNOBS) | {'plain_transitions'} if family == 'pnnh' else names


def _create(variant: str, pretrained: bool, family: str, bottleneck: bool, layers, cifar: bool, **kwargs):
    """Build one registered ResNet-family model; unknown or bad arguments raise ValueError."""
    model_cls = CifarResNet if cifar else ResNet
    check_model_kwargs(variant, kwargs, _model_args(model_cls, family))
    residual_block = Bottleneck if bottleneck else BasicBlock
    if family == 'pnnh':
        kwargs.update(converted_model_args(variant, pretrained, kwargs))  # a tag of timm's converted weights
        kwargs.setdefault('pretrained_filter_fn', residual_to_pnnh_resnet)
        defaults = dict(PNNH_KNOBS, coder_ratio=BOTTLENECK_CODER_RATIO) if bottleneck else PNNH_KNOBS
        knobs = {name: kwargs.pop(name, default) for name, default in defaults.items()}
        check_pnnh_args(**knobs)
        plain_transitions = kwargs.pop('plain_transitions', False)
        if not isinstance(plain_transitions, bool):
            raise ValueError(f'plain_transitions={plain_transitions!r} is not allowed: it must be True or False')
        transition = (PlainBottleneck if bottleneck else PlainBasicBlock) if plain_transitions else residual_block
        block = BlockSelector(PnnhBottleneck if bottleneck else PnnhBasicBlock, transition, **knobs)
    elif family == 'plain':
        block = PlainBottleneck if bottleneck else PlainBasicBlock
    else:
        block = residual_block
    feature_cfg = dict(out_indices=tuple(range(len(layers) + 1)))  # the stem, then every stage
    return build_model_with_hub(model_cls, variant, pretrained, feature_cfg=feature_cfg, block=block, layers=layers,
                                **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', **kwargs}  # license, paper: hub_cfgs


def _cifar_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                mean=CIFAR10_MEAN, std=CIFAR10_STD, label_names=CIFAR10_LABELS, **kwargs)


def _fmnist_cfg(**kwargs) -> Dict[str, Any]:
    return _cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(7, 7), crop_pct=1.0,
                mean=FMNIST_MEAN, std=FMNIST_STD, label_names=FMNIST_LABELS, **kwargs)


def model_names(family: str) -> List[str]:
    """Names this module registers for ``family`` ('pnnh', 'plain' or 'residual')."""
    cifar_prefix = {'pnnh': 'pnnh', 'plain': 'plain', 'residual': 'cifar'}[family]
    imagenet = [f'{family}_resnet{d}' for d in IMAGENET_DEPTHS] if family != 'residual' else []
    return imagenet + [f'{cifar_prefix}_resnet{d}' for d in CIFAR_DEPTHS]


default_cfgs = generate_default_cfgs(hub_cfgs({
    **converted_cfgs('pnnh_resnet'),  # the default tags of the ImageNet-style PNNH nets: timm's weights, converted
    **{f'{name}.in1k': _cfg() for family in ('pnnh', 'plain') for name in model_names(family)[:5]},
    **{f'{name}.cifar10': _cifar_cfg() for family in FAMILIES for name in model_names(family)[-5:]},
    **{f'{name}.fmnist': _fmnist_cfg() for family in FAMILIES for name in model_names(family)[-5:]
       if int(name.rsplit('resnet', 1)[1]) in FMNIST_DEPTHS},
}))


def _register(family: str, name: str, depth: int, cifar: bool) -> None:
    if cifar:
        n = (depth - 2) // 6
        spec = dict(bottleneck=False, layers=(n, n, n))
    else:
        bottleneck, layers = IMAGENET_DEPTHS[depth]
        spec = dict(bottleneck=bottleneck, layers=layers)
    kind = 'CIFAR-style' if cifar else 'ImageNet-style'
    what = {'pnnh': 'PNNH (coder + learner, no shortcut in stride-1 blocks)',
            'plain': 'plain (every shortcut removed)', 'residual': 'residual baseline'}[family]
    register_entrypoint(globals(), name, lambda pretrained, **kwargs: _create(
        name, pretrained, family, cifar=cifar, **spec, **kwargs), f'{kind} ResNet-{depth}, {what}.')


for _family in FAMILIES:
    for _name in model_names(_family):
        _depth = int(_name.rsplit('resnet', 1)[1])
        _register(_family, _name, _depth, cifar=_depth in CIFAR_DEPTHS)

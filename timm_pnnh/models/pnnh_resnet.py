"""PNNH ResNets and their plain baselines, ImageNet style, on timm's ``ResNet``, and the PNNH blocks.

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning", arXiv:2402.08645.
The paper states that deep plain nets lose their input through non-linearities ("dissipating
inputs") and that an *internal path across the non-linearity* -- a weight-sharing **coder** next to
a **learner** -- lets plain nets train as deep as residual ones. The block equations are not in the
paper's text; the blocks below are this project's reading (see README "The PNNH block").
They are drop-in ``block_fn`` for timm's ``ResNet`` (same constructor signature as timm's
``BasicBlock`` / ``Bottleneck``); none of them adds its input to anything.

Paper, Figure 2: PNNH replaces the stride-1 blocks; the blocks that change stride or width keep the
original residual block unless ``plain_transitions=True`` (``BlockSelector``).

* ImageNet style (timm's ``ResNet``, 7x7 stem + max-pool, 4 stages): ``pnnh_resnet18/34/50/101/152``
  and ``plain_resnet18/34/50/101/152``; the residual baselines are timm's own ``resnet18`` ... ``152``.
* CIFAR style: ``cifar_resnet`` (same blocks, ``CifarResNet``).
* The blocks without a coder (residual, plain): ``resnet_blocks``; the coder layer: ``coders``.

Each entrypoint at the bottom of this file names its block and stage depths (``model_args``).
The knob defaults are :data:`PNNH_KNOBS` (and :data:`PNNH_BOTTLENECK_KNOBS`), read by the blocks'
signatures and by the entrypoints.

Deployed form: timm's ``reparameterize_model`` (``validate.py --reparam``) calls every block's
``reparameterize()``: PNNH blocks fold into plain blocks (``deploy_form``), the other blocks fold their BatchNorms
(the stem keeps its conv -> BN). ``inference_mode=True`` builds exactly that form, to load its weights.
"""
import copy
from dataclasses import asdict, dataclass, replace
import inspect
from collections import OrderedDict
from typing import Any, Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from timm_pnnh.models._cfgs import build_model_with_hub, hub_cfgs
from timm_pnnh.models._converted import ConversionError, convert_state_dict, converted_cfgs
from timm_pnnh.models._factory import (
    CODER_INITS, DEPLOY_FORMS, MAX_CODER_RATIO, Knobs, check_choice, check_model_kwargs, check_ratio, coder_width,
    deployable, knob)
from timm_pnnh.models.coders import CoderBesideLearner, _Coder, _conv_with_bias
from timm_pnnh.models.resnet_blocks import TRANSITIONS, PlainBasicBlock, PlainBottleneck
from timm_pnnh.reparam import bn_scale_shift, dense_weight, fold_conv_bn, pad_kernel

__all__ = ['PnnhBasicBlock', 'PnnhBottleneck', 'BlockSelector', 'PNNH_KNOBS', 'PNNH_BOTTLENECK_KNOBS',
           'IMAGENET_DEPTHS', 'check_pnnh_args', 'pnnh_resnet_coders', 'residual_to_pnnh_resnet']

CODER_KERNELS = (1, 3)
CODER_SHARING = ('block', 'stage')
_IDEMPOTENT_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)  # act(act(z)) == act(z)

# the registered depths (each entrypoint below writes its architecture)
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)


@dataclass(frozen=True)
class PnnhKnobs(Knobs):
    """The knobs the paper leaves open (docs/block.md "Knobs"): each field is one knob, with its default,
    its check and what it does. An instance is valid: the checks run once, when it is made (in field
    order, so a call with several bad knobs names the first). ``create_model`` makes one per model and
    every block of the model reads it; a block built on its own makes its own from its keyword
    arguments. Adding a knob is one field here plus its use in the blocks."""
    coder_lr_scale: float = knob(0.1, lambda n, v: check_ratio(n, v, 0.0, 1.0),
                                 "scale of the coder's SGD learning rate (``_Coder``'s gain)")
    coder_ratio: float = knob(1.0, lambda n, v: check_ratio(n, v, 0.0, MAX_CODER_RATIO), 'coder width / C')
    learner_ratio: float = knob(1.0, lambda n, v: check_ratio(n, v, 0.0, 4.0), 'learner width / its timm width')
    coder_kernel: int = knob(1, lambda n, v: check_choice(n, v, CODER_KERNELS), "the coder's kernel size")
    coder_init: str = knob('dirac', lambda n, v: check_choice(n, v, CODER_INITS), "the coder's initialisation")
    coder_norm: bool = knob(False, lambda n, v: check_choice(n, v, (False, True)),
                            'a BatchNorm over the coder channels')
    coder_sharing: str = knob('block', lambda n, v: check_choice(n, v, CODER_SHARING),
                              "'stage': the PNNH blocks of a stage share one coder (``BlockSelector``)")
    deploy_form: str = knob('side_by_side', lambda n, v: check_choice(n, v, DEPLOY_FORMS),
                            "what ``reparameterize()`` folds a block into")


# the knob defaults, by name (the paper's 'dirac' coder as wide as the block, beside a full learner)
PNNH_KNOBS: Dict[str, Any] = asdict(PnnhKnobs())
# A full-width coder in a bottleneck (C = 4 * planes) would cost 2*C*C multiply-adds per position,
# about twice the whole bottleneck; its default is one learner width (C / 4). A cost choice, not
# yet measured at ImageNet scale.
PNNH_BOTTLENECK_KNOBS: Dict[str, Any] = dict(PNNH_KNOBS, coder_ratio=0.25)


def check_pnnh_args(**knobs: Any) -> None:
    """Validate the PNNH knobs given (names from ``PNNH_KNOBS``); raise ValueError naming the bad one."""
    unknown = sorted(set(knobs) - set(PNNH_KNOBS))
    if unknown:
        raise TypeError(f'check_pnnh_args: unknown knob {", ".join(unknown)}; the knobs are {", ".join(PNNH_KNOBS)}')
    PnnhKnobs(**knobs)


def _check_dilation(kernel_sizes, dilations, block: str) -> int:
    """The one dilation of the kernels that are larger than 1x1 (a 1x1 kernel takes any)."""
    used = {d for k, d in zip(kernel_sizes, dilations) if k > 1}
    if len(used) > 1:
        raise ValueError(f'{block}.reparameterize: the coder and learner kernels use different dilations '
                         f'{sorted(used)}; they cannot share one convolution')
    return used.pop() if used else 1


def _check_unsupported(block: str, attn_layer, aa_layer, reduce_first) -> None:
    """ResNet's block arguments a PNNH block cannot honour: a ValueError naming the one that is set."""
    for name, value, allowed in (('attn_layer', attn_layer, None), ('aa_layer', aa_layer, None),
                                 ('reduce_first', reduce_first, 1)):
        if value != allowed:
            raise ValueError(f'{name}={value!r} is not supported by {block}: it must be {allowed}')


class _PnnhBlock(nn.Module):
    """What ``PnnhBasicBlock`` and ``PnnhBottleneck`` share: the argument checks, the coder set-up, the
    learner's zero-initialised last BN, the coder's TorchScript form and the end of the fold.

    A subclass sets ``expansion``, ``knobs`` (its default ``PnnhKnobs``),
    ``last_bn`` and ``last_act`` (the names of the learner's last BatchNorm and of the block's last act),
    builds its learner after this ``__init__`` and sets ``coder_act2`` (the coder's second act, None
    without one), and implements ``_plain_layers`` (the one-conv-per-layer fold, in order) and
    ``_learner_layers`` (the learner folded, up to its last conv).
    """
    expansion = 1
    knobs = PnnhKnobs()
    last_bn = 'bn2'
    last_act = 'act2'

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: Optional[nn.Module],
                 reduce_first: int, first_dilation: int, norm_layer: Type[nn.Module], attn_layer, aa_layer,
                 drop_path: Optional[nn.Module], shared_coder: Optional[nn.Module], knobs: PnnhKnobs,
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        channels = planes * self.expansion
        if stride != 1 or downsample is not None or inplanes != channels:
            raise ValueError(
                f'{name} is for stride-1, same-width blocks: got stride={stride}, inplanes={inplanes}, '
                f'planes={planes} ({channels} channels out), downsample={"set" if downsample is not None else None}')
        _check_unsupported(name, attn_layer, aa_layer, reduce_first)
        self.coder = _Coder(channels, coder_width(channels, knobs.coder_ratio, 'coder_ratio'), knobs.coder_kernel,
                            first_dilation, knobs.coder_init, norm_layer if knobs.coder_norm else None,
                            knobs.coder_lr_scale, shared_coder, device=device, dtype=dtype)
        self.drop_path = drop_path
        self.deploy_form = knobs.deploy_form
        self.inference_mode = False
        self.plain: Optional[nn.Module] = None  # the deployment form, set by reparameterize()

    def zero_init_last(self) -> None:
        """Zero the learner's last BN scale so that the block starts as its coder alone."""
        bn = getattr(self, self.last_bn, None)
        if getattr(bn, 'weight', None) is not None:
            nn.init.zeros_(bn.weight)

    def _coded(self, x: torch.Tensor) -> torch.Tensor:
        """The coder's output, ``adj(E) act(E x)`` (``coder_act2`` after ``act1`` when it is set)."""
        if torch.jit.is_scripting():  # TorchScript cannot compile the coder operation
            kernel = self.coder.kernel()
            code = self.act1(self.coder.encode(x, kernel))
            if self.coder_act2 is not None:
                code = self.coder_act2(code)
            return self.coder.decode(code, kernel)
        return self.coder.code(x, self.act1, self.coder_act2)

    def _plain_layers(self) -> Dict[str, nn.Module]:
        raise NotImplementedError

    def _learner_layers(self) -> Dict[str, nn.Module]:
        raise NotImplementedError

    def _side_by_side(self) -> CoderBesideLearner:
        """The ``deploy_form='side_by_side'`` fold: the learner's convs (BatchNorms folded) beside the coder's."""
        enc_w, enc_b, dec_w = self.coder.folded()
        dilation = self.coder.dilation
        coder_act = copy.deepcopy(self.act1)
        if self.coder_act2 is not None and not isinstance(self.coder_act2, nn.Identity):
            coder_act = nn.Sequential(coder_act, self.coder_act2)
        learner = nn.Sequential(OrderedDict(self._learner_layers()))
        return CoderBesideLearner(learner, _conv_with_bias(enc_w, enc_b, dilation), coder_act,
                                  _conv_with_bias(dec_w, None, dilation), getattr(self, self.last_act))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the block, in place, into ``plain``, its eval form (BatchNorm running statistics) with no
        term that is the input. ``deploy_form='side_by_side'`` (the default): a ``CoderBesideLearner``,
        the learner's convs beside the coder's, summed before the last act; ``'merged'``: a
        ``Sequential`` of one conv (with bias) per layer and the block's acts (``_plain_layers``), the
        coder carried as extra hidden channels. The training-form layers go; DropBlock and DropPath,
        identities in eval, are dropped. timm's ``reparameterize_model`` calls this. Idempotent."""
        if self.plain is not None:
            return
        if self.deploy_form == 'merged':
            plain = nn.Sequential(OrderedDict(self._plain_layers()))
        else:
            plain = self._side_by_side()
        for name in list(self._modules):
            delattr(self, name)
        self.coder_act2 = None
        self.drop_path = None
        self.plain = plain
        self.inference_mode = True


class PnnhBasicBlock(_PnnhBlock):
    """Stride-1 PNNH block for ResNet-18/34 and the CIFAR ResNets (C channels in and out).

    With ``x`` the input, ``E`` the coder weight (C_c x C x k x k, k = ``coder_kernel``) and ``act``
    the block's non-linearity::

        coder   = conv_transpose(act(N_c(conv(x, E))), E)                # adj(E) act(E x)
        learner = BN2(conv3x3(act(BN1(conv3x3(x, L1))), L2))            # C -> C_l -> C
        y       = act(coder + drop_path(learner))

    No term is the input itself: the block is plain. ``N_c`` is a BatchNorm over the coder
    channels when ``coder_norm=True`` and nothing otherwise. ``BN2``'s scale starts at zero
    (``zero_init_last``), so at initialisation the block is the coder alone. Written as one
    convolution per layer the block is ``conv([E ; L1]) -> act -> conv([adj(E) | L2]) -> act``, and
    it folds into exactly that at deployment (``reparameterize``). In training the two branches are
    summed instead: the learner's BatchNorms need the learner's own batch statistics, which a
    concatenated second convolution cannot give, and a 1x1 coder costs 1/9 of running it inside a
    3x3 conv (docs/block.md, "Choices and what they rest on").

    Parameters (C_c = coder_ratio * C, C_l = learner_ratio * C, k = coder_kernel)::

        k*k*C_c*C  +  9*C*C_l  +  9*C_l*C  +  2*C_l  +  2*C  (+ 2*C_c if coder_norm)

    ``drop_path`` drops the learner only (the coder is the path that stays, as the identity does in
    a residual block). ``attn_layer``, ``aa_layer`` and ``reduce_first != 1`` are not supported (ValueError). ``coder_lr_scale`` scales the coder's SGD
    learning rate (see ``_Coder``; why 0.1: docs/block.md, "Choices and what they rest on").
    """
    expansion = 1
    knobs = PnnhKnobs()
    last_bn = 'bn2'
    last_act = 'act2'

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            knobs: Optional[PnnhKnobs] = None,
            shared_coder: Optional[nn.Module] = None,
            device=None,
            dtype=None,
            **knob_args,
    ):
        dd = {'device': device, 'dtype': dtype}
        first_dilation = first_dilation or dilation
        if knobs is None or knob_args:  # a block built on its own: its knobs from its keyword arguments
            knobs = replace(knobs or self.knobs, **knob_args)
        learner_ratio = knobs.learner_ratio
        super().__init__(inplanes, planes, stride, downsample, reduce_first, first_dilation, norm_layer, attn_layer,
                         aa_layer, drop_path, shared_coder, knobs, **dd)
        if cardinality != 1 or base_width != 64:
            raise ValueError(f'cardinality={cardinality}, base_width={base_width}: PnnhBasicBlock supports only 1 and 64')
        channels = planes
        learner_channels = coder_width(channels, learner_ratio, 'learner_ratio')
        self.conv1 = nn.Conv2d(channels, learner_channels, 3, padding=first_dilation, dilation=first_dilation,
                               bias=False, **dd)
        self.bn1 = norm_layer(learner_channels, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(learner_channels, channels, 3, padding=dilation, dilation=dilation, bias=False, **dd)
        self.bn2 = norm_layer(channels, **dd)
        self.act2 = act_layer(inplace=True)
        self.coder_act2: Optional[nn.Module] = None

    def _plain_layers(self) -> Dict[str, nn.Module]:
        """``reparameterize()`` folds the block into ``plain = Sequential(conv1, act1, conv2, act2)``.

        ``conv1 = [N_c E ; BN1 L1]`` and ``conv2 = [adj(E) | BN2 L2]``, both with bias, the 1x1 coder
        zero-padded to the learner's 3x3.

        Cost: both convs are 3x3 over ``C_c + C_l`` hidden channels, ``(C_c + C_l) / C`` times a
        residual block's multiply-adds (2x with the default C-wide coder, 1x with
        ``coder_ratio + learner_ratio = 1``), against ``C_l / C + C_c / (9 C)`` for the summed form:
        plain, but not cheaper, unless the coder and learner share the width.

        This exact fold is the deployed form (what timm's ``reparameterize_model`` and
        ``validate.py --reparam`` produce): it holds for every input.
        """
        enc_w, enc_b, dec_w = self.coder.folded()
        scale1, shift1 = bn_scale_shift(self.bn1)
        scale2, shift2 = bn_scale_shift(self.bn2)
        k = max(enc_w.shape[-1], 3)
        d1, d2 = (_check_dilation((enc_w.shape[-1], 3), (self.coder.dilation, conv.dilation[0]), type(self).__name__)
                  for conv in (self.conv1, self.conv2))
        w1 = torch.cat([pad_kernel(enc_w, k), pad_kernel(self.conv1.weight * scale1.reshape(-1, 1, 1, 1), k)], 0)
        w2 = torch.cat([pad_kernel(dec_w, k), pad_kernel(self.conv2.weight * scale2.reshape(-1, 1, 1, 1), k)], 1)
        return dict(conv1=_conv_with_bias(w1, torch.cat([enc_b, shift1]), d1), act1=self.act1,
                    conv2=_conv_with_bias(w2, shift2, d2), act2=self.act2)

    def _learner_layers(self) -> Dict[str, nn.Module]:
        """The learner of ``deploy_form='side_by_side'``: ``conv1 (BN1 L1) -> act1 -> conv2 (BN2 L2)``."""
        return dict(conv1=fold_conv_bn(self.conv1, self.bn1), act1=self.act1, conv2=fold_conv_bn(self.conv2, self.bn2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None:  # inference_mode; TorchScript drops this branch while plain is None
            return self.plain(x)
        coded = self._coded(x)
        learned = self.conv1(x)
        learned = self.bn1(learned)
        learned = self.drop_block(learned)
        learned = self.act1(learned)
        learned = self.bn2(self.conv2(learned))
        if self.drop_path is not None:
            learned = self.drop_path(learned)
        learned += coded  # in place, as timm's BasicBlock adds its shortcut: one map less per block
        return self.act2(learned)


class PnnhBottleneck(_PnnhBlock):
    """Stride-1 PNNH bottleneck for ResNet-50/101/152 (C = 4 * planes channels in and out).

    This project's design (the paper gives none): the coder crosses *both* non-linearities of the
    bottleneck with one shared weight. With W = learner width (timm's bottleneck width times
    ``learner_ratio``)::

        coder   = conv_transpose(act(act(N_c(conv(x, E)))), E)                   # C -> C_c -> C
        learner = BN3(conv1x1(act(BN2(conv3x3(act(BN1(conv1x1(x, L1))), L2))), L3))
        y       = act(coder + drop_path(learner))

    At deployment this is ``conv([E ; L1]) -> act -> conv(diag(I, L2)) -> act -> conv([adj(E) | L3])
    -> act``: the middle conv passes the coder channels through a fixed identity (no parameters),
    which is why the coder applies ``act`` twice (exact for any activation, a no-op for ReLU).

    Parameters (C_c = coder_ratio * C, k = coder_kernel, g = cardinality)::

        k*k*C_c*C  +  C*W  +  9*W*W/g  +  W*C  +  2*W  +  2*W  +  2*C  (+ 2*C_c if coder_norm)
    """
    expansion = 4
    knobs = PnnhKnobs(**PNNH_BOTTLENECK_KNOBS)
    last_bn = 'bn3'
    last_act = 'act3'

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: Optional[nn.Module] = None,
            cardinality: int = 1,
            base_width: int = 64,
            reduce_first: int = 1,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_layer: Optional[Type[nn.Module]] = None,
            aa_layer: Optional[Type[nn.Module]] = None,
            drop_block: Optional[Type[nn.Module]] = None,
            drop_path: Optional[nn.Module] = None,
            knobs: Optional[PnnhKnobs] = None,
            shared_coder: Optional[nn.Module] = None,
            device=None,
            dtype=None,
            **knob_args,
    ):
        dd = {'device': device, 'dtype': dtype}
        first_dilation = first_dilation or dilation
        if knobs is None or knob_args:  # a block built on its own: its knobs from its keyword arguments
            knobs = replace(knobs or self.knobs, **knob_args)
        learner_ratio = knobs.learner_ratio
        super().__init__(inplanes, planes, stride, downsample, reduce_first, first_dilation, norm_layer, attn_layer,
                         aa_layer, drop_path, shared_coder, knobs, **dd)
        channels = planes * self.expansion
        width = int(planes * (base_width / 64)) * cardinality
        width = coder_width(width, learner_ratio, 'learner_ratio')
        if width % cardinality:
            raise ValueError(f'learner_ratio={learner_ratio!r} gives a learner width {width} '
                             f'not divisible by cardinality={cardinality}')
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False, **dd)
        self.bn1 = norm_layer(width, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=first_dilation, dilation=first_dilation,
                               groups=cardinality, bias=False, **dd)
        self.bn2 = norm_layer(width, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False, **dd)
        self.bn3 = norm_layer(channels, **dd)
        self.act3 = act_layer(inplace=True)
        # the coder's second act: act2 itself would work in place on act1's output, which act1's
        # backward needs; an idempotent act (ReLU) applied twice is applied once
        self.coder_act2 = nn.Identity() if isinstance(self.act2, _IDEMPOTENT_ACTS) else act_layer(inplace=False)

    def _plain_layers(self) -> Dict[str, nn.Module]:
        """``reparameterize()`` folds the block into ``plain = Sequential(conv1, act1, conv2, act2, conv3, act3)``.

        ``conv1 = [N_c E ; BN1 L1]``, ``conv2 = diag(I, BN2 L2)`` (a Dirac kernel on the coder channels,
        block-diagonal dense if ``cardinality > 1``), ``conv3 = [adj(E) | BN3 L3]``, all with bias, every
        kernel zero-padded to the largest of its conv. Eval form (BatchNorm running statistics).
        """
        enc_w, enc_b, dec_w = self.coder.folded()
        scale1, shift1 = bn_scale_shift(self.bn1)
        scale2, shift2 = bn_scale_shift(self.bn2)
        scale3, shift3 = bn_scale_shift(self.bn3)
        k = enc_w.shape[-1]
        d1 = d3 = _check_dilation((k, 1), (self.coder.dilation, 1), type(self).__name__)
        d2 = self.conv2.dilation[0]
        coder_channels, width = enc_w.shape[0], self.conv2.out_channels
        w1 = torch.cat([enc_w, pad_kernel(self.conv1.weight * scale1.reshape(-1, 1, 1, 1), k)], 0)
        w2 = enc_w.new_zeros(coder_channels + width, coder_channels + width, 3, 3)
        nn.init.dirac_(w2[:coder_channels, :coder_channels])
        w2[coder_channels:, coder_channels:] = dense_weight(self.conv2.weight, self.conv2.groups) * scale2.reshape(-1, 1, 1, 1)
        w3 = torch.cat([dec_w, pad_kernel(self.conv3.weight * scale3.reshape(-1, 1, 1, 1), k)], 1)
        return dict(conv1=_conv_with_bias(w1, torch.cat([enc_b, shift1]), d1), act1=self.act1,
                    conv2=_conv_with_bias(w2, torch.cat([shift2.new_zeros(coder_channels), shift2]), d2), act2=self.act2,
                    conv3=_conv_with_bias(w3, shift3, d3), act3=self.act3)

    def _learner_layers(self) -> Dict[str, nn.Module]:
        """The learner of ``deploy_form='side_by_side'``: ``conv1 -> act1 -> conv2 -> act2 -> conv3``, each
        conv with its BatchNorm folded (``conv2`` keeps its groups)."""
        return dict(conv1=fold_conv_bn(self.conv1, self.bn1), act1=self.act1, conv2=fold_conv_bn(self.conv2, self.bn2),
                    act2=self.act2, conv3=fold_conv_bn(self.conv3, self.bn3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None:  # inference_mode; TorchScript drops this branch while plain is None
            return self.plain(x)
        coded = self._coded(x)
        learned = self.act1(self.bn1(self.conv1(x)))
        learned = self.bn2(self.conv2(learned))
        learned = self.drop_block(learned)
        learned = self.act2(learned)
        learned = self.bn3(self.conv3(learned))
        if self.drop_path is not None:
            learned = self.drop_path(learned)
        learned += coded
        return self.act3(learned)



class BlockSelector:
    """A ``block_fn`` for timm's ``ResNet`` that picks the block per position (paper, Figure 2).

    Stride-1, same-width blocks become ``pnnh_block``; the blocks that change stride or width keep
    ``transition_block`` (timm's residual block, or the plain one when the model is built with
    ``plain_transitions=True``). ResNet reads ``expansion`` and calls the selector like a class, block
    by block and stage by stage. With ``coder_sharing='stage'`` the PNNH blocks after one transition
    (one stage) use the first one's coder Parameter (``_Coder`` ``owner``); a selector builds one model.
    """

    def __init__(self, pnnh_block, transition_block, knobs: PnnhKnobs):
        if pnnh_block.expansion != transition_block.expansion:
            raise ValueError('pnnh_block and transition_block must have the same expansion')
        self.expansion = pnnh_block.expansion
        self.pnnh_block = pnnh_block
        self.transition_block = transition_block
        self.share = knobs.coder_sharing == 'stage'
        self.knobs = knobs
        self.stage_coder: Optional[nn.Module] = None

    def __call__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, **kwargs):
        if stride == 1 and downsample is None and inplanes == planes * self.expansion:
            block = self.pnnh_block(inplanes, planes, **kwargs, knobs=self.knobs,
                                    shared_coder=self.stage_coder if self.share else None)
            if self.share and self.stage_coder is None:
                self.stage_coder = block.coder
            return block
        self.stage_coder = None  # a new stage begins after a transition
        return self.transition_block(inplanes, planes, stride, downsample, **kwargs)



def pnnh_resnet_coders(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{'layerX.Y.coder.weight': Dirac / gain}`` for every PNNH block of a ResNet-family ``model``: the
    coder weights that make it compute timm's residual net with the same other weights (``_converted``).

    Raises ConversionError when the model cannot carry a residual net exactly: a coder narrower than its
    block, a coder norm, a non-ReLU activation, or plain transition blocks.
    """
    coders, problems = {}, []
    for name, block in model.named_modules():
        if isinstance(block, (PlainBasicBlock, PlainBottleneck)):
            problems.append(f'{name} is a plain transition block (plain_transitions=True), a residual block has a '
                            'shortcut there')
        if not isinstance(block, _PnnhBlock) or block.inference_mode:
            continue
        weight = block.coder.weight
        if weight.shape[0] != weight.shape[1]:
            problems.append(f'{name}.coder has {weight.shape[0]} of {weight.shape[1]} channels (coder_ratio=1.0 needed)')
        if not isinstance(block.coder.norm, nn.Identity):
            problems.append(f'{name}.coder has a norm (coder_norm=False needed)')
        acts = [block.act1, block.act2] + ([block.act3] if hasattr(block, 'act3') else [])
        if not all(type(a) is nn.ReLU for a in acts):
            problems.append(f'{name} uses {type(block.act1).__name__}, not ReLU: its input may be negative')
        dirac = torch.zeros_like(weight, device='cpu', dtype=torch.float32)
        nn.init.dirac_(dirac)
        coders[f'{name}.coder.weight'] = dirac / block.coder.gain
    if problems:
        raise ConversionError('; '.join(problems[:4]) + (f' (and {len(problems) - 4} more)' if len(problems) > 4 else ''))
    return coders


def residual_to_pnnh_resnet(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: a timm ``resnet*`` state dict -> the PNNH ``model``'s (exact)."""
    return convert_state_dict(state_dict, model, pnnh_resnet_coders, 'fc')



def _create(model_cls: Type[ResNet], variant: str, pretrained: bool, model_args: Dict[str, Any], **kwargs) -> ResNet:
    """Build ``variant``: ``model_cls`` with its entrypoint's ``model_args`` (``block``, ``layers``) and the
    caller's ``kwargs`` (timm's ResNet arguments; with a PNNH ``block`` also its knobs and
    ``plain_transitions``). Bad arguments raise ValueError (an unknown one also TypeError)."""
    block, layers = model_args['block'], model_args['layers']
    kwargs = dict({k: v for k, v in model_args.items() if k not in ('block', 'layers')}, **kwargs)
    pnnh = issubclass(block, _PnnhBlock)
    allowed = set(inspect.signature(ResNet.__init__).parameters) | set(inspect.signature(model_cls.__init__).parameters)
    allowed |= {'inference_mode'}
    fixed = dict(block=f'the name sets its block ({block.__name__})', layers=f'the name sets its depth ({layers})',
                 **getattr(model_cls, 'fixed_args', {}))
    check_model_kwargs(variant, kwargs, allowed | set(PNNH_KNOBS) | {'plain_transitions'} if pnnh else allowed, fixed)
    # timm arguments the name's block takes one value of (timm's BasicBlock asserts on the first two)
    only = dict(cardinality=1, base_width=64) if block.expansion == 1 else {}
    if pnnh:
        only['block_reduce_first'] = 1
    for name, value in only.items():
        if kwargs.get(name, value) != value:
            raise ValueError(f'{variant}: {name}={kwargs[name]!r} is not allowed: {block.__name__} takes only {name}={value}')
    if pnnh:
        kwargs.setdefault('pretrained_filter_fn', residual_to_pnnh_resnet)
        knobs = replace(block.knobs, **{name: kwargs.pop(name) for name in PNNH_KNOBS if name in kwargs})  # checked here
        plain_transitions = kwargs.pop('plain_transitions', False)
        check_choice('plain_transitions', plain_transitions, (False, True))
        block = BlockSelector(block, TRANSITIONS[block.expansion][plain_transitions], knobs)
    model_cls = deployable(model_cls, kwargs.pop('inference_mode', False))
    feature_cfg = dict(out_indices=tuple(range(len(layers) + 1)))  # the stem, then every stage
    return build_model_with_hub(model_cls, variant, pretrained, feature_cfg=feature_cfg, block=block, layers=layers,
                                **kwargs)


def _create_resnet(variant: str, pretrained: bool, model_args: Dict[str, Any], **kwargs) -> ResNet:
    """An ImageNet-style net: timm's ``ResNet`` (7x7 stem, max-pool, 4 stages)."""
    return _create(ResNet, variant, pretrained, model_args, **kwargs)

def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', **kwargs}  # license, paper: hub_cfgs


default_cfgs = generate_default_cfgs(hub_cfgs({
    **converted_cfgs('pnnh_resnet'),  # pnnh_resnet18/34's default and the *_identity names' tags: timm's, converted
    **{f'{f}_resnet{d}.in1k': _cfg() for f in ('pnnh', 'plain') for d in IMAGENET_DEPTHS},
}))


@register_model
def pnnh_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-18, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet('pnnh_resnet18', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-34, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet('pnnh_resnet34', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-50, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 4, 6, 3))
    return _create_resnet('pnnh_resnet50', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-101, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 4, 23, 3))
    return _create_resnet('pnnh_resnet101', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-152, PNNH (coder + learner, no shortcut in stride-1 blocks)."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 8, 36, 3))
    return _create_resnet('pnnh_resnet152', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet50_identity(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-50, PNNH with C-wide coders: the form timm's resnet50 weights load into exactly."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 4, 6, 3), coder_ratio=1.0)
    return _create_resnet('pnnh_resnet50_identity', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet101_identity(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-101, PNNH with C-wide coders: the form timm's resnet101 weights load into exactly."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 4, 23, 3), coder_ratio=1.0)
    return _create_resnet('pnnh_resnet101_identity', pretrained, model_args, **kwargs)


@register_model
def pnnh_resnet152_identity(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-152, PNNH with C-wide coders: the form timm's resnet152 weights load into exactly."""
    model_args = dict(block=PnnhBottleneck, layers=(3, 8, 36, 3), coder_ratio=1.0)
    return _create_resnet('pnnh_resnet152_identity', pretrained, model_args, **kwargs)


@register_model
def plain_resnet18(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-18, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(2, 2, 2, 2))
    return _create_resnet('plain_resnet18', pretrained, model_args, **kwargs)


@register_model
def plain_resnet34(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-34, plain (every shortcut removed)."""
    model_args = dict(block=PlainBasicBlock, layers=(3, 4, 6, 3))
    return _create_resnet('plain_resnet34', pretrained, model_args, **kwargs)


@register_model
def plain_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-50, plain (every shortcut removed)."""
    model_args = dict(block=PlainBottleneck, layers=(3, 4, 6, 3))
    return _create_resnet('plain_resnet50', pretrained, model_args, **kwargs)


@register_model
def plain_resnet101(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-101, plain (every shortcut removed)."""
    model_args = dict(block=PlainBottleneck, layers=(3, 4, 23, 3))
    return _create_resnet('plain_resnet101', pretrained, model_args, **kwargs)


@register_model
def plain_resnet152(pretrained: bool = False, **kwargs) -> ResNet:
    """ImageNet-style ResNet-152, plain (every shortcut removed)."""
    model_args = dict(block=PlainBottleneck, layers=(3, 8, 36, 3))
    return _create_resnet('plain_resnet152', pretrained, model_args, **kwargs)

"""Convolutional blocks of the PNNH paradigm and the plain baseline.

Paper: Zhang, Yan, Li, Chen, "Peeking Behind the Curtains of Residual Learning", arXiv:2402.08645.
The paper states that deep plain nets lose their input through non-linearities ("dissipating
inputs") and that an *internal path across the non-linearity* -- a weight-sharing **coder** next to
a **learner** -- lets plain nets train as deep as residual ones. The block equations are not in the
text available to us; what follows is this project's reading (see README "The PNNH block").

Blocks here are drop-in ``block_fn`` for timm's ``ResNet`` (same constructor signature as
``timm.models.resnet.BasicBlock`` / ``Bottleneck``). None of them adds its input to anything.
"""
from collections import OrderedDict
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck, get_padding

from timm_pnnh.models import coder_ops
from timm_pnnh.reparam import adjoint_conv_weight, bn_scale_shift, dense_weight, pad_kernel

__all__ = [
    'CODER_INITS', 'PnnhBasicBlock', 'PnnhBottleneck', 'PlainBasicBlock', 'PlainBottleneck',
    'BlockSelector', 'check_ratio', 'coder_width', 'check_pnnh_args',
]

CODER_INITS = ('dirac', 'kaiming', 'orthogonal')
_IDEMPOTENT_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)  # act(act(z)) == act(z)
CODER_KERNELS = (1, 3)


def check_ratio(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low < value <= high):
        raise ValueError(f'{name}={value!r} is not allowed: it must be a number in ({low}, {high}]')
    return float(value)


def coder_width(channels: int, ratio: float, name: str) -> int:
    """``channels * ratio`` as an exact whole number of channels, or a ValueError naming ``name``."""
    width = channels * ratio
    if abs(width - round(width)) > 1e-6 or round(width) < 1:
        raise ValueError(
            f'{name}={ratio!r} does not divide {channels} channels into a whole number '
            f'({channels} * {ratio} = {width:g}); choose a ratio r with {channels} * r a positive integer')
    return int(round(width))


def check_pnnh_args(
        coder_ratio: float = 1.0,
        learner_ratio: float = 1.0,
        coder_kernel: int = 1,
        coder_init: str = 'dirac',
        coder_norm: bool = False,
        coder_lr_scale: float = 0.1,
) -> None:
    """Validate the PNNH knobs (the ones the paper leaves open); raise ValueError naming the bad one."""
    check_ratio('coder_lr_scale', coder_lr_scale, 0.0, 1.0)
    check_ratio('coder_ratio', coder_ratio, 0.0, 1.0)
    check_ratio('learner_ratio', learner_ratio, 0.0, 4.0)
    if coder_kernel not in CODER_KERNELS or isinstance(coder_kernel, bool):
        raise ValueError(f'coder_kernel={coder_kernel!r} is not allowed: it must be one of {CODER_KERNELS}')
    if coder_init not in CODER_INITS:
        raise ValueError(f'coder_init={coder_init!r} is not allowed: it must be one of {CODER_INITS}')
    if not isinstance(coder_norm, bool):
        raise ValueError(f'coder_norm={coder_norm!r} is not allowed: it must be True or False')


class _Coder(nn.Module):
    """The weight-sharing coder: encoder ``E`` (a conv C -> C_c) and decoder ``adj(E)``.

    ``adj(E)`` is the transposed convolution with the *same* Parameter, so the decoder costs no
    parameters and no weight copy: ``decode(z) = conv_transpose2d(z, E)``. For a non-negative input
    and a Dirac ``E`` (C_c = C), ``decode(relu(encode(x))) == x`` exactly; for a random ``E`` the
    result points along ``x`` in expectation. Not an ``nn.Conv2d``, so ResNet's Kaiming init leaves
    the chosen ``coder_init`` alone.

    ``lr_scale`` (s): the Parameter holds ``E / sqrt(s)`` and the coder uses ``E = sqrt(s) * weight``,
    so plain SGD moves ``E`` with s times the learning rate (Adam-type optimizers: sqrt(s)) and weight
    decay shrinks ``E`` at the usual relative rate. Works with any training script, timm's included.
    ``kernel()`` is ``E``: the Parameter itself when s = 1, else one scaled tensor per forward, which
    encoder and decoder share.

    ``code(x, act)`` is the coder's output. A ReLU coder without norm runs as one operation that
    recomputes its code in backward instead of saving it (``coder_ops.relu_coder``, ``recompute``
    True); any other coder, or ``recompute = False``, runs as autograd's encode -> act -> decode.
    """
    recompute = True

    def __init__(self, channels: int, coder_channels: int, kernel_size: int, dilation: int, init: str,
                 norm_layer: Optional[Type[nn.Module]], lr_scale: float = 1.0, device=None, dtype=None):
        super().__init__()
        self.padding = get_padding(kernel_size, 1, dilation)
        self.dilation = dilation
        self.gain = float(lr_scale) ** 0.5
        self.weight = nn.Parameter(torch.empty(coder_channels, channels, kernel_size, kernel_size,
                                               device=device, dtype=dtype))
        self.norm = norm_layer(coder_channels, device=device, dtype=dtype) if norm_layer is not None else nn.Identity()
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == 'dirac':
            nn.init.dirac_(self.weight)
        elif self.init == 'orthogonal':
            nn.init.orthogonal_(self.weight)
        else:  # 'kaiming', scaled so that adj(E) relu(E x) keeps the input's magnitude in expectation
            nn.init.kaiming_normal_(self.weight, mode='fan_out', nonlinearity='relu')
            self.weight.data.mul_(0.5 ** 0.5)
        self.weight.data.div_(self.gain)

    def kernel(self) -> torch.Tensor:
        """The coder weight ``E``."""
        return self.weight if self.gain == 1.0 else self.weight * self.gain

    def encode(self, x: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        kernel = self.kernel() if kernel is None else kernel
        return self.norm(F.conv2d(x, kernel, None, 1, self.padding, self.dilation))

    def decode(self, z: torch.Tensor, kernel: Optional[torch.Tensor] = None) -> torch.Tensor:
        kernel = self.kernel() if kernel is None else kernel
        return F.conv_transpose2d(z, kernel, None, 1, self.padding, 0, 1, self.dilation)

    def code(self, x: torch.Tensor, act: nn.Module, act2: Optional[nn.Module] = None) -> torch.Tensor:
        """``adj(E) act2(act(N_c(E x)))`` (``act2`` none if not given)."""
        acts = (act,) if act2 is None else (act, act2)
        if self.recompute and coder_ops.recompute_applies(self.norm, *acts):
            return coder_ops.relu_coder(x, self.weight, self.gain, self.padding, self.dilation)
        kernel = self.kernel()
        code = self.encode(x, kernel)
        for a in acts:
            code = a(code)
        return self.decode(code, kernel)

    def folded(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(encoder weight, encoder bias, decoder weight)`` as plain ``conv2d`` weights (norm folded)."""
        weight = self.kernel().detach()
        if isinstance(self.norm, nn.Identity):
            scale, shift = weight.new_ones(weight.shape[0]), weight.new_zeros(weight.shape[0])
        else:
            scale, shift = bn_scale_shift(self.norm)
        return weight * scale.reshape(-1, 1, 1, 1), shift, adjoint_conv_weight(weight)


def _conv_with_bias(weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> nn.Conv2d:
    """A stride-1 'same' ``nn.Conv2d`` holding ``weight`` and ``bias``."""
    k = weight.shape[-1]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], k, padding=dilation * (k - 1) // 2, dilation=dilation,
                     bias=True, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _check_dilation(kernel_sizes, dilations, block: str) -> int:
    """The one dilation of the kernels that are larger than 1x1 (a 1x1 kernel takes any)."""
    used = {d for k, d in zip(kernel_sizes, dilations) if k > 1}
    if len(used) > 1:
        raise ValueError(f'{block}.reparameterize: the coder and learner kernels use different dilations '
                         f'{sorted(used)}; they cannot share one convolution')
    return used.pop() if used else 1


def _no_attn(attn_layer, block: str) -> None:
    if attn_layer is not None:
        raise ValueError(f'attn_layer={attn_layer!r} is not supported by {block}: it must be None')


class PnnhBasicBlock(nn.Module):
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
    3x3 conv. Measured (pnnh_resnet56, batch 64, CPU): concatenating only the first convolution
    trains 0.78x as fast as the summed branches with a 1x1 coder and 0.93x with a 3x3 one; decoding
    with ``conv2d`` on ``adj(E)`` instead of ``conv_transpose2d`` on ``E`` is within noise.

    Parameters (C_c = coder_ratio * C, C_l = learner_ratio * C, k = coder_kernel)::

        k*k*C_c*C  +  9*C*C_l  +  9*C_l*C  +  2*C_l  +  2*C  (+ 2*C_c if coder_norm)

    ``drop_path`` drops the learner only (the coder is the path that stays, as the identity does in
    a residual block). ``attn_layer`` is not supported. ``coder_lr_scale`` scales the coder's SGD
    learning rate (see ``_Coder``): a coder trained at the full rate destabilised deep nets here.
    """
    expansion = 1

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
            coder_ratio: float = 1.0,
            learner_ratio: float = 1.0,
            coder_kernel: int = 1,
            coder_init: str = 'dirac',
            coder_norm: bool = False,
            coder_lr_scale: float = 0.1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_pnnh_args(coder_ratio, learner_ratio, coder_kernel, coder_init, coder_norm, coder_lr_scale)
        if stride != 1 or downsample is not None or inplanes != planes:
            raise ValueError(
                f'PnnhBasicBlock is for stride-1, same-width blocks: got stride={stride}, '
                f'inplanes={inplanes}, planes={planes}, downsample={"set" if downsample is not None else None}')
        if cardinality != 1 or base_width != 64:
            raise ValueError(f'cardinality={cardinality}, base_width={base_width}: PnnhBasicBlock supports only 1 and 64')
        _no_attn(attn_layer, 'PnnhBasicBlock')
        channels = planes
        learner_channels = coder_width(channels, learner_ratio, 'learner_ratio')
        first_dilation = first_dilation or dilation

        self.coder = _Coder(channels, coder_width(channels, coder_ratio, 'coder_ratio'), coder_kernel,
                            first_dilation, coder_init, norm_layer if coder_norm else None, coder_lr_scale, **dd)
        self.conv1 = nn.Conv2d(channels, learner_channels, 3, padding=first_dilation, dilation=first_dilation,
                               bias=False, **dd)
        self.bn1 = norm_layer(learner_channels, **dd)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(learner_channels, channels, 3, padding=dilation, dilation=dilation, bias=False, **dd)
        self.bn2 = norm_layer(channels, **dd)
        self.act2 = act_layer(inplace=True)
        self.drop_path = drop_path
        self.plain: Optional[nn.Sequential] = None  # the deployment form, set by reparameterize()

    def zero_init_last(self) -> None:
        """Zero the learner's last BN scale so that the block starts as its coder alone."""
        if getattr(getattr(self, 'bn2', None), 'weight', None) is not None:
            nn.init.zeros_(self.bn2.weight)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the block, in place, into ``plain = Sequential(conv1, act1, conv2, act2)`` (eval form).

        ``conv1 = [N_c E ; BN1 L1]`` and ``conv2 = [adj(E) | BN2 L2]``, both with bias, the 1x1 coder
        zero-padded to the learner's 3x3. Uses BatchNorm running statistics; DropBlock and DropPath,
        identities in eval, are dropped. timm's ``reparameterize_model`` calls this. Idempotent.

        Cost: both convs are 3x3 over ``C_c + C_l`` hidden channels, ``(C_c + C_l) / C`` times a
        residual block's multiply-adds (2x with the default C-wide coder, 1x with
        ``coder_ratio + learner_ratio = 1``), against ``C_l / C + C_c / (9 C)`` for the summed form:
        plain, but not cheaper, unless the coder and learner share the width.

        This exact fold is the deployed form (what timm's ``reparameterize_model`` and
        ``validate.py --reparam`` produce): it holds for every input. Narrower forms are opt-in:
        ``timm_pnnh.prune.prune_dead_channels`` removes hidden channels that carry nothing (exactly
        from the weights, or on calibration data at an accuracy cost to be measured).
        """
        if self.plain is not None:
            return
        enc_w, enc_b, dec_w = self.coder.folded()
        scale1, shift1 = bn_scale_shift(self.bn1)
        scale2, shift2 = bn_scale_shift(self.bn2)
        k = max(enc_w.shape[-1], 3)
        d1, d2 = (_check_dilation((enc_w.shape[-1], 3), (self.coder.dilation, conv.dilation[0]), type(self).__name__)
                  for conv in (self.conv1, self.conv2))
        w1 = torch.cat([pad_kernel(enc_w, k), pad_kernel(self.conv1.weight * scale1.reshape(-1, 1, 1, 1), k)], 0)
        w2 = torch.cat([pad_kernel(dec_w, k), pad_kernel(self.conv2.weight * scale2.reshape(-1, 1, 1, 1), k)], 1)
        self.plain = nn.Sequential(OrderedDict(
            conv1=_conv_with_bias(w1, torch.cat([enc_b, shift1]), d1), act1=self.act1,
            conv2=_conv_with_bias(w2, shift2, d2), act2=self.act2))
        for name in ('coder', 'conv1', 'bn1', 'drop_block', 'conv2', 'bn2', 'act1', 'act2'):
            delattr(self, name)
        self.drop_path = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None:
            return self.plain(x)
        if torch.jit.is_scripting():  # TorchScript cannot compile the coder operation
            kernel = self.coder.kernel()
            coded = self.coder.decode(self.act1(self.coder.encode(x, kernel)), kernel)
        else:
            coded = self.coder.code(x, self.act1)
        learned = self.conv1(x)
        learned = self.bn1(learned)
        learned = self.drop_block(learned)
        learned = self.act1(learned)
        learned = self.bn2(self.conv2(learned))
        if self.drop_path is not None:
            learned = self.drop_path(learned)
        learned += coded  # in place, as timm's BasicBlock adds its shortcut: one map less per block
        return self.act2(learned)


class PnnhBottleneck(nn.Module):
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
            coder_ratio: float = 1.0,
            learner_ratio: float = 1.0,
            coder_kernel: int = 1,
            coder_init: str = 'dirac',
            coder_norm: bool = False,
            coder_lr_scale: float = 0.1,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        check_pnnh_args(coder_ratio, learner_ratio, coder_kernel, coder_init, coder_norm, coder_lr_scale)
        channels = planes * self.expansion
        if stride != 1 or downsample is not None or inplanes != channels:
            raise ValueError(
                f'PnnhBottleneck is for stride-1, same-width blocks: got stride={stride}, '
                f'inplanes={inplanes}, planes*4={channels}, downsample={"set" if downsample is not None else None}')
        _no_attn(attn_layer, 'PnnhBottleneck')
        width = int(planes * (base_width / 64)) * cardinality
        width = coder_width(width, learner_ratio, 'learner_ratio')
        if width % cardinality:
            raise ValueError(f'learner_ratio={learner_ratio!r} gives a learner width {width} '
                             f'not divisible by cardinality={cardinality}')
        first_dilation = first_dilation or dilation

        self.coder = _Coder(channels, coder_width(channels, coder_ratio, 'coder_ratio'), coder_kernel,
                            first_dilation, coder_init, norm_layer if coder_norm else None, coder_lr_scale, **dd)
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
        self.drop_path = drop_path
        self.plain: Optional[nn.Sequential] = None  # the deployment form, set by reparameterize()

    def zero_init_last(self) -> None:
        """Zero the learner's last BN scale so that the block starts as its coder alone."""
        if getattr(getattr(self, 'bn3', None), 'weight', None) is not None:
            nn.init.zeros_(self.bn3.weight)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the block, in place, into ``plain = Sequential(conv1, act1, conv2, act2, conv3, act3)``.

        ``conv1 = [N_c E ; BN1 L1]``, ``conv2 = diag(I, BN2 L2)`` (a Dirac kernel on the coder channels,
        block-diagonal dense if ``cardinality > 1``), ``conv3 = [adj(E) | BN3 L3]``, all with bias, every
        kernel zero-padded to the largest of its conv. Eval form (BatchNorm running statistics).
        """
        if self.plain is not None:
            return
        enc_w, enc_b, dec_w = self.coder.folded()
        scale1, shift1 = bn_scale_shift(self.bn1)
        scale2, shift2 = bn_scale_shift(self.bn2)
        scale3, shift3 = bn_scale_shift(self.bn3)
        k = enc_w.shape[-1]
        name = type(self).__name__
        d1 = d3 = _check_dilation((k, 1), (self.coder.dilation, 1), name)
        d2 = self.conv2.dilation[0]
        coder_channels, width = enc_w.shape[0], self.conv2.out_channels
        w1 = torch.cat([enc_w, pad_kernel(self.conv1.weight * scale1.reshape(-1, 1, 1, 1), k)], 0)
        w2 = enc_w.new_zeros(coder_channels + width, coder_channels + width, 3, 3)
        nn.init.dirac_(w2[:coder_channels, :coder_channels])
        w2[coder_channels:, coder_channels:] = dense_weight(self.conv2.weight, self.conv2.groups) * scale2.reshape(-1, 1, 1, 1)
        w3 = torch.cat([dec_w, pad_kernel(self.conv3.weight * scale3.reshape(-1, 1, 1, 1), k)], 1)
        self.plain = nn.Sequential(OrderedDict(
            conv1=_conv_with_bias(w1, torch.cat([enc_b, shift1]), d1), act1=self.act1,
            conv2=_conv_with_bias(w2, torch.cat([shift2.new_zeros(coder_channels), shift2]), d2), act2=self.act2,
            conv3=_conv_with_bias(w3, shift3, d3), act3=self.act3))
        for attr in ('coder', 'conv1', 'bn1', 'conv2', 'bn2', 'drop_block', 'conv3', 'bn3', 'act1', 'act2', 'act3',
                     'coder_act2'):
            delattr(self, attr)
        self.drop_path = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.plain is not None:
            return self.plain(x)
        if torch.jit.is_scripting():  # TorchScript cannot compile the coder operation
            kernel = self.coder.kernel()
            coded = self.coder.decode(self.coder_act2(self.act1(self.coder.encode(x, kernel))), kernel)
        else:
            coded = self.coder.code(x, self.act1, self.coder_act2)
        learned = self.act1(self.bn1(self.conv1(x)))
        learned = self.bn2(self.conv2(learned))
        learned = self.drop_block(learned)
        learned = self.act2(learned)
        learned = self.bn3(self.conv3(learned))
        if self.drop_path is not None:
            learned = self.drop_path(learned)
        learned += coded
        return self.act3(learned)


class PlainBasicBlock(BasicBlock):
    """timm's ``BasicBlock`` with its shortcut removed: ``act(BN2(conv(act(BN1(conv(x))))))``.

    The plain baseline. A block that changes stride or width downsamples with its own strided first
    conv; the projection ``downsample`` ResNet offers is dropped. ``zero_init_last`` is a no-op
    (zeroing the last BN would zero the whole signal), and ``drop_path`` drops the block's output,
    which is what removing the add and nothing else leaves.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, **kwargs):
        super().__init__(inplanes, planes, stride, None, **kwargs)

    def zero_init_last(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act2(x)


class PlainBottleneck(Bottleneck):
    """timm's ``Bottleneck`` with its shortcut removed (see ``PlainBasicBlock``)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, **kwargs):
        super().__init__(inplanes, planes, stride, None, **kwargs)

    def zero_init_last(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        return self.act3(x)


class BlockSelector:
    """A ``block_fn`` for timm's ``ResNet`` that picks the block per position (paper, Figure 2).

    Stride-1, same-width blocks become ``pnnh_block``; the blocks that change stride or width keep
    ``transition_block`` (timm's residual block, or the plain one when the model is built with
    ``plain_transitions=True``). ResNet reads ``expansion`` and calls the selector like a class.
    """

    def __init__(self, pnnh_block, transition_block, **pnnh_kwargs):
        if pnnh_block.expansion != transition_block.expansion:
            raise ValueError('pnnh_block and transition_block must have the same expansion')
        self.expansion = pnnh_block.expansion
        self.pnnh_block = pnnh_block
        self.transition_block = transition_block
        self.pnnh_kwargs = pnnh_kwargs

    def __call__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, **kwargs):
        if stride == 1 and downsample is None and inplanes == planes * self.expansion:
            return self.pnnh_block(inplanes, planes, **kwargs, **self.pnnh_kwargs)
        return self.transition_block(inplanes, planes, stride, downsample, **kwargs)

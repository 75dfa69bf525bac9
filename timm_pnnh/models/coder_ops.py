"""The PNNH coder ``adj(E) relu(E x)`` as one autograd operation that keeps no code for backward.

Written with autograd, the coder ``conv_transpose2d(relu(conv2d(x, E)), E)`` saves its activated
code ``relu(E x)`` (a C_c-channel feature map per block) for the backward of ``relu`` and of the
transposed convolution. ``relu_coder`` saves only ``x`` and the weight: ``x`` is saved anyway by the
learner's first convolution, which reads the same tensor, so the coder adds no activation memory
and a PNNH block keeps what a residual block keeps. Backward recomputes ``z = conv2d(x, E)`` (one
more C -> C_c convolution) and takes the ReLU mask from it.

With ``g`` the ``coder_lr_scale`` gain (``E = g * weight``, see ``timm_pnnh.models.coders._Coder``) the
operation scales the weight inside, so the training graph holds no ``weight * g`` node; and since
``E`` appears twice::

    d loss / d E = dW[conv2d](x, dz)  +  dW[conv2d](dy, relu(z))     (encoder + decoder term)
    dz = relu'(z) * conv2d(dy, E),   d loss / d x = conv_transpose2d(dz, E),   d / d weight = g * d / d E

where ``dy`` is the gradient of the coder's output. Only the ReLU coder without a coder norm takes
this path (``recompute_applies``): with a BatchNorm on the code, recomputing would need the norm's
batch statistics again and save as much as it spares, and other activations would need their own
derivative; those coders keep the plain autograd form.
"""
import math
import os
from contextlib import nullcontext
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

from timm_pnnh.cpu import cpuinfo
from timm_pnnh.errors import UsageError

__all__ = ['relu_coder', 'recompute_applies', 'conv', 'conv_add_']


def recompute_applies(norm: nn.Module, *acts: nn.Module) -> bool:
    """True when the coder is ``adj(E) relu(E x)``: no coder norm, ReLU, and any further act an identity."""
    return (isinstance(norm, nn.Identity) and isinstance(acts[0], nn.ReLU)
            and all(isinstance(a, (nn.Identity, nn.ReLU)) for a in acts[1:]))


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: torch.Tensor, padding: int, dilation: int):
    """Gradient of ``conv2d(x, kernel)`` w.r.t. ``kernel`` for the output gradient ``grad_out``."""
    return torch.ops.aten.convolution_backward(grad_out, x, kernel, None, [1, 1], [padding] * 2, [dilation] * 2,
                                               False, [0, 0], 1, [False, True, False])[1]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """An (N, C, H, W) tensor as an (N*H*W, C) matrix: a view when ``t`` is channels_last."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``_rows``: (N*H*W, C) back to (N, C, H, W), channels_last."""
    n, _, h, w = like.shape
    return rows.reshape(n, h, w, -1).permute(0, 3, 1, 2)


# A 1x1 coder on a channels_last input runs as matrix products over the pixels (True), or as oneDNN's 1x1
# convolutions (False); equal in value and gradient. Which is faster depends on the CPU (docs/speed.md):
# torch's CPU matrix products are MKL's, whose thin products (16-64 columns) were the faster form on an
# Intel Xeon, and 1.7x to 1.9x slower than oneDNN's 1x1 convolutions on an AMD EPYC with AVX-512 (MKL
# is tuned for Intel's CPUs). None, the default, picks by that: matrix products on an Intel CPU with MKL
# and on other devices (not measured), convolutions on other CPUs. To force one, set the environment
# variable TIMM_PNNH_MATMUL_1X1 to 1 or 0 (also for timm's scripts), or this to True or False before
# training or deploying (this wins over the variable).
MATMUL_ENV = 'TIMM_PNNH_MATMUL_1X1'
MATMUL_1X1: Optional[bool] = None


def _matmul_1x1_from_env() -> Optional[bool]:
    """TIMM_PNNH_MATMUL_1X1 as True (1), False (0) or None (unset); a UsageError naming any other value."""
    value = os.environ.get(MATMUL_ENV, '')
    if value not in ('', '0', '1'):
        raise UsageError(f'{MATMUL_ENV}={value!r} is not allowed: it must be 1 (matrix products), 0 (convolutions) '
                         f'or unset (chosen by the CPU)')
    return None if value == '' else value == '1'


# the variable, read on first use (not at import, so that a bad value is one error where it matters: at
# the first channels_last coder, or at the start of any timm-pnnh command), then kept
_UNREAD = 'unread'
_matmul_1x1_env: Union[Optional[bool], str] = _UNREAD


def matmul_1x1_env() -> Optional[bool]:
    """TIMM_PNNH_MATMUL_1X1, read and checked once (``_matmul_1x1_from_env``)."""
    global _matmul_1x1_env
    if _matmul_1x1_env is _UNREAD:
        _matmul_1x1_env = _matmul_1x1_from_env()
    return _matmul_1x1_env


def _mkl_on_intel() -> bool:
    """True when torch's CPU matrix products are MKL's and the CPU is Intel's (``/proc/cpuinfo``)."""
    return (cpuinfo() or {}).get('vendor_id') == 'GenuineIntel' and torch.backends.mkl.is_available()


MKL_ON_INTEL = _mkl_on_intel()  # read once: the choice must not cost a file read per call, nor a graph break


def matmul_1x1_on(device_type: str) -> bool:
    """Whether a 1x1 coder on channels_last input runs as matrix products on this kind of device
    (``MATMUL_1X1``, else TIMM_PNNH_MATMUL_1X1; when neither is set: not on a CPU, or on an Intel CPU with MKL)."""
    if MATMUL_1X1 is not None:
        return MATMUL_1X1
    from_env = matmul_1x1_env()
    if from_env is not None:
        return from_env
    return device_type != 'cpu' or MKL_ON_INTEL


def _as_rows(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when a conv of ``weight`` over ``x`` runs as a matrix product over the pixels: a 1x1 kernel,
    a channels_last input, and ``matmul_1x1_on`` its device."""
    return (weight.shape[-1] == 1 and weight.shape[-2] == 1 and x.is_contiguous(memory_format=torch.channels_last)
            and matmul_1x1_on(x.device.type))


def _sum_of_products(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, batch: int) -> torch.Tensor:
    """``a.t() @ b + c.t() @ d`` for (pixels, channels) matrices: a weight gradient, a reduction over every
    pixel of the batch. Computed in up to 16 slices of the batch (one batched product, then a sum in fp32,
    or fp64 for fp64 maps):
    one C x C product over all the pixels runs on one thread, and in bf16 at about half the fp32 speed."""
    slices = math.gcd(batch, 16)
    a, b, c, d = (t.reshape(slices, -1, t.shape[-1]) for t in (a, b, c, d))
    slice_sums = torch.baddbmm(torch.bmm(a.transpose(1, 2), b), c.transpose(1, 2), d)
    return slice_sums.sum(0, dtype=torch.promote_types(slice_sums.dtype, torch.float32))


class _ReluCoder(torch.autograd.Function):
    """A 1x1 coder on a channels_last input runs as matrix products over the pixels where ``_as_rows``
    says so (the same arithmetic as a 1x1 convolution, in the BLAS instead of oneDNN); anything else as
    convolutions."""

    @staticmethod
    def forward(ctx, x, weight, gain: float, padding: int, dilation: int):
        ctx.gain, ctx.padding, ctx.dilation = gain, padding, dilation
        ctx.rows = _as_rows(x, weight)
        device = x.device.type  # autocast state to restore in backward (none on devices without autocast, e.g. meta)
        amp = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        ctx.autocast = (device, torch.get_autocast_dtype(device)) if amp else None
        ctx.save_for_backward(x, weight)
        kernel = weight * gain if gain != 1.0 else weight
        if ctx.rows:
            matrix = kernel.flatten(1)
            return _image((_rows(x) @ matrix.t()).relu_() @ matrix, x)
        code = F.conv2d(x, kernel, None, 1, padding, dilation).relu_()
        return F.conv_transpose2d(code, kernel, None, 1, padding, 0, 1, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gain, p, d = ctx.gain, ctx.padding, ctx.dilation
        need_x, need_weight = ctx.needs_input_grad[:2]
        grad_x = grad_weight = None
        with torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]) if ctx.autocast else nullcontext():  # forward's precision
            kernel = weight * gain if gain != 1.0 else weight
            if ctx.rows:
                matrix, x_rows, grad_rows = kernel.flatten(1), _rows(x), _rows(grad_out)
                code = (x_rows @ matrix.t()).relu_()  # recomputed, not saved
                grad_z = torch.ops.aten.threshold_backward(grad_rows @ matrix.t(), code, 0)
                if need_x:
                    grad_x = _image(grad_z @ matrix, x)
                if need_weight:  # decoder term + encoder term
                    grad_weight = _sum_of_products(code, grad_rows.to(code.dtype), grad_z, x_rows.to(code.dtype), len(x))
            else:
                code = F.conv2d(x, kernel, None, 1, p, d).relu_()  # recomputed, not saved
                grad_code = F.conv2d(grad_out, kernel, None, 1, p, d)  # the decoder's adjoint
                grad_z = torch.ops.aten.threshold_backward(grad_code, code, 0)
                if need_x:
                    grad_x = F.conv_transpose2d(grad_z, kernel, None, 1, p, 0, 1, d)
                if need_weight:
                    grad_z, x_, grad_out_, code, kernel = (t.to(grad_code.dtype) for t in (grad_z, x, grad_out, code, kernel))
                    grad_weight = _weight_grad(x_, grad_z, kernel, p, d).add_(_weight_grad(grad_out_, code, kernel, p, d))
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.reshape(weight.shape).mul_(gain).to(weight.dtype)
        return grad_x, grad_weight, None, None, None


@register_notrace_function  # one leaf call in timm's feature-extraction trace
@torch.jit.ignore  # a traced graph that calls it still scripts; TorchScript runs it as Python
@torch.fx.wrap  # and in torch.fx.symbolic_trace, when called as ``coder_ops.relu_coder``
def relu_coder(x: torch.Tensor, weight: torch.Tensor, gain: float = 1.0, padding: int = 0,
               dilation: int = 1) -> torch.Tensor:
    """``conv_transpose2d(relu(conv2d(x, E)), E)`` with ``E = gain * weight``, stride 1, 'same' padding.

    Equal to the autograd form in value and gradient; saves only ``x`` and ``weight`` for backward.
    """
    return _ReluCoder.apply(x, weight, float(gain), padding, dilation)


@register_notrace_function
@torch.jit.ignore
@torch.fx.wrap
def conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, padding: int = 0,
         dilation: int = 1) -> torch.Tensor:
    """``conv2d(x, weight, bias)``, stride 1; a 1x1 conv on a channels_last input as one matrix product
    where ``_as_rows`` says so (channels_last output). The deployed side-by-side coder's encoder."""
    if _as_rows(x, weight):
        matrix = weight.flatten(1).t()
        rows = _rows(x) @ matrix if bias is None else torch.addmm(bias, _rows(x), matrix)
        return _image(rows, x)
    return F.conv2d(x, weight, bias, 1, padding, dilation)


@register_notrace_function
@torch.jit.ignore
@torch.fx.wrap
def conv_add_(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding: int = 0,
              dilation: int = 1) -> torch.Tensor:
    """``out + conv2d(x, weight)``, stride 1, written into ``out``; a 1x1 conv on channels_last tensors,
    where ``_as_rows`` says so, as one ``addmm_`` over the pixels (no separate map for the conv's output).
    The deployed side-by-side coder's decoder, added to the learner's output."""
    if _as_rows(x, weight) and out.is_contiguous(memory_format=torch.channels_last) and x.dtype == out.dtype:
        # an in-place op is not autocast: under autocast the weight is cast to the maps' dtype here
        _rows(out).addmm_(_rows(x), weight.flatten(1).t().to(out.dtype))
        return out
    return out.add_(F.conv2d(x, weight, None, 1, padding, dilation))

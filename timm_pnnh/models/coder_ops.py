"""The PNNH coder ``adj(E) relu(E x)`` as one autograd operation that keeps no code for backward.

Written with autograd, the coder ``conv_transpose2d(relu(conv2d(x, E)), E)`` saves its activated
code ``relu(E x)`` (a C_c-channel feature map per block) for the backward of ``relu`` and of the
transposed convolution. ``relu_coder`` saves only ``x`` and the weight: ``x`` is saved anyway by the
learner's first convolution, which reads the same tensor, so the coder adds no activation memory
and a PNNH block keeps what a residual block keeps. Backward recomputes ``z = conv2d(x, E)`` (one
more C -> C_c convolution) and takes the ReLU mask from it.

With ``g`` the ``coder_lr_scale`` gain (``E = g * weight``, see ``timm_pnnh.blocks._Coder``) the
operation scales the weight inside, so the training graph holds no ``weight * g`` node; and since
``E`` appears twice::

    d loss / d E = dW[conv2d](x, dz)  +  dW[conv2d](dy, relu(z))     (encoder + decoder term)
    dz = relu'(z) * conv2d(dy, E),   d loss / d x = conv_transpose2d(dz, E),   d / d weight = g * d / d E

where ``dy`` is the gradient of the coder's output. Only the ReLU coder without a coder norm takes
this path (``recompute_applies``): with a BatchNorm on the code, recomputing would need the norm's
batch statistics again and save as much as it spares, and other activations would need their own
derivative; those coders keep the plain autograd form.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_notrace_function

__all__ = ['relu_coder', 'recompute_applies']


def recompute_applies(norm: nn.Module, *acts: nn.Module) -> bool:
    """True when the coder is ``adj(E) relu(E x)``: no coder norm, ReLU, and any further act an identity."""
    return (isinstance(norm, nn.Identity) and isinstance(acts[0], nn.ReLU)
            and all(isinstance(a, (nn.Identity, nn.ReLU)) for a in acts[1:]))


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: torch.Tensor, padding: int, dilation: int):
    """Gradient of ``conv2d(x, kernel)`` w.r.t. ``kernel`` for the output gradient ``grad_out``."""
    return torch.ops.aten.convolution_backward(grad_out, x, kernel, None, [1, 1], [padding] * 2, [dilation] * 2,
                                               False, [0, 0], 1, [False, True, False])[1]


class _ReluCoder(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, gain: float, padding: int, dilation: int):
        kernel = weight * gain if gain != 1.0 else weight
        code = F.conv2d(x, kernel, None, 1, padding, dilation).relu_()
        ctx.save_for_backward(x, weight)
        ctx.gain, ctx.padding, ctx.dilation = gain, padding, dilation
        ctx.autocast = x.device.type, torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type)
        return F.conv_transpose2d(code, kernel, None, 1, padding, 0, 1, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gain, padding, dilation = ctx.gain, ctx.padding, ctx.dilation
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype, enabled):  # the forward's precision
            kernel = weight * gain if gain != 1.0 else weight
            code = F.conv2d(x, kernel, None, 1, padding, dilation).relu_()  # recomputed, not saved
            grad_code = F.conv2d(grad_out, kernel, None, 1, padding, dilation)  # adjoint of the decoder
        grad_z = torch.ops.aten.threshold_backward(grad_code, code, 0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            with torch.autocast(device_type, dtype, enabled):
                grad_x = F.conv_transpose2d(grad_z, kernel, None, 1, padding, 0, 1, dilation).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_z, x_, grad_out_, code, kernel = (t.to(grad_code.dtype) for t in (grad_z, x, grad_out, code, kernel))
            encoder = _weight_grad(x_, grad_z, kernel, padding, dilation)
            decoder = _weight_grad(grad_out_, code, kernel, padding, dilation)
            grad_weight = encoder.add_(decoder).mul_(gain).to(weight.dtype)
        return grad_x, grad_weight, None, None, None


@register_notrace_function  # one leaf call in timm's feature-extraction trace
@torch.fx.wrap  # and in torch.fx.symbolic_trace, when called as ``coder_ops.relu_coder``
def relu_coder(x: torch.Tensor, weight: torch.Tensor, gain: float = 1.0, padding: int = 0,
               dilation: int = 1) -> torch.Tensor:
    """``conv_transpose2d(relu(conv2d(x, E)), E)`` with ``E = gain * weight``, stride 1, 'same' padding.

    Equal to the autograd form in value and gradient; saves only ``x`` and ``weight`` for backward.
    """
    return _ReluCoder.apply(x, weight, float(gain), padding, dilation)

"""The coder layers: a weight-sharing encoder ``E`` and its adjoint decoder around a non-linearity, beside
a block's learner (paper: the "internal path across the non-linearity"). One Parameter serves both
directions, so the decoder costs no parameters.

* ``_Coder`` -- the convolutional coder of the PNNH ResNet blocks (``pnnh_resnet``); ``CoderBesideLearner``
  is the folded (deployed) ResNet block, learner and coder side by side.
* ``LinearCoder`` -- the token-wise coder of the PNNH Transformer blocks (``pnnh_vit``).

The fused kernels both families run on are ``coder_ops``.
"""
import math
from typing import Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint
from timm.models.resnet import get_padding

from timm_pnnh.models import coder_ops
from timm_pnnh.models._factory import signed_dirac_
from timm_pnnh.reparam import adjoint_conv_weight, bn_scale_shift

__all__ = ['CoderBesideLearner', 'LinearCoder']


def _relink(coder: '_Coder', incompatible_keys) -> None:
    """Post-load hook of a sharing coder (a function, so that the model pickles)."""
    coder._link()


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
    encoder and decoder share. ``owner``: the coder whose Parameter this one uses instead of a new one
    (``coder_sharing='stage'``: the blocks of a stage use the first block's). Only the owner registers it,
    so it is one entry of the state dict, counted and saved once, safetensors included. Invariant: a
    shared coder's ``weight`` is its owner's Parameter object, and its forward reads the owner's (so torch.export
    and torch.fx see the one registered tensor; TorchScript, which cannot see the owner, reads the alias). Whatever replaces the owner's Parameter
    re-links the sharers: ``load_state_dict(assign=True)`` (a post-load hook), ``to_empty`` / ``to`` /
    ``half`` (``_apply``, which visits the owner first: it is an earlier block); ``deepcopy`` copies
    the one object once.

    ``code(x, act)`` is the coder's output. A ReLU coder without norm runs as one operation that
    recomputes its code in backward instead of saving it (``coder_ops.relu_coder``, ``recompute``
    True); any other coder, or ``recompute = False``, runs as autograd's encode -> act -> decode.
    """
    recompute = True

    def __init__(self, channels: int, coder_channels: int, kernel_size: int, dilation: int, init: str,
                 norm_layer: Optional[Type[nn.Module]], lr_scale: float = 1.0, owner: Optional['_Coder'] = None,
                 device=None, dtype=None):
        super().__init__()
        self.padding = get_padding(kernel_size, 1, dilation)
        self.dilation = dilation
        self.gain = float(lr_scale) ** 0.5
        shape = (coder_channels, channels, kernel_size, kernel_size)
        if owner is not None and tuple(owner.weight.shape) != shape:
            raise ValueError(f'coder weight of shape {tuple(owner.weight.shape)} is not allowed here: it must be {shape}')
        object.__setattr__(self, 'owner', owner)  # not a submodule: the owner is saved where it is registered
        if owner is None:
            self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        else:
            self._link()
            self.register_load_state_dict_post_hook(_relink)
        self.norm = norm_layer(coder_channels, device=device, dtype=dtype) if norm_layer is not None else nn.Identity()
        self.init = init
        if owner is None:
            self.reset_parameters()

    def _link(self) -> None:
        """Use the owner's Parameter (unregistered here)."""
        object.__setattr__(self, 'weight', self.owner.weight)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        if self.owner is not None:
            self._link()
        return module

    def reset_parameters(self) -> None:
        if self.owner is not None:  # the owner initialises the shared Parameter
            return
        if self.init == 'dirac':
            signed_dirac_(self.weight.data)
        elif self.init == 'orthogonal':
            nn.init.orthogonal_(self.weight)
        else:  # 'kaiming', scaled so that adj(E) relu(E x) keeps the input's magnitude in expectation
            nn.init.kaiming_normal_(self.weight, mode='fan_out', nonlinearity='relu')
            self.weight.data.mul_(0.5 ** 0.5)
        self.weight.data.div_(self.gain)

    @torch.jit.unused
    def _registered_weight(self) -> torch.Tensor:
        """The Parameter, read at forward time where it is registered (the owner's, when sharing), so that
        torch.export sees the one registered tensor, not an alias."""
        return self.weight if self.owner is None else self.owner.weight

    def _weight(self) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript cannot see the owner (not a submodule): the alias
            return self.weight
        return self._registered_weight()

    def kernel(self) -> torch.Tensor:
        """The coder weight ``E``."""
        weight = self._weight()
        return weight if self.gain == 1.0 else weight * self.gain

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
            return coder_ops.relu_coder(x, self._weight(), self.gain, self.padding, self.dilation)
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


def _conv_with_bias(weight: torch.Tensor, bias: Optional[torch.Tensor], dilation: int) -> nn.Conv2d:
    """A stride-1 'same' ``nn.Conv2d`` holding ``weight`` and ``bias`` (none if ``bias`` is None)."""
    k = weight.shape[-1]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], k, padding=dilation * (k - 1) // 2, dilation=dilation,
                     bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


class CoderBesideLearner(nn.Module):
    """A PNNH block deployed with ``deploy_form='side_by_side'``: ``act(learner(x) + decoder(coder_act(encoder(x))))``.

    ``learner`` is the block's learner in eval form, its BatchNorms folded into its convs (with bias), up
    to its last conv; ``encoder`` is ``N_c E`` (a conv with bias), ``decoder`` is ``adj(E)`` (a conv
    without bias), ``coder_act`` the act(s) the coder crosses and ``act`` the block's last act. No term
    is the input: the block stays plain; it is two branches of convolutions summed before the last act.
    The coder runs through ``coder_ops.conv`` / ``conv_add_``, the decoder's output added into the
    learner's in place; a 1x1 coder on a channels_last input runs as matrix products over the pixels
    where that is the faster form (``coder_ops.MATMUL_1X1``: on Intel CPUs), else as 1x1 convolutions.

    Cost: the learner's multiply-adds plus ``2 k*k C_c C`` per position, the summed training form's
    (eval) arithmetic, against ``(C_c + C_l) / C`` times a residual block's for ``deploy_form='merged'``.
    """

    def __init__(self, learner: nn.Sequential, encoder: nn.Conv2d, coder_act: nn.Module, decoder: nn.Conv2d,
                 act: nn.Module):
        super().__init__()
        self.learner = learner
        self.encoder = encoder
        self.coder_act = coder_act
        self.decoder = decoder
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.coder_act(coder_ops.conv(x, self.encoder.weight, self.encoder.bias, self.encoder.padding[0],
                                             self.encoder.dilation[0]))
        out = coder_ops.conv_add_(self.learner(x), code, self.decoder.weight, self.decoder.padding[0],
                                  self.decoder.dilation[0])
        return self.act(out)


class LinearCoder(nn.Module):
    """The weight-sharing linear coder of a PNNH Transformer block: ``E^T act(E x)``.

    One Parameter ``weight`` = ``E`` of shape (C_c, C). The encoder is ``F.linear(x, E)``, the decoder
    ``F.linear(h, E.t())`` -- the *same* storage, transposed, so the decoder costs no parameters.

    Inits (``init``):

    * ``'dirac'``: the signed identity ``E = [I ; -I]`` (rows ``e_i`` then ``-e_i``), cut to C_c rows.
      Tokens are signed, and for any ``act`` with ``act(u) - act(-u) = u`` (ReLU, GELU, SiLU)
      ``E^T act(E x) = act(x) - act(-x) = x`` exactly when C_c = 2C. With C_c = C it is ``act(x)``:
      ReLU drops the negative half of every token, GELU bends it.
    * ``'orthogonal'``: orthonormal columns (C_c >= C) or rows (C_c < C) from ``nn.init.orthogonal_``,
      scaled by ``sqrt(2)`` or ``sqrt(2 C / C_c)``;
    * ``'kaiming'``: i.i.d. normal entries of variance ``2 / C_c``.

    Both random inits are scaled so that ``E^T act(E x)`` is ``x`` in expectation over E for ReLU and
    GELU (``E[e act(e.x)] = var * x * E[act'] = var * x / 2`` per row, Stein's lemma).

    In training (``recompute`` True) the code is recomputed in backward instead of saved
    (``torch.utils.checkpoint``): the coder keeps only its input, which the block's LayerNorm or MLP
    keeps anyway, so a PNNH block saves what timm's residual ``Block`` saves, for one more
    ``E x`` and ``act`` in backward. Not under ``torch.compile`` (the compiler chooses what to recompute),
    TorchScript or an fx trace.
    """
    recompute = True

    def __init__(self, dim: int, coder_dim: int, init: str = 'dirac', act_layer: Type[nn.Module] = nn.GELU,
                 device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(coder_dim, dim, device=device, dtype=dtype))
        self.act = act_layer()
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        coder_dim, dim = self.weight.shape
        with torch.no_grad():
            if self.init == 'dirac':
                signed_dirac_(self.weight)
            elif self.init == 'orthogonal':
                nn.init.orthogonal_(self.weight)
                self.weight.mul_(math.sqrt(2.0 * dim / coder_dim) if coder_dim < dim else math.sqrt(2.0))
            else:
                nn.init.normal_(self.weight, std=math.sqrt(2.0 / coder_dim))

    def init_weights(self) -> None:
        """Called by timm's ViT weight init (which would otherwise leave a non-Linear module alone)."""
        self.reset_parameters()

    @property
    def decoder_weight(self) -> torch.Tensor:
        """The decoder's weight: ``E`` transposed, a view of the encoder's storage."""
        return self.weight.t()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight.t())

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """``E^T act(E x)``."""
        return self.decode(self.act(self.encode(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript drops this branch
            if self.recompute and self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling() \
                    and not is_fx_symbolic_tracing():
                return checkpoint(self.code, x, use_reentrant=False)
        return self.code(x)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[1]} -> {self.weight.shape[0]} -> {self.weight.shape[1]}, init={self.init}'


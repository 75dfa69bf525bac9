"""The blocks without a coder, on timm's ``BasicBlock`` / ``Bottleneck``: the residual ones (timm's, unchanged)
and the plain ones (timm's with the shortcut removed). All of them fold their BatchNorms in ``reparameterize()``
so that timm's ``reparameterize_model`` folds every block of a PNNH, plain or residual net."""
from typing import Optional

import torch
import torch.nn as nn
from timm.models.resnet import BasicBlock, Bottleneck

from timm_pnnh.reparam import fold_block_batchnorms

__all__ = ['ResidualBasicBlock', 'ResidualBottleneck', 'PlainBasicBlock', 'PlainBottleneck', 'TRANSITIONS']


class _FoldBatchNorms:
    """``reparameterize()`` for a timm ``BasicBlock`` / ``Bottleneck`` (or subclass): its BatchNorms fold
    into the convolutions before them, the downsample projection's too (``fold_block_batchnorms``), so
    that timm's ``reparameterize_model`` folds the blocks that are not PNNH blocks as well."""

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold ``bnN`` into ``convN`` and the downsample projection's BatchNorm into its conv, in place
        (eval form: running statistics). The shortcut, if any, stays. Idempotent."""
        fold_block_batchnorms(self)


class ResidualBasicBlock(_FoldBatchNorms, BasicBlock):
    """timm's ``BasicBlock``, unchanged (same arguments, state dict and forward), that folds its
    BatchNorms in ``reparameterize()``: the transition blocks of the PNNH nets and the blocks of the
    ``cifar_resnet*`` baselines."""


class ResidualBottleneck(_FoldBatchNorms, Bottleneck):
    """timm's ``Bottleneck``, unchanged, that folds its BatchNorms in ``reparameterize()`` (see
    ``ResidualBasicBlock``)."""


class _NoShortcut(_FoldBatchNorms):
    """What the plain blocks change in timm's blocks besides ``forward``: no ``downsample`` projection
    (the strided first conv downsamples) and no zero-init of the last BatchNorm (it would zero the
    signal, with no shortcut to carry it)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, **kwargs):
        super().__init__(inplanes, planes, stride, None, **kwargs)

    def zero_init_last(self) -> None:
        pass


class PlainBasicBlock(_NoShortcut, BasicBlock):
    """timm's ``BasicBlock`` with its shortcut removed: ``act(BN2(conv(act(BN1(conv(x))))))``.

    The plain baseline. A block that changes stride or width downsamples with its own strided first
    conv; the projection ``downsample`` ResNet offers is dropped. ``zero_init_last`` is a no-op
    (zeroing the last BN would zero the whole signal), and ``drop_path`` drops the block's output,
    which is what removing the add and nothing else leaves.
    """

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


class PlainBottleneck(_NoShortcut, Bottleneck):
    """timm's ``Bottleneck`` with its shortcut removed (see ``PlainBasicBlock``)."""

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


# the transition blocks of a PNNH block (by expansion): residual, and plain with plain_transitions=True
TRANSITIONS = {1: (ResidualBasicBlock, PlainBasicBlock), 4: (ResidualBottleneck, PlainBottleneck)}

"""timm-pnnh: Plain Neural Net Hypothesis (PNNH) models for timm.

Importing the package registers the ``pnnh_*`` models and their plain and residual baselines with
timm's ``register_model``, so that ``timm.create_model('pnnh_resnet34')`` works.
"""
from timm_pnnh import models  # noqa: F401
from timm_pnnh.models.pnnh_resnet import PnnhBasicBlock, PnnhBottleneck  # noqa: F401
from timm_pnnh.models.resnet_blocks import PlainBasicBlock, PlainBottleneck  # noqa: F401

__version__ = '0.1.0'

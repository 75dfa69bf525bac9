"""Model families; importing this package registers every model with timm."""
from typing import List

import timm

from timm_pnnh.models import cifar_resnet, pnnh_resnet  # noqa: F401  (register the ResNet families)
from timm_pnnh.models import pnnh_vit  # noqa: F401  (registers the ViT families)
from timm_pnnh.models import sasp_vit  # noqa: F401  (registers the SAS-P ViT baseline)

FAMILY_MODULES = ('pnnh_resnet', 'cifar_resnet', 'pnnh_vit', 'sasp_vit')
VIT_MODULES = ('pnnh_vit', 'sasp_vit')  # those of FAMILY_MODULES that register ViTs (``arch_of``)


def registered_models(pattern: str = '') -> List[str]:
    """Every model name this package registers (optionally filtered by a timm wildcard pattern)."""
    names = []
    for module in FAMILY_MODULES:
        names += timm.list_models(pattern or '', module=module)
    return names


def family_of(name: str) -> str:
    """'pnnh', 'plain', 'sasp' (the skipless SAS-P ViTs) or 'residual' (the ``cifar_*`` baselines) for a
    registered model name (``name.tag`` allowed). The one place a family is read from a name: every
    registered name starts with its family's prefix (``cifar_`` for the residual baselines)."""
    return {'pnnh': 'pnnh', 'plain': 'plain', 'sasp': 'sasp'}.get(name.split('_', 1)[0], 'residual')


def arch_of(name: str) -> str:
    """'vit' or 'resnet': the architecture of a registered model name (``name.tag`` allowed), from the
    module that registered it."""
    model = name.split('.', 1)[0]
    return 'vit' if any(model in timm.list_models(module=m) for m in VIT_MODULES) else 'resnet'


def model_names(family: str, pattern: str = '') -> List[str]:
    """The registered names of one family ('pnnh', 'plain', 'sasp' or 'residual')."""
    return [name for name in registered_models(pattern) if family_of(name) == family]

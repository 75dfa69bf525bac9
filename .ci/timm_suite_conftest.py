"""conftest for running timm's own tests/test_models.py against the timm-pnnh models.

Appended to timm's tests/conftest.py by .ci/timm_suite. Importing timm_pnnh registers our models
before timm's test module builds its parameter lists. timm classifies its models for those lists by
name pattern and by registering module, and our models extend timm's classes under other names:
* the forward_intermediates tests select timm's modules 'resnet' and 'vision_transformer'; ours
  are 'pnnh_resnet', 'cifar_resnet' and 'pnnh_vit', so a module filter naming timm's module also names ours;
* timm's ViTs ('vit_*') are "non-standard" (no spatial feature maps); so are ours ('*_vit_*').
"""
import os

import timm
import timm.models._registry as registry
import torch

import timm_pnnh  # noqa: F401  (registers the models)

# .ci/timm_suite runs one pytest-xdist worker per core; each keeps to one torch thread, so that the workers
# share the cores instead of each running a thread on every core.
if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)

MODULES = {'resnet': ['pnnh_resnet', 'cifar_resnet'], 'vision_transformer': ['pnnh_vit']}
PATTERNS = {'vit_*': ['pnnh_vit_*', 'plain_vit_*', 'cifar_vit_*', 'sasp_vit_*']}
_list_models = registry.list_models


def _extend(values, extra):
    if isinstance(values, (list, tuple)):
        return list(values) + [ours for theirs, names in extra.items() if theirs in values for ours in names]
    return values


def list_models(filter='', module='', *args, exclude_filters='', **kwargs):
    return _list_models(_extend(filter, PATTERNS), _extend(module, MODULES), *args,
                        exclude_filters=_extend(exclude_filters, PATTERNS), **kwargs)


timm.list_models = registry.list_models = list_models

# timm defines test_model_load_pretrained / test_model_features_pretrained outside GitHub Actions; for our
# converted tags they download timm's residual weights from the Hugging Face Hub. tests/test_convert.py
# checks the same loads against a local Hub server; run these too where the Hub is reachable.
HUB_TESTS = ('test_model_load_pretrained', 'test_model_features_pretrained')


def pytest_collection_modifyitems(config, items):
    import pytest
    if os.environ.get('TIMM_PNNH_HUB_TESTS') == '1':
        return
    skip = pytest.mark.skip(reason='downloads timm weights from the Hugging Face Hub; set TIMM_PNNH_HUB_TESTS=1 '
                                   'where it is reachable')
    for item in items:
        if item.originalname in HUB_TESTS:
            item.add_marker(skip)

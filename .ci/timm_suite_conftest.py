"""conftest for running timm's own tests/test_models.py against the timm-pnnh models.

Copied next to timm's test_models.py by .ci/run. Importing timm_pnnh registers our models before
timm's test module builds its parameter lists. timm selects the models for its
forward_intermediates tests by the *module* that registers them ('resnet', 'vision_transformer');
ours live in 'pnnh_resnet' and 'pnnh_vit', so a module filter that names timm's module also
selects ours.
"""
import timm
import timm.models._registry as registry

import timm_pnnh  # noqa: F401  (registers the models)

EXTENDS = {'resnet': 'pnnh_resnet', 'vision_transformer': 'pnnh_vit'}
_list_models = registry.list_models


def list_models(*args, module='', **kwargs):
    if isinstance(module, (list, tuple)):
        module = list(module) + [ours for theirs, ours in EXTENDS.items() if theirs in module]
    return _list_models(*args, module=module, **kwargs)


timm.list_models = registry.list_models = list_models

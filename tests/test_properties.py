"""Property tests (hypothesis): random knob combinations and input sizes for every PNNH ResNet and ViT
family. For each draw: the model builds, or raises the ValueError its knob check documents; a built
model folds (timm's ``reparameterize_model``) to the eval form within the fold tolerance, reloads bit-exact
through safetensors, and trains a step under bf16 autocast with finite outputs and gradients.

The knobs and their values come from the module-level tables (``PNNH_KNOBS``, ``CODER_KERNELS``,
``CODER_INITS``, ``PNNH_VIT_KNOBS``, ``CODER_ACTS``, ``ARRANGEMENTS``), plus out-of-range values.
A bounded number of examples with a fixed seed (``derandomize``) keeps the run short and repeatable.
"""

import pytest
import timm
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save
from timm.utils import reparameterize_model

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.models import pnnh_resnet, pnnh_vit
from conftest import randomise

PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FOLD_TOLERANCE = 1e-4  # test_reparam.py and test_vit_reparam.py: deployed vs eval logits, relative to their scale

# (name, constructor kwargs that make it CPU-sized, input sizes to draw from)
RESNETS = [
    ('pnnh_resnet20', {}, (8, 16, 32)),  # CIFAR basic blocks
    ('pnnh_resnet18', {}, (32, 48)),  # ImageNet basic blocks
    ('pnnh_resnet50', dict(output_stride=16), (32,)),  # bottlenecks, dilated last stage
]
VITS = [
    ('pnnh_vit_tiny_patch4_32', dict(embed_dim=16, num_heads=2, depth=2), (8, 16, 32)),
    ('pnnh_vit_tiny_patch16_224', dict(embed_dim=16, num_heads=2, depth=2), (32, 48)),
]


def ratio(low, high):
    """Valid ratios (simple fractions in (low, high]) and a few outside the range."""
    valid = [r for r in (0.125, 0.25, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0) if low < r <= high]
    return st.sampled_from(valid + [low, -0.5, high + 0.5])


def resnet_knobs():
    # every knob of PNNH_KNOBS gets a strategy (a new knob fails here until it gets one)
    knobs = dict(
        coder_ratio=ratio(0.0, pnnh_resnet.MAX_CODER_RATIO),
        learner_ratio=ratio(0.0, 4.0),
        coder_kernel=st.sampled_from(pnnh_resnet.CODER_KERNELS + (2,)),
        coder_init=st.sampled_from(pnnh_resnet.CODER_INITS + ('zeros',)),
        coder_norm=st.booleans(),
        coder_lr_scale=st.sampled_from([0.01, 0.1, 0.5, 1.0, 0.0, 1.5]),
        coder_sharing=st.sampled_from(pnnh_resnet.CODER_SHARING + ('layer',)),
        deploy_form=st.sampled_from(pnnh_resnet.DEPLOY_FORMS + ('fused',)),
    )
    assert set(knobs) == set(pnnh_resnet.PNNH_KNOBS)
    return st.fixed_dictionaries({}, optional=knobs)


def vit_knobs():
    knobs = dict(
        coder_ratio=ratio(0.0, pnnh_vit.MAX_CODER_RATIO),
        coder_init=st.sampled_from(pnnh_vit.CODER_INITS + ('zeros',)),
        coder_act=st.sampled_from(pnnh_vit.CODER_ACTS + ('tanh',)),
        coder_norm=st.booleans(),
        arrangement=st.sampled_from(pnnh_vit.ARRANGEMENTS + ('serial',)),
        zero_init_last=st.booleans(),
        deploy_form=st.sampled_from(pnnh_vit.DEPLOY_FORMS + ('fused',)),
    )
    assert set(knobs) == set(pnnh_vit.PNNH_VIT_KNOBS)
    return st.fixed_dictionaries({}, optional=knobs)


def build_or_documented_error(name, kwargs, knobs, check):
    """The model, or None after checking that the ValueError is the knob check's own (or, for a ratio
    the check allows, the one that says the ratio does not divide the channels)."""
    try:
        expected = None
        check(**knobs)
    except ValueError as e:
        expected = str(e)
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, **kwargs, **knobs)
    except ValueError as e:
        if expected is not None:
            assert str(e) == expected
        else:
            assert ' does not divide ' in str(e) and str(e).split('=')[0] in ('coder_ratio', 'learner_ratio'), str(e)
        return None
    assert expected is None, f'{name} built with {knobs}, but its check says: {expected}'
    return model


def check_properties(name, kwargs, knobs, size, check):
    model = build_or_documented_error(name, kwargs, knobs, check)
    if model is None:
        return
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    randomise(model)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        # safetensors: bit-exact weights and logits after a reload into a freshly built model
        again = timm.create_model(name, **kwargs, **knobs).eval()
        state = model.state_dict()
        loaded = load(save({k: v.contiguous() for k, v in state.items()}))
        again.load_state_dict(loaded)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        assert torch.equal(again(x), ref)
        # folding: the deployed net is the eval net within the fold tolerance
        deployed = reparameterize_model(model)
        assert (deployed(x) - ref).abs().max().item() <= FOLD_TOLERANCE * max(1.0, ref.abs().max().item())
    # bf16 autocast: forward and backward finite (training mode, the learner path live)
    again.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = again(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in again.parameters() if p.grad is not None)


@pytest.mark.parametrize('name, kwargs, sizes', [
    pytest.param(*r, id=r[0], marks=[pytest.mark.slow] if r[0] != 'pnnh_resnet20' else []) for r in RESNETS])
def test_pnnh_resnet_knob_properties(name, kwargs, sizes):
    @settings(max_examples=8, **PROPERTY_SETTINGS)
    @given(knobs=resnet_knobs(), size=st.sampled_from(sizes))
    def prop(knobs, size):
        check_properties(name, kwargs, knobs, size, pnnh_resnet.check_pnnh_args)
    prop()


@pytest.mark.parametrize('name, kwargs, sizes', VITS, ids=[v[0] for v in VITS])
def test_pnnh_vit_knob_properties(name, kwargs, sizes):
    @settings(max_examples=10, **PROPERTY_SETTINGS)
    @given(knobs=vit_knobs(), size=st.sampled_from(sizes))
    def prop(knobs, size):
        check_properties(name, dict(kwargs, img_size=size), knobs, size, pnnh_vit.check_pnnh_vit_args)
    prop()

"""timm conformance of the registered ResNet-family models, on small inputs."""
import copy

import pytest
import timm
import torch
from timm.models import group_parameters

import timm_pnnh  # noqa: F401
from timm_pnnh.models.cifar_resnet import CIFAR_DEPTHS
from timm_pnnh.models.pnnh_resnet import IMAGENET_DEPTHS

CIFAR_NAMES = [f'{p}_resnet{d}' for p in ('pnnh', 'plain', 'cifar') for d in CIFAR_DEPTHS]
IMAGENET_NAMES = [f'{p}_resnet{d}' for p in ('pnnh', 'plain') for d in IMAGENET_DEPTHS]
# every check runs on the CIFAR family and on one basic-block and one bottleneck ImageNet depth per family;
# all names go through the cheaper checks (and through timm's own test_models.py in CI)
CONFORMANCE_NAMES = CIFAR_NAMES[:2] + ['pnnh_resnet56', 'plain_resnet56', 'cifar_resnet56'] + [
    'pnnh_resnet18', 'pnnh_resnet50', 'plain_resnet18', 'plain_resnet50']
ALL_NAMES = CIFAR_NAMES + IMAGENET_NAMES
FAST_NAMES = CIFAR_NAMES[:2]  # the fast tier (pytest -m "not slow"); the deeper and the ImageNet nets are slow


def tiered(names):
    """``names`` as parameters, every one but ``FAST_NAMES`` marked slow."""
    return [n if n in FAST_NAMES else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _input(name, batch=2, chans=3):
    size = 32 if name in CIFAR_NAMES else 64
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


def _randomize_norms(model):
    """Give BN layers non-trivial statistics so that eval-mode comparisons are not about zeros."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    return model


def test_registration_lists_every_family():
    assert set(timm.list_models('pnnh_resnet*')) == {f'pnnh_resnet{d}' for d in (*IMAGENET_DEPTHS, *CIFAR_DEPTHS)} | {
        f'pnnh_resnet{d}_identity' for d in (50, 101, 152)}
    assert len(timm.list_models('plain_resnet*')) == 10
    assert timm.list_models('cifar_resnet*') == [f'cifar_resnet{d}' for d in CIFAR_DEPTHS]
    for name in ALL_NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.input_size == ((3, 32, 32) if name in CIFAR_NAMES else (3, 224, 224))


@pytest.mark.parametrize('name', [n if n in CIFAR_NAMES else pytest.param(n, marks=pytest.mark.slow) for n in ALL_NAMES])
def test_create_with_timm_arguments_forward_backward(name):
    model = timm.create_model(name, num_classes=5, in_chans=1, global_pool='max', drop_rate=0.1, drop_path_rate=0.1)
    out = model(_input(name, chans=1))
    assert out.shape == (2, 5)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.global_pool.pool_type == 'max' and model.drop_rate == 0.1


@pytest.mark.parametrize('name', tiered(CONFORMANCE_NAMES))
def test_features_only_and_forward_intermediates(name):
    x = _input(name)
    torch.manual_seed(0)
    features = timm.create_model(name, features_only=True).eval()
    feats = features(x)
    assert [f.shape[1] for f in feats] == features.feature_info.channels()
    assert [x.shape[-1] // f.shape[-1] for f in feats] == features.feature_info.reduction()

    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    final, intermediates = model.forward_intermediates(x)
    assert len(intermediates) == len(model.feature_info)
    for got, want in zip(intermediates, feats):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(final, model.forward_features(x))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two[-1], intermediates[-1])
    assert model.prune_intermediate_layers(indices=1) == [len(model.feature_info) - 1]
    torch.testing.assert_close(model.forward_intermediates(x, indices=1, intermediates_only=True)[0], intermediates[-1])


@pytest.mark.parametrize('name', tiered(CONFORMANCE_NAMES))
def test_reset_classifier_and_group_matcher(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = _input(name)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    groups = group_parameters(model, model.group_matcher())
    grouped = [n for names in groups.values() for n in names]
    assert len(grouped) == len(set(grouped))
    assert len(groups) > 2  # stem, blocks ..., head
    assert set(grouped) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize('name', tiered(CONFORMANCE_NAMES))
def test_grad_checkpointing_gives_the_same_result(name):
    torch.manual_seed(0)
    model = _randomize_norms(timm.create_model(name, num_classes=4))
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    x = _input(name)
    out, out_ckpt = model(x), checkpointed(x)
    torch.testing.assert_close(out_ckpt, out)
    out.sum().backward()
    out_ckpt.sum().backward()
    for (n, p), q in zip(model.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)


# bf16 autocast: relative error of the logits (L2 norm), as the ViT test measures it. Measured on
# 2026-11-24 (2-core CPU, torch 2.14.1; test_torchscript_fx_channels_last_bf16's models and inputs):
# 0.4% (pnnh_resnet20) to 1.8% (plain_resnet50); a path 10% off fails.
BF16_REL_ERROR = 0.04


def bf16_close(low, ref):
    return bool((low.float() - ref).norm() <= BF16_REL_ERROR * ref.norm())


def test_bf16_check_fails_on_a_path_ten_percent_off():
    ref = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    assert bf16_close(ref.bfloat16(), ref)
    off = ref.clone()
    off[:, :5] *= 1.1  # half the logits 10% off
    assert not bf16_close(off.bfloat16(), ref)


@pytest.mark.parametrize('name', tiered(CONFORMANCE_NAMES))
def test_torchscript_fx_channels_last_bf16(name):
    model = _randomize_norms(timm.create_model(name, num_classes=4)).eval()
    x = _input(name)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
        torch.testing.assert_close(model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)),
                                   ref, rtol=1e-4, atol=1e-4)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert bf16_close(low, ref), float((low.float() - ref).norm() / ref.norm())
    torch.manual_seed(0)
    fx_features = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    torch.manual_seed(0)
    hook_features = timm.create_model(name, features_only=True).eval()
    assert len(fx_features(x)) == len(hook_features.feature_info)
    with torch.no_grad():
        for got, want in zip(fx_features(x), hook_features(x)):
            torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = _randomize_norms(timm.create_model('pnnh_resnet20', num_classes=4)).eval()
    x = _input('pnnh_resnet20')
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            got = compiled(x)
    except Exception as err:  # the inductor needs a working C++ compiler
        pytest.skip(f'torch.compile is not usable on this machine: {type(err).__name__}: {err}')
    with torch.no_grad():
        torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-4)

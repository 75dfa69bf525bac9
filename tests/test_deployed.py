"""One deployed form: what timm's own ``reparameterize_model`` produces is what ``inference_mode=True``
builds, so folded weights saved after timm's function reload exactly; and one table of knob defaults."""
import dataclasses
import inspect

import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from timm.utils.model import reparameterize_model

import timm_pnnh  # noqa: F401  (registers the models)
from timm_pnnh.models import cifar_resnet, pnnh_resnet, pnnh_vit
from conftest import randomise


def fold_save_reload(name, size, tmp_path, **kwargs):
    """The trained form (eval), its fold by timm's reparameterize_model, that fold reloaded from a
    safetensors file into create_model(inference_mode=True, pretrained=True), and an input."""
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, **kwargs)).eval()
    folded = reparameterize_model(model)
    path = str(tmp_path / 'folded.safetensors')
    safetensors.torch.save_file(folded.state_dict(), path)
    loaded = timm.create_model(name, inference_mode=True, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                               **kwargs).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, folded, loaded, x


@pytest.mark.parametrize('name, size, kwargs', [
    ('pnnh_resnet20', 32, {}),                                          # CIFAR style
    ('pnnh_resnet18', 32, {}),                                          # ImageNet style, basic blocks
    ('pnnh_resnet50.in1k', 32, {}),                                     # ImageNet style, bottlenecks
    ('pnnh_vit_tiny_patch4_32', 32, {}),
    ('pnnh_resnet20', 32, dict(coder_ratio=0.5)),                       # knobs that change deployed shapes
    ('pnnh_resnet20', 32, dict(coder_kernel=3, coder_norm=True, learner_ratio=0.5)),
    ('pnnh_resnet20', 32, dict(plain_transitions=True, coder_sharing='stage')),
    ('pnnh_resnet20', 32, dict(deploy_form='merged')),                # one conv per layer
    ('pnnh_resnet50', 32, dict(coder_ratio=0.5, deploy_form='merged')),
    ('pnnh_resnet50', 32, dict(coder_ratio=0.5)),                       # the default tag is timm's, converted
    ('pnnh_vit_tiny_patch4_32', 32, dict(coder_ratio=0.5, arrangement='sequential', depth=2)),
    ('cifar_resnet20', 32, {}),
    ('plain_resnet20', 32, {}),
], ids=lambda v: v if isinstance(v, str) else ','.join(f'{k}={w}' for k, w in v.items()) if isinstance(v, dict) else None)
def test_timm_fold_reloads_into_inference_mode(name, size, kwargs, tmp_path):
    model, folded, loaded, x = fold_save_reload(name, size, tmp_path, **kwargs)
    assert loaded.state_dict().keys() == folded.state_dict().keys()
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in folded.state_dict().items()}
    assert type(loaded) is type(folded)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in folded.modules()]
    with torch.no_grad():
        ref = model(x)
        assert ref.std() > 1e-2
        torch.testing.assert_close(loaded(x), folded(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loaded(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_the_quick_start_deployment_sequence(tmp_path, monkeypatch):
    """The README's quick start: a knob changed, folded by timm's function, saved, built again from the
    file (the default tag of pnnh_resnet34 is timm's converted weights; the file is the user's)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = timm.create_model('pnnh_resnet34', coder_ratio=0.5)
    randomise(model)
    safetensors.torch.save_file(reparameterize_model(model.eval()).state_dict(), 'deployed.safetensors')
    deployed = timm.create_model('pnnh_resnet34', coder_ratio=0.5, inference_mode=True, pretrained=True,
                                 pretrained_cfg_overlay=dict(file='deployed.safetensors')).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert ref.std() > 1e-2
        torch.testing.assert_close(deployed(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_inference_mode_builds_what_timms_function_makes():
    """Without weights: the same modules, keys and shapes, for every family of a CIFAR-size net."""
    for name, kwargs in (('pnnh_resnet20', {}), ('plain_resnet20', {}), ('cifar_resnet20', {}),
                         ('pnnh_vit_tiny_patch4_32', dict(depth=2)), ('cifar_vit_tiny_patch4_32', dict(depth=2))):
        folded = reparameterize_model(timm.create_model(name, **kwargs).eval())
        built = timm.create_model(name, inference_mode=True, **kwargs)
        assert [type(m) for m in built.modules()] == [type(m) for m in folded.modules()], name
        assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in folded.state_dict().items()}


def test_knob_defaults_have_one_source():
    """The blocks' signature defaults are the knob tables' values; create_model uses the same."""
    # the blocks read their defaults from one knob table each (a Knobs dataclass: the table's fields)
    assert dataclasses.asdict(pnnh_vit.PnnhVitKnobs()) == pnnh_vit.PNNH_VIT_KNOBS
    assert dataclasses.asdict(pnnh_resnet.PnnhBasicBlock.knobs) == pnnh_resnet.PNNH_KNOBS
    assert dataclasses.asdict(pnnh_resnet.PnnhBottleneck.knobs) == pnnh_resnet.PNNH_BOTTLENECK_KNOBS
    assert pnnh_resnet.PNNH_BOTTLENECK_KNOBS == dict(pnnh_resnet.PNNH_KNOBS, coder_ratio=0.25)
    assert timm.create_model('pnnh_resnet50').layer1[1].coder.weight.shape[0] == 256 * 0.25
    assert pnnh_resnet.PnnhBottleneck(256, 64).coder.weight.shape[0] == 256 * 0.25
    assert all('check' in f.metadata for f in dataclasses.fields(pnnh_resnet.PnnhKnobs))
    assert all('check' in f.metadata for f in dataclasses.fields(pnnh_vit.PnnhVitKnobs))
    with pytest.raises(TypeError, match='unknown knob coder_size'):
        pnnh_resnet.check_pnnh_args(coder_size=1)


def test_each_entrypoint_names_its_architecture():
    """``def pnnh_resnet34`` says what it builds (timm style ``model_args``), the name is not parsed."""
    for name in timm_pnnh.models.registered_models():
        source = inspect.getsource(timm.models.model_entrypoint(name))
        assert 'model_args = dict(block' in source, name
        assert f"'{name}'" in source, name
    assert "block=PnnhBasicBlock, layers=(3, 4, 6, 3)" in inspect.getsource(pnnh_resnet.pnnh_resnet34)
    assert "block=PnnhBottleneck, layers=(3, 4, 6, 3)" in inspect.getsource(pnnh_resnet.pnnh_resnet50)
    assert "block=ResidualBasicBlock, layers=(9, 9, 9)" in inspect.getsource(cifar_resnet.cifar_resnet56)

"""One network per name: a tag picks weights, never the network, and every name reloads its own
checkpoint through ``pretrained_cfg_overlay=dict(file=...)``, in training form and folded, as timm's
models do."""
import pytest
import safetensors.torch
import timm
import torch
from timm.models._registry import get_arch_pretrained_cfgs
from timm.utils.model import reparameterize_model

from timm_pnnh.models import registered_models
from conftest import randomise

MAX_ERROR = 1e-5


def small_args(name: str) -> dict:
    """Arguments that keep ``name``'s blocks and knobs but make it cheap to build. ``in_chans`` and
    ``num_classes`` are given: timm takes them from a tag's data config otherwise (``.fmnist`` is 1x28x28),
    for its own models too; everything else a tag must leave alone."""
    args = dict(in_chans=3, num_classes=10)
    if '_vit_' in name:
        return dict(args, depth=2, img_size=32) if 'patch16' in name else dict(args, depth=2)
    if name.split('_resnet', 1)[1].split('_')[0] in ('18', '34', '50', '101', '152'):
        return dict(args, channels=(8, 16, 32, 64))
    return dict(args, channels=(4, 8, 16))


def shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# the fast tier's share; the full test run takes every name (about 3 minutes on 2 cores)
FAST = ('pnnh_resnet20', 'pnnh_resnet18', 'pnnh_vit_tiny_patch4_32', 'pnnh_vit_tiny_patch16_224_identity')


@pytest.mark.parametrize('name', [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
                                  for n in registered_models()])
def test_every_tag_builds_the_default_network_and_the_overlay_loads_both_forms(name, tmp_path):
    args = small_args(name)
    torch.manual_seed(0)
    model = randomise(timm.create_model(name, **args)).eval()
    trained = str(tmp_path / 'trained.safetensors')
    safetensors.torch.save_file(model.state_dict(), trained)
    folded = reparameterize_model(_copy(model, name, args))
    deployed = str(tmp_path / 'deployed.safetensors')
    safetensors.torch.save_file(folded.state_dict(), deployed)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, expected_folded = model(x), folded(x)
    tags = list(get_arch_pretrained_cfgs(name))
    assert tags, name
    for tagged in tags:
        assert shapes(timm.create_model(tagged, **args)) == shapes(model), tagged
        loaded = timm.create_model(tagged, pretrained=True, pretrained_cfg_overlay=dict(file=trained, num_classes=10), **args).eval()
        assert shapes(loaded) == shapes(model), tagged
        reloaded = timm.create_model(tagged, pretrained=True, inference_mode=True,
                                     pretrained_cfg_overlay=dict(file=deployed, num_classes=10), **args).eval()
        with torch.no_grad():
            assert relative_error(loaded(x), expected) <= MAX_ERROR, tagged
            assert relative_error(reloaded(x), expected_folded) <= MAX_ERROR, tagged
    with torch.no_grad():  # the fold computes the trained form's function
        assert relative_error(expected_folded, expected) <= 1e-4, name


def _copy(model: torch.nn.Module, name: str, args: dict) -> torch.nn.Module:
    copy = timm.create_model(name, **args)
    copy.load_state_dict(model.state_dict())
    return copy.eval()

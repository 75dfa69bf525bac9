"""Converted weights: timm's residual ResNets and ViTs loaded into PNNH nets with the same outputs.

Real bytes throughout: residual nets with random weights and BatchNorm statistics, saved as timm lays out
its Hub repositories (``model.safetensors`` + ``config.json``, timm's ``save_for_hf``), loaded through
timm's own ``load_pretrained`` from a file, from a local server that speaks the Hub's download protocol
(``local_hub`` in conftest.py) and from its cache offline, and through ``timm-pnnh convert``.
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import get_pretrained_cfg
from timm.models._hub import save_for_hf
from timm.utils.model import reparameterize_model

import timm_pnnh  # noqa: F401
from timm_pnnh.cli import main as cli_main
from timm_pnnh.models._cfgs import PretrainedLoadError
from timm_pnnh.models._converted import CONVERSIONS

MAX_ERROR = 1e-5


def residual_net(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's ``arch`` with random weights, every BatchNorm scale non-zero and random running statistics."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) * 0.5 + 0.5  # timm zero-inits the last BN
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean.data = torch.randn(n, generator=generator) * 0.1
            module.running_var.data = torch.rand(n, generator=generator) + 0.5
    return model.eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def images(size: int, chans: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- tags

def _pnnh_name(arch: str) -> str:
    """The PNNH name timm's ``arch`` weights convert into."""
    return next(c.model for c in CONVERSIONS.values() if c.source.split('.')[0] == arch)


def test_converted_tags_are_the_defaults_of_the_exact_forms_and_name_timms_source():
    assert {c.model for c in CONVERSIONS.values()} == {'pnnh_resnet18', 'pnnh_resnet34'} | {
        f'pnnh_resnet{d}_identity' for d in (50, 101, 152)} | {
        f'pnnh_vit_{s}_patch16_224_identity' for s in ('tiny', 'small', 'base')}
    for name, conversion in CONVERSIONS.items():
        cfg, source = get_pretrained_cfg(conversion.model), get_pretrained_cfg(conversion.source)
        assert f'{conversion.model}.{cfg.tag}' == name and cfg.hf_hub_id == f'timm/{conversion.source}'
        assert (cfg.input_size, cfg.crop_pct, cfg.mean, cfg.interpolation) == (
            source.input_size, source.crop_pct, source.mean, source.interpolation)
        assert 'converted from timm/' in cfg.notes[0]
        assert name in timm.list_pretrained(conversion.model)


def test_the_exact_forms_are_names_and_a_tag_changes_no_network():
    assert timm.create_model('pnnh_resnet50').layer1[1].coder.weight.shape[0] == 64  # registered default 0.25
    assert timm.create_model('pnnh_resnet50_identity').layer1[1].coder.weight.shape[0] == 256
    assert timm.create_model('pnnh_resnet50.in1k').layer1[1].coder.weight.shape[0] == 64
    vit = timm.create_model('pnnh_vit_tiny_patch16_224_identity', depth=1)
    assert vit.blocks[0].coder.weight.shape == (384, 192) and vit.blocks[0].coder2 is not None
    assert timm.create_model('pnnh_vit_tiny_patch16_224', depth=1).blocks[0].coder2 is None


# ---------------------------------------------------------------- exact loads from a file

@pytest.mark.parametrize('arch,size', [('resnet18', 64), pytest.param('resnet50', 64, marks=pytest.mark.slow),
                                       pytest.param('vit_tiny_patch16_224', 224, marks=pytest.mark.slow)])
def test_residual_weights_load_exactly_and_reparameterize(arch, size, tmp_path):
    residual = residual_net(arch)
    save_file(residual.state_dict(), str(tmp_path / 'model.safetensors'))
    x = images(size)
    pnnh = timm.create_model(_pnnh_name(arch), pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'))).eval()
    with torch.no_grad():
        expected = residual(x)
        assert relative_error(pnnh(x), expected) <= MAX_ERROR
        assert relative_error(reparameterize_model(pnnh)(x), expected) <= MAX_ERROR
    # timm's own adaptations after the conversion (as timm's test_model_load_pretrained / _features_pretrained)
    overlay = dict(file=str(tmp_path / 'model.safetensors'))
    model = timm.create_model(_pnnh_name(arch), pretrained=True, num_classes=5, in_chans=1, pretrained_cfg_overlay=overlay)
    assert model.get_classifier().out_features == 5
    assert timm.create_model(_pnnh_name(arch), pretrained=True, num_classes=0,
                             pretrained_cfg_overlay=overlay).num_classes == 0
    if arch.startswith('resnet'):
        features = timm.create_model(_pnnh_name(arch), pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
        with torch.no_grad():
            assert len(features(x)) == 5


def test_wrong_sources_and_inexact_models_are_refused_with_the_keys(tmp_path):
    weights = tmp_path / 'model.safetensors'
    save_file(residual_net('resnet34').state_dict(), str(weights))
    with pytest.raises(PretrainedLoadError, match=r"pnnh_resnet18.a1_in1k: the pretrained weights from file .*"
                                                  r"model.safetensors do not convert .* unexpected keys \['layer1.2."):
        timm.create_model('pnnh_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    with pytest.raises(PretrainedLoadError, match=r'pnnh_resnet34.a1_in1k: .*layer2.0 is a plain transition block'):
        timm.create_model('pnnh_resnet34', pretrained=True, plain_transitions=True,
                          pretrained_cfg_overlay=dict(file=str(weights)))
    with pytest.raises(PretrainedLoadError, match=r'pnnh_resnet34.in1k: .*coder_ratio=1.0 needed'):
        timm.create_model('pnnh_resnet34.in1k', pretrained=True, coder_ratio=0.5,
                          pretrained_cfg_overlay=dict(file=str(weights)))


# ---------------------------------------------------------------- through the Hub's download protocol

HUB_SCRIPT = r'''
import json, sys
import torch, timm
import timm_pnnh
from safetensors.torch import load_file
from timm.utils.model import reparameterize_model

reference = load_file(sys.argv[1])
out = {}

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

for name, key in (('pnnh_resnet18', 'resnet'), ('pnnh_vit_tiny_patch16_224_identity', 'vit')):
    model = timm.create_model(name, pretrained=True).eval()
    with torch.no_grad():
        x, y = reference[key + '_x'], reference[key + '_y']
        out[key] = [model.pretrained_cfg['tag'], rel(model(x), y), rel(reparameterize_model(model)(x), y)]
for repo in ('test-org/missing-keys', 'test-org/wrong-arch'):
    try:
        timm.create_model('pnnh_resnet18', pretrained=True, pretrained_cfg_overlay=dict(hf_hub_id=repo))
    except Exception as e:
        out[repo] = [type(e).__name__, str(e)]
print(json.dumps(out))
'''


def _hub_repo(model: torch.nn.Module, folder: Path, drop=()) -> Path:
    """``model`` saved as timm saves its Hub repositories (config.json + model.safetensors)."""
    save_for_hf(model, folder, safe_serialization=True)
    if drop:
        weights = load_file(str(folder / 'model.safetensors'))
        save_file({k: v for k, v in weights.items() if k not in drop}, str(folder / 'model.safetensors'))
    return folder


def _run(reference, env):
    result = subprocess.run([sys.executable, '-c', HUB_SCRIPT, str(reference)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_pretrained_true_downloads_timms_repository_converts_and_reloads_offline(tmp_path, local_hub):
    resnet, vit = residual_net('resnet18'), residual_net('vit_tiny_patch16_224')
    x_resnet, x_vit = images(64), images(224, batch=1)
    with torch.no_grad():
        reference = dict(resnet_x=x_resnet, resnet_y=resnet(x_resnet), vit_x=x_vit, vit_y=vit(x_vit))
    save_file(reference, str(tmp_path / 'reference.safetensors'))
    local_hub.serve({
        'timm/resnet18.a1_in1k': _hub_repo(resnet, tmp_path / 'resnet18'),
        'timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k': _hub_repo(vit, tmp_path / 'vit'),
        'test-org/missing-keys': _hub_repo(resnet, tmp_path / 'missing', drop=('layer3.1.bn2.running_var',)),
        'test-org/wrong-arch': _hub_repo(residual_net('resnet34'), tmp_path / 'wrong'),
    })
    online = _run(tmp_path / 'reference.safetensors', local_hub.env)
    local_hub.stop()
    for key, tag in (('resnet', 'a1_in1k'), ('vit', 'augreg_in21k_ft_in1k')):
        assert online[key][0] == tag and max(online[key][1:]) <= MAX_ERROR, online[key]
    assert ('GET', '/timm/resnet18.a1_in1k/resolve/main/model.safetensors') in local_hub.requests
    assert not [path for _, path in local_hub.requests if path.endswith(('.bin', '.pth'))]
    kind, message = online['test-org/missing-keys']
    assert kind == 'PretrainedLoadError' and message.startswith(
        'pnnh_resnet18.a1_in1k: the pretrained weights from Hugging Face Hub repository test-org/missing-keys '
        "(model.safetensors) do not convert to a PNNH net: not the residual net of this model: 1 missing keys "
        "['layer3.1.bn2.running_var']"), message
    kind, message = online['test-org/wrong-arch']
    assert kind == 'PretrainedLoadError' and 'test-org/wrong-arch' in message and "'layer1.2.bn1.bias'" in message

    served = len(local_hub.requests)
    offline = _run(tmp_path / 'reference.safetensors', dict(local_hub.env, HF_HUB_OFFLINE='1'))
    assert max(offline['resnet'][1:] + offline['vit'][1:]) <= MAX_ERROR
    assert len(local_hub.requests) == served


# ---------------------------------------------------------------- timm-pnnh convert

def _train_checkpoint(path: Path, arch: str = 'resnet18', **kwargs) -> torch.nn.Module:
    model = residual_net(arch, **kwargs)
    torch.save({'arch': arch, 'epoch': 3, 'state_dict': model.state_dict(),
                'args': argparse.Namespace(model=arch, **kwargs)}, path)
    return model


def test_convert_a_users_checkpoint_into_a_loadable_pnnh_folder(tmp_path, capsys):
    residual = _train_checkpoint(tmp_path / 'last.pth.tar', num_classes=10, in_chans=1)
    out = tmp_path / 'pnnh'
    assert cli_main(['convert', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--output', str(out)]) == 0
    assert 'logits equal the residual net' in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pth.tar', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'pnnh_resnet18' and config['pretrained_cfg']['tag'] == 'a1_in1k'
    assert config['model_args']['num_classes'] == 10 and config['model_args']['in_chans'] == 1
    x = images(28, chans=1)
    # timm keeps the classifier only when the cfg's num_classes is the model's: say so in the overlay
    loads = [timm.create_model('pnnh_resnet18', pretrained=True, num_classes=10, in_chans=1,
                               pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=10)),
             timm.create_model(f'local-dir:{out}', pretrained=True)]
    checkpoint_model = timm.create_model('pnnh_resnet18.a1_in1k', num_classes=10, in_chans=1)
    timm.models.load_checkpoint(checkpoint_model, str(out / 'checkpoint.pth.tar'))
    with torch.no_grad():
        expected = residual(x)
        for model in loads + [checkpoint_model]:
            assert relative_error(model.eval()(x), expected) <= MAX_ERROR


@pytest.mark.slow
def test_convert_bottleneck_safetensors_needs_the_tag(tmp_path):
    residual = residual_net('resnet50', num_classes=7)
    save_file(residual.state_dict(), str(tmp_path / 'mine.safetensors'))
    out = tmp_path / 'pnnh50'
    assert cli_main(['convert', '--checkpoint', str(tmp_path / 'mine.safetensors'), '--model', 'resnet50',
                     '--output', str(out)]) == 0
    model = timm.create_model('pnnh_resnet50_identity', pretrained=True, num_classes=7,
                              pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors'), num_classes=7)).eval()
    x = images(64)
    with torch.no_grad():
        assert relative_error(model(x), residual(x)) <= MAX_ERROR


@pytest.mark.parametrize('args,message', [
    (('--model', 'resnet34'), r'the weights do not fit timm resnet34: \d+ missing keys'),
    (('--model', 'resnet26'), r"--model 'resnet26': not a timm residual architecture with a PNNH counterpart"),
    (('--pnnh-model', 'pnnh_resnet50_identity.a1_in1k'), r"--pnnh-model 'pnnh_resnet50_identity.a1_in1k': "
                                                         r'converts only into pnnh_resnet18 '),
    (('--use-ema',), r"--checkpoint .*last.pth.tar: no 'state_dict_ema' entry"),
])
def test_convert_refuses_and_writes_nothing(tmp_path, args, message, usage_error):
    _train_checkpoint(tmp_path / 'last.pth.tar')
    error = usage_error(['convert', '--checkpoint', tmp_path / 'last.pth.tar', '--output', tmp_path / 'out', *args])
    assert re.match(message, error), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']


@pytest.mark.slow
def test_a_converted_imagenet_checkpoint_is_accepted_by_publish(tmp_path):
    residual = _train_checkpoint(tmp_path / 'last.pth.tar')  # resnet18, 1000 classes
    assert cli_main(['convert', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--output', str(tmp_path / 'pnnh')]) == 0
    params = sum(p.numel() for p in timm.create_model('pnnh_resnet18.a1_in1k').parameters())
    (tmp_path / 'results.json').write_text(json.dumps(dict(model='pnnh_resnet18.a1_in1k', top1=1.0, top5=2.0,
                                                           param_count=round(params / 1e6, 2))))
    (tmp_path / 'config.yaml').write_text('model: pnnh_resnet18.a1_in1k\n')
    assert cli_main(['publish', '--dry-run', '--checkpoint', str(tmp_path / 'pnnh' / 'checkpoint.pth.tar'),
                     '--results', str(tmp_path / 'results.json'), '--train-config', str(tmp_path / 'config.yaml'),
                     '--output', str(tmp_path / 'hub')]) == 0
    card = (tmp_path / 'hub' / 'README.md').read_text()
    assert 'ImageNet-1k' in card
    # the card says what the weights are: converted from the residual checkpoint, not trained here
    assert 'converted them exactly from a timm `resnet18` checkpoint' in card and 'were trained by timm-pnnh' not in card
    assert 'a convolution E and its adjoint' in card and 'Trained with timm' not in card
    model = timm.create_model('local-dir:' + str(tmp_path / 'hub'), pretrained=True).eval()
    x = images(64)
    with torch.no_grad():
        assert relative_error(model(x), residual(x)) <= MAX_ERROR


def test_convert_needs_overwrite_for_a_non_empty_folder_and_then_replaces_it(tmp_path, usage_error):
    _train_checkpoint(tmp_path / 'last.pth.tar')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('old')
    args = ['convert', '--checkpoint', str(tmp_path / 'last.pth.tar'), '--output', str(out)]
    assert re.search('folder is not empty .*--overwrite', usage_error(args))
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    assert cli_main(args + ['--overwrite']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pth.tar', 'config.json', 'model.safetensors']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar', 'out']  # no temporary or old folder left

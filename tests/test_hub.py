"""Pretrained weights through the Hugging Face Hub: cfgs, the not-published error, ``timm-pnnh publish`` and
real downloads from a local server that speaks the Hub's file protocol (no internet).

The source model is ``pnnh_resnet20.fmnist`` trained for 2 SGD steps on random 1x28x28 data and saved by
timm's own ``CheckpointSaver`` (the train.py checkpoint format, EMA included). Hub downloads run in a
subprocess, because huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` at import.
"""
import argparse
import fractions
import json
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg
from timm.optim import create_optimizer_v2
from timm.utils import CheckpointSaver, ModelEmaV3, accuracy

import timm_pnnh  # noqa: F401
from timm_pnnh import hub
from timm_pnnh.cli import main as cli_main
from timm_pnnh.models import _cfgs, registered_models
from timm_pnnh.models._converted import CONVERSIONS

ROOT = Path(__file__).resolve().parents[1]
NAME = 'pnnh_resnet20.fmnist'
REPO = _cfgs.hub_repo_id(NAME)


def _train_checkpoint(folder: Path, name: str = NAME, **args) -> Path:
    """2 SGD steps of ``name`` on random data, saved by timm's CheckpointSaver as train.py saves them."""
    torch.manual_seed(0)
    model = timm.create_model(name)
    ema = ModelEmaV3(model, decay=0.5)
    optimizer = create_optimizer_v2(model, 'sgd', lr=0.05, momentum=0.9)
    in_chans, size = model.pretrained_cfg['input_size'][0], model.pretrained_cfg['input_size'][-1]
    x, y = torch.randn(8, in_chans, size, size), torch.randint(0, model.num_classes, (8,))
    for _ in range(2):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    train_args = dict(model=name, num_classes=None, in_chans=None, model_kwargs={}, dataset='torch/fashion_mnist',
                      epochs=1, batch_size=8, opt='sgd', lr=0.05, momentum=0.9, weight_decay=0.0, sched='cosine',
                      model_ema=True, model_ema_decay=0.5, seed=0)
    train_args.update(args)
    folder.mkdir(parents=True, exist_ok=True)
    saver = CheckpointSaver(model, optimizer, args=argparse.Namespace(**train_args), model_ema=ema,
                            checkpoint_dir=str(folder), recovery_dir=str(folder), max_history=1)
    saver.save_checkpoint(epoch=0, metric=0.0)
    return folder / 'last.pth.tar'


def _validate_results(model, path: Path, x, y, name: str = NAME) -> Path:
    """What validate.py --results-file path --results-format json writes, measured on (x, y)."""
    with torch.no_grad():
        top1, top5 = accuracy(model(x), y, topk=(1, 5))
    cfg = model.pretrained_cfg
    results = OrderedDict(model=name, top1=round(top1.item(), 4), top1_err=round(100 - top1.item(), 4),
                          top5=round(top5.item(), 4), top5_err=round(100 - top5.item(), 4),
                          param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                          img_size=cfg['input_size'][-1], crop_pct=cfg['crop_pct'], interpolation=cfg['interpolation'])
    path.write_text(json.dumps(results, indent=4))
    return path


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """The trained checkpoint, its validate.py results, the published folder and reference outputs."""
    base = tmp_path_factory.mktemp('hub')
    checkpoint = _train_checkpoint(base / 'train')
    model = timm.create_model(NAME).eval()
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    model.load_state_dict(state['state_dict'])
    torch.manual_seed(1)
    x, labels = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    results = _validate_results(model, base / 'results.json', x, labels)
    train_config = base / 'pnnh_resnet20_fmnist.yaml'
    train_config.write_text('model: pnnh_resnet20.fmnist\n')
    folder = base / 'repos' / REPO
    assert cli_main(['publish', '--dry-run', '--checkpoint', str(checkpoint), '--results', str(results),
                     '--train-config', str(train_config), '--output', str(folder)]) == 0
    with torch.no_grad():
        y = model(x)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    reference = base / 'reference.safetensors'
    save_file({'x': x, 'y': y, 'features': features}, str(reference))
    return dict(base=base, checkpoint=checkpoint, results=results, train_config=train_config, folder=folder,
                reference=reference, state=state, model=model, x=x, y=y)


def _publish_args(source, output, *extra):
    return ['publish', '--dry-run', '--checkpoint', str(source['checkpoint']), '--results', str(source['results']),
            '--train-config', str(source['train_config']), '--output', str(output), *extra]


# ---------------------------------------------------------------- cfgs and the not-published error

def test_every_tag_has_a_hub_cfg_and_cifar_models_keep_their_cifar10_default():
    for model_name in registered_models():
        cfgs = get_arch_pretrained_cfgs(model_name)
        assert cfgs, model_name
        for name, cfg in cfgs.items():
            converted = CONVERSIONS.get(name)  # timm's residual weights, converted at load time (test_convert.py)
            assert cfg.hf_hub_id == (f'timm/{converted.source}' if converted else
                                     f'timm-pnnh/{name}' if name in _cfgs.PUBLISHED else None), name
            assert cfg.hf_hub_filename == 'model.safetensors', name
            paper = 'arXiv:2311.01906' if model_name.startswith('sasp_') else 'arXiv:2402.08645'  # the SAS-P baseline's own
            assert cfg.license == 'apache-2.0' and cfg.paper_ids == paper, name
    for prefix in ('pnnh', 'plain', 'cifar'):
        for depth in (20, 56):
            default = get_pretrained_cfg(f'{prefix}_resnet{depth}')
            assert (default.tag, default.input_size, default.num_classes) == ('cifar10', (3, 32, 32), 10)
            fmnist = get_pretrained_cfg(f'{prefix}_resnet{depth}.fmnist')
            assert fmnist.input_size == (1, 28, 28) and fmnist.num_classes == 10 and fmnist.crop_pct == 1.0
            assert len(fmnist.mean) == len(fmnist.std) == 1 and len(fmnist.label_names) == 10
    assert get_pretrained_cfg('pnnh_resnet34.in1k').input_size == (3, 224, 224)
    # timm (list_pretrained, its test suite) sees exactly the published and the converted tags as pretrained
    ours = set(registered_models())
    assert {n for n in timm.list_pretrained() if n.split('.')[0] in ours} == set(_cfgs.PUBLISHED) | set(CONVERSIONS)
    assert timm.create_model('pnnh_resnet20.fmnist').conv1.in_channels == 1


@pytest.mark.parametrize('name,tag', [('pnnh_resnet56.fmnist', 'fmnist'), ('pnnh_resnet34.in1k', 'in1k'),
                                      ('cifar_resnet20', 'cifar10')])
def test_pretrained_true_for_an_unpublished_tag_names_model_tag_and_published_tags(monkeypatch, name, tag):
    architecture = name.split('.')[0]
    with pytest.raises(_cfgs.WeightsNotPublishedError, match=rf"{architecture}: the weights of tag '{tag}'.*"
                                                              rf"Published tags of {architecture}: none"):
        timm.create_model(name, pretrained=True)
    other = 'cifar10' if tag != 'cifar10' else 'fmnist'
    if f'{architecture}.{other}' in get_arch_pretrained_cfgs(architecture):
        monkeypatch.setattr(_cfgs, 'PUBLISHED', frozenset({f'{architecture}.{other}'}))
        with pytest.raises(_cfgs.WeightsNotPublishedError, match=rf'Published tags of {architecture}: {other}\.'):
            timm.create_model(name, pretrained=True)


# ---------------------------------------------------------------- publish

def test_publish_dry_run_writes_timm_config_safetensors_and_a_filled_model_card(source):
    folder = source['folder']
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert not [p for p in folder.parent.iterdir() if p.name.startswith('.')]  # no temporary folder left
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'pnnh_resnet20' and config['num_classes'] == 10
    assert config['pretrained_cfg']['tag'] == 'fmnist' and config['pretrained_cfg']['input_size'] == [1, 28, 28]
    assert 'hf_hub_id' not in config['pretrained_cfg']  # as timm's save_for_hf writes it
    weights = load_file(str(folder / 'model.safetensors'))
    assert weights.keys() == source['state']['state_dict'].keys()
    assert all(torch.equal(weights[k], v) for k, v in source['state']['state_dict'].items())

    card = (folder / 'README.md').read_text()
    results = json.loads(source['results'].read_text())
    front = yaml.safe_load(card.split('---')[1])
    assert front['library_name'] == 'timm' and front['license'] == 'apache-2.0'
    assert front['datasets'] == ['zalando-datasets/fashion_mnist']
    assert front['model-index'][0]['results'][0]['metrics'][0]['value'] == results['top1']
    assert f"| `{NAME}` | {results['top1']} | {results['top5']} |" in card
    assert 'template-notes' not in card and '${' not in card and 'none yet' not in card
    assert 'arXiv:2402.08645' in card and '@article{zhang2024peeking' in card
    assert '| `--opt` | `sgd` |' in card and '| `--seed` | `0` |' in card and str(source['train_config']) in card


def test_publish_use_ema_takes_the_ema_weights(source, tmp_path):
    assert cli_main(_publish_args(source, tmp_path / 'ema', '--use-ema')) == 0
    weights = load_file(str(tmp_path / 'ema' / 'model.safetensors'))
    ema, plain = source['state']['state_dict_ema'], source['state']['state_dict']
    assert all(torch.equal(weights[k], v) for k, v in ema.items())
    assert not all(torch.equal(ema[k], plain[k]) for k in plain)  # the test can tell them apart
    assert 'EMA weights' in (tmp_path / 'ema' / 'README.md').read_text()


def _corrupt(source, tmp_path, change):
    state = torch.load(source['checkpoint'], map_location='cpu', weights_only=False)
    change(state)
    path = tmp_path / 'changed.pth.tar'
    torch.save(state, path)
    return path


def _nan(state):
    state['state_dict']['layer1.0.conv1.weight'][0, 0, 0, 0] = float('nan')


def _five_classes(state):
    state['state_dict']['fc.weight'] = state['state_dict']['fc.weight'][:5]
    state['state_dict']['fc.bias'] = state['state_dict']['fc.bias'][:5]


def _drop_key(state):
    del state['state_dict']['bn1.weight']


def _python_object(state):
    state['metric_history'] = fractions.Fraction(1, 3)  # not a tensor or container: unpickling it runs code


def _arch(name):
    def change(state):
        state['arch'] = name
        state['args'].model = name
    return change


@pytest.mark.parametrize('change,extra,message', [
    (_arch('resnet18'), (), "model 'resnet18' is not a timm-pnnh model"),
    (_arch('pnnh_resnet999.fmnist'), (), "model 'pnnh_resnet999.fmnist' is not a timm-pnnh model"),
    (_arch('pnnh_resnet56.fmnist'), (), 'the checkpoint does not match pnnh_resnet56.fmnist: .* missing keys'),
    (None, ('--model', 'pnnh_resnet56.fmnist'), 'the checkpoint was trained as pnnh_resnet20.fmnist'),
    (None, ('--model', 'pnnh_resnet20.cifar10'), 'the checkpoint does not match pnnh_resnet20.cifar10: 1 shape'),
    (None, ('--checkpoint', 'missing.pth.tar'), "--checkpoint='missing.pth.tar': no such file"),
    (_python_object, (), r"--checkpoint='.*changed.pth.tar' holds Python objects other than tensors.*--unsafe-pickle"),
    (_drop_key, (), r"does not match pnnh_resnet20.fmnist: 1 missing keys \['bn1.weight'\]"),
    (_five_classes, (), 'num_classes mismatch: .* fc.weight has 5 classes, pnnh_resnet20.fmnist has num_classes=10'),
    (_nan, (), r"non-finite values .* \['layer1.0.conv1.weight'\]"),
    (None, ('--model', 'pnnh_resnet20.imagenet'), "tag 'imagenet' has no pretrained cfg; tags of pnnh_resnet20: "
                                                  "cifar10, fmnist"),
])
def test_publish_refuses_and_writes_nothing(source, tmp_path, usage_error, change, extra, message):
    args = _publish_args(source, tmp_path / 'out', *extra)
    if change is not None:
        args[args.index('--checkpoint') + 1] = str(_corrupt(source, tmp_path, change))
    error = usage_error(args)
    assert re.search(message, error), error
    assert sorted(p.name for p in tmp_path.iterdir()) == (['changed.pth.tar'] if change else [])


def test_publish_reads_a_checkpoint_with_python_objects_only_with_unsafe_pickle(source, tmp_path, usage_error):
    args = _publish_args(source, tmp_path / 'out')
    args[args.index('--checkpoint') + 1] = str(_corrupt(source, tmp_path, _python_object))
    assert 'give --unsafe-pickle' in usage_error(args)
    assert cli_main(args + ['--unsafe-pickle']) == 0


def test_publish_refuses_a_damaged_checkpoint(source, tmp_path, usage_error):
    damaged = tmp_path / 'damaged.pth.tar'
    damaged.write_bytes(Path(source['checkpoint']).read_bytes()[:1000])
    args = _publish_args(source, tmp_path / 'out')
    args[args.index('--checkpoint') + 1] = str(damaged)
    assert re.fullmatch(rf"--checkpoint='{damaged}' is truncated \(1,000 bytes; .*\): give a checkpoint written by "
                        r'torch.save .*', usage_error(args))


def test_publish_refuses_results_of_another_model_and_a_failed_validation(source, tmp_path, usage_error):
    other = timm.create_model('pnnh_resnet56.fmnist').eval()
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([0, 1])
    wrong_model = _validate_results(other, tmp_path / 'r56.json', x, y, name='pnnh_resnet56.fmnist')
    same_name = json.loads(wrong_model.read_text())
    same_name['model'] = NAME
    (tmp_path / 'params.json').write_text(json.dumps(same_name))
    (tmp_path / 'failed.json').write_text(json.dumps({'model': NAME, 'error': 'CUDA out of memory'}))
    params = sum(p.numel() for p in source['model'].parameters())
    for results, message in [(wrong_model, 'expected one validate.py result for pnnh_resnet20, found 0'),
                             (tmp_path / 'params.json', rf"param_count={same_name['param_count']}M, but "
                                                        rf"pnnh_resnet20.fmnist has {params / 1e6:.2f}M"),
                             (tmp_path / 'failed.json', 'validation of pnnh_resnet20 failed: CUDA out of memory')]:
        args = _publish_args(source, tmp_path / 'out')
        args[args.index('--results') + 1] = str(results)
        assert re.search(message, usage_error(args))
        assert not (tmp_path / 'out').exists()


def test_publish_needs_overwrite_for_a_non_empty_folder_and_then_replaces_it(source, tmp_path, usage_error):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('old')
    assert re.search('folder is not empty .*--overwrite', usage_error(_publish_args(source, out)))
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    assert cli_main(_publish_args(source, out, '--overwrite')) == 0
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert [p.name for p in tmp_path.iterdir()] == ['out']  # neither the temporary nor the old folder is left


# ---------------------------------------------------------------- local routes: file overlay, local-dir

def test_file_overlay_and_local_dir_load_the_published_weights(source):
    weights = str(source['folder'] / 'model.safetensors')
    for model in (timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=weights)),
                  timm.create_model(f'local-dir:{source["folder"]}', pretrained=True)):
        with torch.no_grad():
            assert torch.equal(model.eval()(source['x']), source['y'])


def test_local_file_errors_name_the_model_and_tag(source, tmp_path):
    data = (source['folder'] / 'model.safetensors').read_bytes()
    (tmp_path / 'truncated.safetensors').write_bytes(data[:len(data) // 2])
    (tmp_path / 'garbage.safetensors').write_bytes(b'\xff' * 64)
    torch.save(source['state']['state_dict'], tmp_path / 'weights.pth')
    cases = [('truncated.safetensors', _cfgs.PretrainedLoadError, 'pnnh_resnet20.fmnist: cannot read the pretrained'),
             ('garbage.safetensors', _cfgs.PretrainedLoadError, 'pnnh_resnet20.fmnist: cannot read the pretrained'),
             ('weights.pth', ValueError, r"pnnh_resnet20.fmnist: .*file=.*weights.pth' is not allowed: only "
                                         r'.safetensors'),
             ('missing.safetensors', FileNotFoundError, 'pnnh_resnet20.fmnist: pretrained weight file .* does not')]
    for file, error, message in cases:
        with pytest.raises(error, match=message):
            timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / file)))
    with pytest.raises(_cfgs.PretrainedLoadError, match='pnnh_resnet56.fmnist: the pretrained weights from file .* do '
                                                        'not fit the model'):
        timm.create_model('pnnh_resnet56.fmnist', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(source['folder'] / 'model.safetensors')))


# ---------------------------------------------------------------- the Hub file protocol on 127.0.0.1

LOAD_SCRIPT = r'''
import json, sys
import torch, timm
import timm_pnnh
from safetensors.torch import load_file
from timm_pnnh.models import _cfgs

mode, reference = sys.argv[1], load_file(sys.argv[2])
_cfgs.PUBLISHED = frozenset({'pnnh_resnet20.fmnist', 'pnnh_resnet56.fmnist'})
out = {}

def same(model):
    with torch.no_grad():
        return torch.equal(model.eval()(reference['x']), reference['y'])

def error(**kwargs):
    try:
        timm.create_model(**kwargs)
    except Exception as e:
        return [type(e).__name__, str(e)]

out['registry'] = same(timm.create_model('pnnh_resnet20.fmnist', pretrained=True))
out['hf_hub'] = same(timm.create_model('hf-hub:timm-pnnh/pnnh_resnet20.fmnist', pretrained=True))
out['unavailable'] = error(model_name='pnnh_resnet56.fmnist', pretrained=True)
if mode == 'online':
    model = timm.create_model('pnnh_resnet20.fmnist', pretrained=True, num_classes=3).eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(reference['x']), pre_logits=True)
    out['head'] = [model.fc.out_features, torch.equal(features, reference['features'])]
    out['corrupt'] = error(model_name='pnnh_resnet20.fmnist', pretrained=True,
                           pretrained_cfg_overlay=dict(hf_hub_id='test-org/corrupt'))
print(json.dumps(out))
'''


def _load_in_subprocess(mode, reference, env):
    result = subprocess.run([sys.executable, '-c', LOAD_SCRIPT, mode, str(reference)], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_hub_download_then_offline_cache_load(source, tmp_path, local_hub):
    corrupt = tmp_path / 'corrupt'
    corrupt.mkdir()
    data = (source['folder'] / 'model.safetensors').read_bytes()
    (corrupt / 'model.safetensors').write_bytes(data[:len(data) - 1000])
    local_hub.serve({REPO: source['folder'], 'test-org/corrupt': corrupt})
    try:
        online = _load_in_subprocess('online', source['reference'], local_hub.env)
    finally:
        local_hub.stop()
    # (a) a real download into the temporary cache, outputs identical to the source model
    assert online['registry'] is True and online['hf_hub'] is True
    assert ('GET', f'/{REPO}/resolve/main/model.safetensors') in local_hub.requests
    assert ('GET', f'/{REPO}/resolve/main/config.json') in local_hub.requests
    assert not [path for _, path in local_hub.requests if path.endswith(('.bin', '.pth'))]  # never asks for pickle
    assert list((tmp_path / 'hf_cache').glob('models--timm-pnnh--pnnh_resnet20.fmnist/snapshots/*/model.safetensors'))
    # (c) another num_classes: timm drops the classifier, every other weight is the published one
    assert online['head'] == [3, True]
    # (d) a truncated file and a repository the server does not have: errors name the model and the tag
    assert online['corrupt'][0] == 'PretrainedLoadError'
    assert online['corrupt'][1].startswith('pnnh_resnet20.fmnist: cannot read the pretrained weights from Hugging '
                                           'Face Hub repository test-org/corrupt (model.safetensors)')
    assert online['unavailable'][0] == 'PretrainedLoadError'
    assert online['unavailable'][1].startswith('pnnh_resnet56.fmnist: cannot read the pretrained weights from '
                                               'Hugging Face Hub repository timm-pnnh/pnnh_resnet56.fmnist')

    # (b) offline, server gone: the same loads come from the cache; what is not cached fails clearly
    served = len(local_hub.requests)
    offline = _load_in_subprocess('offline', source['reference'], dict(local_hub.env, HF_HUB_OFFLINE='1'))
    assert offline['registry'] is True and offline['hf_hub'] is True
    assert offline['unavailable'][0] == 'PretrainedLoadError' and 'pnnh_resnet56.fmnist' in offline['unavailable'][1]
    assert len(local_hub.requests) == served


def test_model_card_template_is_package_data_and_the_root_card_is_no_template():
    template = hub.DEFAULT_TEMPLATE.read_text()
    assert hub.DEFAULT_TEMPLATE.parent == Path(timm_pnnh.__file__).parent  # package data, in a wheel too
    root_card = (ROOT / 'MODEL_CARD.md').read_text()
    assert '${' not in root_card and 'template-notes' not in root_card
    rendered = hub.render_card(template, {k: 'X' for k in re.findall(r'\$\{(\w+)\}', template)})
    assert 'template-notes' not in rendered and '${' not in rendered


@pytest.mark.parametrize('architecture, tag, meta, says', [
    ('pnnh_resnet20', 'fmnist', {}, ('trained by timm-pnnh', 'Trained with timm', 'a convolution E and its adjoint')),
    ('pnnh_vit_tiny_patch4_32', 'cifar10', {}, ('trained by timm-pnnh', 'a linear map E and its transpose')),
    ('pnnh_resnet50_identity', 'a1_in1k', {}, ("fine-tuned by timm-pnnh as a PNNH net, starting from timm's `resnet50.a1_in1k`",)),
    ('pnnh_resnet50_identity', 'a1_in1k', {'converted_from': 'resnet50'}, ('converted them exactly from a timm `resnet50`',)),
    ('plain_resnet20', 'fmnist', {}, ('plain baseline', 'trained by timm-pnnh')),
])
def test_the_card_says_what_the_weights_are_and_describes_the_family(architecture, tag, meta, says):
    provenance, training = hub.provenance(architecture, tag, meta, 'train_configs/x.yaml')
    text = f'{provenance} {training} {hub.coder_description(architecture)}'
    for phrase in says:
        assert phrase in text, (phrase, text)
    if meta:
        assert 'train_configs/x.yaml' not in text and 'were trained by timm-pnnh' not in text


def test_every_registered_name_has_a_card_description():
    from timm_pnnh.models import arch_of, family_of, registered_models
    for name in registered_models():
        assert hub.coder_description(name) == hub.coder_description(f'{name}.sometag')
    assert arch_of('sasp_vit_tiny_patch4_32') == arch_of('cifar_vit_tiny_patch4_32') == 'vit'
    assert (family_of('cifar_resnet20'), arch_of('cifar_resnet20')) == ('residual', 'resnet')
    assert 'SAS-P' in hub.coder_description('sasp_vit_tiny_patch4_32')

"""``train_configs/*.yaml``: one per model family and dataset, each naming registered models that
build and run at the config's input size, class count and channel count.

Parsing against timm's own ``train.py`` argument parser needs the script and is in
``test_timm_scripts.py``.
"""
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

import timm_pnnh  # noqa: F401

CONFIG_DIR = Path(__file__).resolve().parent.parent / 'train_configs'
FAMILIES = ('resnet', 'vit')
DATASETS = ('fashion_mnist_cpu', 'fashion_mnist', 'cifar10', 'cifar100', 'imagenet1k', 'imagenet1k_finetune')
CONFIGS = sorted(CONFIG_DIR.glob('*.yaml'))
HEADER_FIELDS = ('# models:', '# Recipe:', '# Expected wall time:', '# Run:')


def load(path: Path):
    """(the YAML mapping, the model names of its ``# models:`` header line)."""
    text = path.read_text()
    found = re.findall(r'^# models:(.*)$', text, flags=re.M)
    assert len(found) == 1, f'{path.name}: needs exactly one "# models:" header line'
    return yaml.safe_load(text), found[0].split()


def test_one_config_per_family_and_dataset():
    assert {p.stem for p in CONFIGS} == {f'{f}_{d}' for f in FAMILIES for d in DATASETS}


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_header_and_data_settings(path):
    cfg, models = load(path)
    text = path.read_text()
    for field in HEADER_FIELDS:
        assert field in text, f'{path.name}: header lacks {field!r}'
    assert cfg['model'] in models, f"{path.name}: model {cfg['model']!r} is not in its '# models:' line"
    assert cfg['device_modules'] == ['timm_pnnh']
    channels = cfg.get('in_chans', 3)
    assert cfg['input_size'][0] == channels == len(cfg['mean']) == len(cfg['std'])
    if 'fashion_mnist' in path.stem:
        assert (cfg['dataset'], cfg['input_size'], cfg['dataset_download']) == ('torch/fashion_mnist', [1, 28, 28], False)
    if path.stem.endswith('_cpu'):
        assert cfg['device'] == 'cpu' and cfg['epochs'] == 1
    else:
        assert 'device' not in cfg  # train.py's default, cuda


def _pnnh_vit_registered() -> bool:
    return bool(timm.list_models('pnnh_vit*'))


@pytest.mark.parametrize('path', [pytest.param(p, marks=pytest.mark.slow) if 'imagenet' in p.stem else p for p in CONFIGS],
                         ids=lambda p: p.stem)
def test_config_models_are_registered_and_run(path):
    cfg, models = load(path)
    missing = [name for name in models if not timm.is_model(name)]
    if missing and path.stem.startswith('vit_') and not _pnnh_vit_registered():
        pytest.skip(f'{path.name}: {", ".join(missing)} not registered: no PNNH ViT family in this checkout')
    assert not missing, f'{path.name} names models timm does not know: {missing}'
    size = tuple(cfg['input_size'])
    for name in models:
        model = timm.create_model(name, num_classes=cfg['num_classes'], in_chans=cfg.get('in_chans', 3),
                                  **cfg.get('model_kwargs', {})).eval()
        if size[-1] > 32:  # ImageNet models: building them at the config's classes is enough here
            continue
        with torch.no_grad():
            out = model(torch.zeros(2, *size))
        assert out.shape == (2, cfg['num_classes']), name

"""timm's own ``train.py``, ``validate.py`` and ``benchmark.py``, unmodified, on PNNH models.

The scripts are not part of the timm wheel. Point ``TIMM_SCRIPTS_DIR`` at a folder holding them
(timm's repository at the tag of the installed timm); without it these tests are skipped.
"""
import argparse
import copy
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import yaml

import timm_pnnh  # noqa: F401
from timm_pnnh.models.coders import _Coder
from timm.utils.model import reparameterize_model

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_ENV = 'TIMM_SCRIPTS_DIR'
SCRIPTS = os.environ.get(SCRIPTS_ENV, '')
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not SCRIPTS, reason=f"{SCRIPTS_ENV} is not set: timm's train.py/validate.py/benchmark.py are not in the "
                        f"timm wheel; set {SCRIPTS_ENV} to a checkout of timm's repository at the installed "
                        f"version's tag (v{timm.__version__})")]
CONFIGS = sorted((ROOT / 'train_configs').glob('*.yaml'))
VIT = 'pnnh_vit_tiny_patch4_32'
MODELS = [
    'pnnh_resnet20',
    pytest.param(VIT, marks=pytest.mark.skipif(
        not timm.is_model(VIT), reason=f'{VIT} is not registered in this checkout (no PNNH ViT family yet)')),
]


def script(name: str) -> str:
    path = os.path.join(SCRIPTS, name)
    assert os.path.isfile(path), f'{SCRIPTS_ENV}={SCRIPTS!r} has no {name}'
    return path


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope='module')
def train_parser() -> argparse.ArgumentParser:
    """The argument parser of the train.py in TIMM_SCRIPTS_DIR (imported, not run)."""
    spec = importlib.util.spec_from_file_location('timm_train_script', script('train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser


def config_to_argv(cfg, parser: argparse.ArgumentParser):
    """The command line equivalent to a ``-c`` YAML, so that argparse checks every type and choice
    (``train.py -c`` uses ``set_defaults``, which would accept any key and any value)."""
    actions = {action.dest: action for action in parser._actions}
    argv = []
    for key, value in cfg.items():
        assert key in actions, f'{key!r} is not an option of train.py'
        action = actions[key]
        option = max(action.option_strings, key=len)
        if action.nargs == 0:
            assert isinstance(value, bool), f'{key}: {value!r} must be true or false'
            if value != action.default:
                argv.append(option)
        elif isinstance(value, dict):
            argv += [option, *(f'{k}={v!r}' for k, v in value.items())]
        elif isinstance(value, list):
            argv += [option, *map(str, value)]
        else:
            argv += [option, str(value)]
    return argv


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_parses_with_train_py(path, train_parser, capsys):
    cfg = yaml.safe_load(path.read_text())
    parser = copy.deepcopy(train_parser)
    try:
        args = parser.parse_args(config_to_argv(cfg, parser))
    except SystemExit:
        pytest.fail(f'{path.name}: train.py rejects it: {capsys.readouterr().err}')
    for key, value in cfg.items():
        got = getattr(args, key)
        assert (list(got) if isinstance(value, list) else got) == value, key
    # the route train.py itself takes: -c FILE, then the defaults it sets
    parser = copy.deepcopy(train_parser)
    parser.set_defaults(**cfg)
    assert vars(parser.parse_args([])) == vars(args)


@pytest.fixture(scope='module')
def tiny_imagefolder(tmp_path_factory):
    """2 classes x 8 images of 32x32 PNG per split; class c has colour channel c saturated."""
    from PIL import Image
    root = tmp_path_factory.mktemp('tiny_imagefolder')
    g = torch.Generator().manual_seed(0)
    for split in ('train', 'validation'):
        for c in range(2):
            folder = root / split / f'class{c}'
            folder.mkdir(parents=True)
            for i in range(8):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
                pixels[..., c] = 255
                Image.fromarray(pixels.numpy()).save(folder / f'{i}.png')
    return root


@pytest.mark.parametrize('model', MODELS)
def test_train_then_validate(model, tiny_imagefolder, tmp_path):
    out = tmp_path / 'output'
    train = run(['-m', 'timm_pnnh', 'run', script('train.py'), '--data-dir', str(tiny_imagefolder),
                 '--device', 'cpu', '--model', model, '--num-classes', '2', '--input-size', '3', '32', '32',
                 '--batch-size', '4', '--validation-batch-size', '8', '--epochs', '1', '--workers', '0',
                 '--opt', 'sgd', '--lr', '0.01', '--warmup-epochs', '0', '--model-ema', '--seed', '0',
                 '--output', str(out), '--experiment', model, '--checkpoint-hist', '1'], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-4000:]
    run_dir = out / model
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert checkpoint['arch'] == model
    assert checkpoint['state_dict_ema'].keys() == checkpoint['state_dict'].keys()
    with open(run_dir / 'summary.csv') as f:
        summary = list(csv.DictReader(f))[-1]  # train.py's evaluation, of the EMA weights with --model-ema

    # the EMA weights folded by timm's reparameterize_model (what validate.py --reparam calls), saved, and
    # validated as create_model(inference_mode=True)
    trained = timm.create_model(model, num_classes=2)
    trained.load_state_dict(checkpoint['state_dict_ema'])
    trained_params = sum(p.numel() for p in trained.parameters())
    deployed = reparameterize_model(trained.eval())
    deployed_file = tmp_path / 'deployed.safetensors'
    safetensors.torch.save_file(deployed.state_dict(), str(deployed_file))
    results, logged_params = {}, {}
    for mode, extra in (('trained', ['--checkpoint', str(run_dir / 'last.pth.tar'), '--use-ema']),
                        ('reparam', ['--checkpoint', str(run_dir / 'last.pth.tar'), '--use-ema', '--reparam']),
                        ('inference_mode', ['--checkpoint', str(deployed_file), '--model-kwargs', 'inference_mode=True'])):
        results_file = tmp_path / f'results_{mode}.json'
        validate = run(['-m', 'timm_pnnh.run', script('validate.py'), str(tiny_imagefolder), '--split', 'validation',
                        '--device', 'cpu', '--model', model, '--num-classes', '2', '--input-size', '3', '32', '32',
                        '--batch-size', '8', '--workers', '0', *extra, '--results-file', str(results_file),
                        '--results-format', 'json'], cwd=tmp_path)
        assert validate.returncode == 0, validate.stderr[-4000:]
        results[mode] = json.loads(results_file.read_text())
        counts = re.findall(rf'Model {model} created, param count: (\d+)', validate.stdout + validate.stderr)
        assert len(counts) == 1, (validate.stdout + validate.stderr)[-4000:]
        logged_params[mode] = int(counts[0])
    plain, reparameterized = results['trained'], results['reparam']
    assert plain['model'] == reparameterized['model'] == model
    # the fold itself: every PNNH block is in its deployed form; in the ResNet the weight-shared coders are gone
    # (folded into plain convs beside the learner's); the ViT's side-by-side fold keeps its linear coders
    blocks = [m for m in deployed.modules() if hasattr(m, 'inference_mode')]
    assert blocks and all(block.inference_mode for block in blocks)
    assert not any(isinstance(m, _Coder) for m in deployed.modules())
    # validate.py --reparam ran that fold (the exact parameter count it logs), and the folded net, run by
    # validate.py or rebuilt with inference_mode=True from the saved weights, scores as the trained one
    assert logged_params == dict(trained=trained_params, reparam=sum(p.numel() for p in deployed.parameters()),
                                 inference_mode=sum(p.numel() for p in deployed.parameters()))
    for mode in ('reparam', 'inference_mode'):
        assert (results[mode]['top1'], results[mode]['top5']) == (plain['top1'], plain['top5']), mode
    assert plain['top1'] == pytest.approx(float(summary['eval_top1']))
    assert plain['top5'] == pytest.approx(float(summary['eval_top5']))


def test_benchmark(tmp_path):
    # benchmark.py logs every num_bench_iter // 5 steps: fewer than 5 divides by zero
    results_file = tmp_path / 'bench.json'
    bench = run(['-m', 'timm_pnnh.run', script('benchmark.py'), '--model', 'pnnh_resnet20', '--device', 'cpu',
                 '--bench', 'both', '--batch-size', '2', '--img-size', '32', '--num-warm-iter', '1',
                 '--num-bench-iter', '5', '--results-file', str(results_file), '--results-format', 'json'],
                cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr[-4000:]
    result = json.loads(results_file.read_text())
    result = result[0] if isinstance(result, list) else result
    assert result['model'] == 'pnnh_resnet20'
    assert result['infer_samples_per_sec'] > 0 and result['train_samples_per_sec'] > 0


def test_script_errors_pass_through(tmp_path):
    bad = run(['-m', 'timm_pnnh', 'run', script('validate.py'), '--no-such-option'], cwd=tmp_path)
    assert bad.returncode == 2
    assert 'unrecognized arguments: --no-such-option' in bad.stderr

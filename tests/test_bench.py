"""``timm-pnnh bench``: figures and ratios for a tiny pair, JSON report, bad input."""
import contextlib
import copy
import json

import pytest
import timm
import torch
from timm.utils.model import reparameterize_model

from timm_pnnh import bench
from timm_pnnh.models import coder_ops
from timm_pnnh.cli import main

TINY = ['--batch-size', '2', '--repeats', '1', '--steps', '1', '--warmup', '0']


def test_bench_prints_ratios_and_writes_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    assert main(['bench', '--model', 'pnnh_resnet20', '--vs', 'cifar_resnet20', *TINY, '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '`pnnh_resnet20` / `cifar_resnet20`' in printed
    assert 'train images/s' in printed and 'deployed images/s' in printed
    report = json.loads(out.read_text())
    assert report['config']['reference'] == 'cifar_resnet20'
    assert report['config']['batch_size'] == 2 and report['config']['img_size'] == 32
    # the CPU by name and by the vector instructions torch uses on it (bf16 speed depends on them)
    assert report['config']['device_name'].endswith(', ' + bench.torch.backends.cpu.get_cpu_capability())
    assert f"({report['config']['device_name']}, " in printed
    pnnh, resnet = report['results']['pnnh_resnet20'], report['results']['cifar_resnet20']
    for key in ('train_img_s', 'infer_img_s', 'deploy_img_s', 'saved_mb', 'gflops', 'params_m'):
        assert pnnh[key] > 0 and resnet[key] > 0
        assert report['ratios']['pnnh_resnet20'][key] == pytest.approx(pnnh[key] / resnet[key])  # 1 repeat
    assert len(pnnh['train_img_s_runs']) == 1
    assert 'peak_step_mb' not in pnnh  # CUDA only
    # the figures that do not depend on timing are exact
    model = bench.timm.create_model('cifar_resnet20')
    assert resnet['params_m'] == sum(p.numel() for p in model.parameters()) / 1e6
    # both nets deploy with their own arithmetic: the residual net less its BatchNorms, the PNNH net with
    # its coder beside its learner (deploy_form='side_by_side')
    assert resnet['deploy_gflops'] == pytest.approx(resnet['gflops'], rel=0.02)
    assert pnnh['deploy_gflops'] == pytest.approx(pnnh['gflops'], rel=0.02)
    assert not list(tmp_path.glob('.bench-*'))  # no temporary file left behind


def test_saved_activation_bytes_count_what_backward_keeps():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    x = torch.randn(2, 3, 5, 5)
    nbytes = bench._saved_bytes(model, x, torch.tensor([0, 1]), contextlib.nullcontext())
    # conv saves its input (2*3*5*5 floats); linear its input (2*100 floats); cross-entropy its
    # log-softmax output (2*2 floats), the targets (2 int64) and its total weight (1 float); the
    # weights are parameters and not counted
    assert nbytes == 4 * (2 * 3 * 5 * 5 + 2 * 100 + 2 * 2) + 8 * 2 + 4


def test_cpuinfo_gives_the_first_cpus_fields_and_labels_timings_with_its_name(tmp_path, monkeypatch):
    """One reader of /proc/cpuinfo: the first CPU's value of each field, None where there is no such file;
    timings are labelled with the model name, and the platform's name stands in without it."""
    from timm_pnnh import cpu
    path = tmp_path / 'cpuinfo'
    path.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: CPU A\nflags\t\t: fpu avx2\n\n'
                    'processor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: CPU B\nflags\t\t: fpu\n')
    assert cpu.cpuinfo(str(path)) == {'processor': '0', 'vendor_id': 'GenuineIntel', 'model name': 'CPU A',
                                      'flags': 'fpu avx2'}
    assert cpu.cpuinfo(str(tmp_path / 'absent')) is None
    monkeypatch.setattr(bench, 'cpuinfo', lambda: cpu.cpuinfo(str(path)))
    assert bench.cpu_name() == f'CPU A, {torch.backends.cpu.get_cpu_capability()}'
    monkeypatch.setattr(bench, 'cpuinfo', lambda: None)
    monkeypatch.setattr(bench.platform, 'processor', lambda: 'x86_64 stand-in')
    assert bench.cpu_name() == f'x86_64 stand-in, {torch.backends.cpu.get_cpu_capability()}'


@pytest.mark.parametrize('argv, message', [
    (['--model', 'no_such_model', '--vs', 'cifar_resnet20'], "argument --model: model 'no_such_model' is not a registered"),
    (['--model', 'pnnh_resnet20', '--vs', 'nope'], "argument --vs: model 'nope' is not a registered"),
    (['--model', 'pnnh_resnet20', '--batch-size', '0'], "--batch-size='0' is not allowed: it must be an integer >= 1"),
    (['--model', 'pnnh_resnet20', '--batch-size', '-3'], "--batch-size='-3' is not allowed"),
    (['--model', 'pnnh_resnet20', '--repeats', 'two'], "--repeats='two' is not allowed"),
    (['--model', 'pnnh_resnet20', '--amp', 'fp8'], "invalid choice: 'fp8'"),
    (['--model', 'pnnh_resnet20', '--device', 'tpu'], "device='tpu' is not allowed"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['bench', *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error given where there is no CUDA')
def test_bench_rejects_cuda_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        main(['bench', '--model', 'pnnh_resnet20', '--device', 'cuda'])
    assert "device='cuda' is not available" in capsys.readouterr().err


def test_bench_rejects_a_model_given_twice(capsys):
    assert main(['bench', '--model', 'pnnh_resnet20', '--vs', 'pnnh_resnet20', *TINY]) == 2
    assert 'each model may be given once' in capsys.readouterr().err


@pytest.mark.parametrize('kwargs, message', [
    (dict(models=[]), 'models=\\[\\] is not allowed'),
    (dict(models=['pnnh_resnet20'], batch_size=0), 'batch_size=0 is not allowed'),
    (dict(models=['pnnh_resnet20'], img_size=-1), 'img_size=-1 is not allowed'),
    (dict(models=['pnnh_resnet20'], amp='fp16'), "amp='fp16' is not allowed"),
    (dict(models=['pnnh_resnet20'], warmup=-1), 'warmup=-1 is not allowed'),
])
def test_benchmark_api_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bench.benchmark(**kwargs)


def test_model_specs_carry_knobs_and_reference(tmp_path):
    specs = ['pnnh_resnet20:learner_ratio=0.5,in_chans=1', 'cifar_resnet20:in_chans=1', 'cifar_resnet20:block_reduce_first=2,in_chans=1']
    report = bench.benchmark(specs, batch_size=2, img_size=28, repeats=2, steps=1, warmup=0, reference=specs[1])
    narrow = bench.timm.create_model('pnnh_resnet20', learner_ratio=0.5, in_chans=1)
    assert report['results'][specs[0]]['params_m'] == sum(p.numel() for p in narrow.parameters()) / 1e6
    assert report['config']['reference'] == specs[1]
    # every ratio is against the given reference (not the first model): the parameter counts are exact
    for spec in specs:
        assert report['ratios'][spec]['params_m'] == pytest.approx(
            report['results'][spec]['params_m'] / report['results'][specs[1]]['params_m'])
    assert report['ratios'][specs[2]]['params_m'] < 1.0  # the narrow residual control is smaller
    assert len(report['results'][specs[0]]['train_img_s_runs']) == 2
    assert bench.parse_model(bench.model_spec('pnnh_resnet20', dict(coder_init='kaiming', coder_ratio=0.5))) == (
        'pnnh_resnet20', dict(coder_init='kaiming', coder_ratio=0.5))


@pytest.mark.parametrize('spec, message', [
    ('nonexistent_model', 'not a registered timm model'),
    ('pnnh_resnet20:learner_ratio', 'NAME:key=value'),
])
def test_bad_model_spec(spec, message):
    with pytest.raises(ValueError, match=message):
        bench.parse_model(spec)


def test_timing_ratios_are_the_median_of_paired_ratios(monkeypatch):
    """Three repeats with a fake clock: pnnh takes 1, 2, 3 s per run and the reference 3, 1, 2 s. The
    paired ratios (reference time / pnnh time) are 3, 0.5, 2/3: their median is 2/3, while the ratio
    of the median figures would be 1 and their mean 1.39."""
    durations = {'pnnh_resnet20': [1.0, 2.0, 3.0], 'cifar_resnet20': [3.0, 1.0, 2.0]}
    runs = [durations[name][r] for r in range(3) for name in durations]  # the models take turns in a repeat
    clock = {'now': 0.0, 'calls': 0}

    def perf_counter():
        clock['calls'] += 1
        if clock['calls'] % 2 == 0:  # every second call ends a timed run
            clock['now'] += runs[(clock['calls'] // 2 - 1) % len(runs)]
        return clock['now']

    monkeypatch.setattr(bench.time, 'perf_counter', perf_counter)
    report = bench.benchmark(list(durations), batch_size=2, repeats=3, steps=1, warmup=0)
    for key in ('train_img_s', 'infer_img_s', 'deploy_img_s'):
        assert report['results']['pnnh_resnet20'][key + '_runs'] == pytest.approx([2.0, 1.0, 2 / 3])
        assert report['results']['pnnh_resnet20'][key] == pytest.approx(1.0)
        assert report['results']['cifar_resnet20'][key] == pytest.approx(1.0)
        assert report['ratios']['pnnh_resnet20'][key] == pytest.approx(2 / 3)


def test_training_flops_count_forward_and_backward():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x, y = torch.randn(3, 8), torch.tensor([0, 1, 1])
    # per image: forward 2*8*4 + 2*4*2; backward: the second layer's input and weight gradients (2*4*2
    # each), the first layer's weight gradient (2*8*4; the input needs none); counted on 2 of the 3 images
    assert bench.train_flops_per_image(model, x, y) == pytest.approx((64 + 16 + 16 + 16 + 64) / 1e9)
    assert all(p.grad is None for p in model.parameters())
    # the PNNH coder recomputes its code in backward: one more C -> C_c product per block than a
    # residual block's 3x of the forward
    pnnh, residual = (bench.timm.create_model(name).to(memory_format=torch.channels_last)
                      for name in ('pnnh_resnet20', 'cifar_resnet20'))
    image = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    forward = {m: bench.flops_per_image(m.eval(), image) for m in (pnnh, residual)}
    train = {m: bench.train_flops_per_image(m.train(), image, torch.tensor([0, 1])) for m in (pnnh, residual)}
    assert train[residual] < 3 * forward[residual]  # the stem needs no input gradient
    assert train[pnnh] - 3 * forward[pnnh] > train[residual] - 3 * forward[residual]


@pytest.mark.parametrize('matmul_1x1', [True, False])
def test_the_deployed_side_by_side_form_counts_the_arithmetic_of_the_trained_one(matmul_1x1, monkeypatch):
    """The deployed PNNH block does the training form's multiply-adds (BatchNorms folded, not counted), whether
    its 1x1 coder runs as matrix products, the decoder's added in place, or as convolutions."""
    monkeypatch.setattr(coder_ops, 'MATMUL_1X1', matmul_1x1)
    model = timm.create_model('pnnh_resnet20').eval().to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, 8, 8).to(memory_format=torch.channels_last)
    deployed = reparameterize_model(copy.deepcopy(model))
    assert bench.flops_per_image(deployed, image) == pytest.approx(bench.flops_per_image(model, image))


def test_the_table_shows_the_spread_and_the_ratio_the_flops_allow(tmp_path):
    page = tmp_path / 'speed.md'
    page.write_text('before\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n')
    assert main(['bench', '--model', 'pnnh_resnet20', '--vs', 'cifar_resnet20', '--batch-size', '2', '--img-size', '8',
                     '--repeats', '2', '--steps', '1', '--warmup', '0', '--write-readme', str(page)]) == 0
    text = page.read_text()
    assert "channels_last=False  coder_1x1=conv  amp=None" in text  # a 1x1 coder without channels_last: convolutions
    assert text.startswith('before\n<!-- bench:start -->\n`timm-pnnh bench --model pnnh_resnet20 --vs cifar_resnet20 '
                           '--batch-size 2 --img-size 8 --repeats 2 --steps 1 --warmup 0`') and text.endswith('after\n')
    assert 'old' not in text
    report = bench.benchmark(['pnnh_resnet20', 'cifar_resnet20'], batch_size=2, img_size=8, repeats=2, steps=1, warmup=0)
    pnnh, residual = report['results']['pnnh_resnet20'], report['results']['cifar_resnet20']
    assert report['flop_limits']['pnnh_resnet20']['train_img_s'] == pytest.approx(residual['train_gflops'] / pnnh['train_gflops'])
    assert report['flop_limits']['pnnh_resnet20']['deploy_img_s'] == pytest.approx(
        residual['deploy_gflops'] / pnnh['deploy_gflops'])
    # the deployed form keeps the coder beside the learner: about the training form's arithmetic
    assert 0.9 < report['flop_limits']['pnnh_resnet20']['deploy_img_s'] < 1 and 0.9 < report['flop_limits']['pnnh_resnet20']['train_img_s'] < 1
    train_row = next(line for line in bench.bench_table(report).splitlines() if line.startswith('| train images/s'))
    runs = pnnh['train_img_s_runs']
    assert f"({min(runs):.4g}-{max(runs):.4g})" in train_row
    assert f"(FLOPs: {report['flop_limits']['pnnh_resnet20']['train_img_s']:.3f}x)" in train_row


def test_write_readme_needs_the_bench_markers(tmp_path, usage_error):
    page = tmp_path / 'speed.md'
    page.write_text('no markers\n')
    message = usage_error(['bench', '--model', 'pnnh_resnet20', '--batch-size', '1', '--write-readme', page])
    assert '--write-readme=' in message and 'bench:start' in message


def test_write_readme_into_a_named_section(tmp_path, capsys):
    page = tmp_path / 'speed.md'
    page.write_text('<!-- bench:start -->\nfirst\n<!-- bench:end -->\n<!-- bench-vit:start -->\nold\n<!-- bench-vit:end -->\n')
    assert main(['bench', '--model', 'cifar_resnet20', '--batch-size', '2', '--img-size', '8', '--repeats', '1',
                 '--steps', '1', '--warmup', '0', '--write-readme', str(page), '--section', 'bench-vit']) == 0
    text = page.read_text()
    assert text.startswith('<!-- bench:start -->\nfirst\n<!-- bench:end -->\n<!-- bench-vit:start -->\n`timm-pnnh bench')
    assert 'old' not in text
    with pytest.raises(SystemExit):
        main(['bench', '--model', 'cifar_resnet20', '--section', 'Bench Vit'])
    assert "--section='Bench Vit' is not allowed: it must be lower-case letters, digits and dashes" in capsys.readouterr().err

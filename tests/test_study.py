"""The study: presets, per-run model arguments, resume, the report, and a tiny end-to-end sweep."""
import copy
import json
import re
from argparse import Namespace

import numpy as np
import pytest
import timm

import timm_pnnh  # noqa: F401
from timm_pnnh import data, report, study, training
from timm_pnnh.study import runs, summary
from timm_pnnh.cli import main


TINY = ['--depths', '20', '--seeds', '0', '1', '--steps', '2', '--batch-size', '16', '--train-size', '64',
        '--test-size', '32', '--diag-batch', '8', '--speed-repeats', '1']


def _args(**overrides):
    base = dict(preset='quick', seeds=None, depths=None, steps=None, batch_size=None, train_size=None, test_size=None,
                diag_batch=None, data_dir=None, out=None, resume=True, epochs=None, device=None, amp=None, speed_repeats=0,
                retime=False, rows=None)
    return Namespace(**dict(base, **overrides))


def _tiny_preset(**changes):
    tiny = dict(depths=[20], seeds=[0], steps=1, batch_size=8, train_size=32, test_size=16, diag_batch=8)
    return study.resolve_preset(_args(**{**tiny, **changes}))


def test_presets_sweep_the_three_families_at_the_paper_depths():
    quick = study.preset_rows(study.PRESETS['quick'])
    assert [r.label for r in quick] == ['plain-20', 'residual-20', 'pnnh-20', 'plain-56', 'residual-56', 'pnnh-56']
    assert all(timm.is_model(r.model) for r in quick)
    full = study.preset_rows(study.PRESETS['full'])
    assert {r.depth for r in full if r.arch == 'resnet'} == {20, 56, 110}


def test_vit_rows_are_in_the_presets_with_vits():
    vits = [r for r in study.preset_rows(study.PRESETS['full']) if r.arch == 'vit']
    assert [r.model for r in vits] == [study.VIT_NAMES[f] for f in study.FAMILIES] and all(timm.is_model(r.model) for r in vits)
    assert [r.family for r in vits] == list(study.FAMILIES) and all(r.model_kwargs == dict(img_size=28) for r in vits)
    assert all(not r.kwargs for r in vits)  # the input size is not a knob: these are the families' default rows
    assert not [r for r in study.preset_rows(study.PRESETS['quick']) if r.arch == 'vit']


def test_vit_study_rows_build_depth_12_vits_of_one_width():
    rows = study.preset_rows(study.PRESETS['vit-cpu'])
    assert [r.label for r in rows] == ['residual-vit', 'plain-vit', 'pnnh-vit', 'pnnh-vit coder_ratio=2.0',
                                       'pnnh-vit mlp_ratio=3.0', 'sasp-vit']
    nets = {r.label: timm.create_model(r.model, **r.model_kwargs, num_classes=10, in_chans=1) for r in rows}
    assert {len(n.blocks) for n in nets.values()} == {12} and {n.embed_dim for n in nets.values()} == {96}
    assert {n.patch_embed.img_size for n in nets.values()} == {(28, 28)}
    # the narrow PNNH row: its coder (C units) and MLP (3C) together as wide as the ViT's MLP (4C)
    narrow, vit = nets['pnnh-vit mlp_ratio=3.0'].blocks[0], nets['residual-vit'].blocks[0]
    assert narrow.coder.weight.shape[0] + narrow.mlp.fc1.out_features == vit.mlp.fc1.out_features
    recipes = [study.row_recipe(r, study.PRESETS['vit-cpu']) for r in rows]
    assert all(r == recipes[0] for r in recipes) and recipes[0].warmup_fraction > 0  # one recipe, with a warm-up


def test_depth_study_rows_are_the_three_families_at_three_depths():
    rows = study.preset_rows(study.PRESETS['depth-cpu'])
    assert [(r.family, r.depth) for r in rows] == [(f, d) for d in (20, 56, 110) for f in study.FAMILIES]
    assert all(timm.is_model(r.model) for r in rows)


@pytest.mark.parametrize('overrides, match', [
    (dict(depths=[21]), '--depths value 21'), (dict(seeds=[0, 0]), '--seeds'), (dict(steps=0), 'steps=0'),
    (dict(test_size=0), '--test-size=0'), (dict(rows=['plain-20', 'plain-20']), '--rows'),
    (dict(preset='vit-cpu', rows=['sasp']), "--rows value 'sasp' is not allowed: the rows of this vit-cpu study are "
                                            "'residual-vit', 'plain-vit', 'pnnh-vit', "),
    (dict(depths=[20], rows=['pnnh-56']), "--rows value 'pnnh-56'")])
def test_bad_overrides_name_the_parameter(overrides, match):
    with pytest.raises(ValueError, match=match):
        study.resolve_preset(_args(**overrides))


def test_ablation_knobs_reach_the_model(fake_fashion_mnist, tmp_path):
    preset = study.resolve_preset(_args(preset='ablation', depths=[20], seeds=[0], steps=1, batch_size=8, train_size=32,
                                        test_size=16, diag_batch=8))
    rows = study.preset_rows(preset)
    assert rows[0].family == 'residual' and len(rows) == 1 + len(study.ABLATION_KNOBS)
    assert {k for r in rows for k, _ in r.kwargs} == {'coder_lr_scale', 'coder_ratio', 'coder_kernel', 'coder_init', 'coder_norm',
                                                      'learner_ratio'}
    picked = [r for r in rows if r.family == 'pnnh' and r.kwargs in ((), (('learner_ratio', 0.5),), (('coder_kernel', 3),))]
    records = study.sweep(picked, preset, study.load_data(preset, fake_fashion_mnist), tmp_path / 'out', log=lambda m: None)
    for row, record in zip(picked, records):
        expected = timm.create_model('pnnh_resnet20', num_classes=10, in_chans=1, **dict(row.kwargs))
        assert record['params'] == sum(p.numel() for p in expected.parameters())
        assert record['model_kwargs'] == dict(row.kwargs)
    params = {tuple(r['model_kwargs'].items()): r['params'] for r in records}
    assert params[(('learner_ratio', 0.5),)] < params[()] < params[(('coder_kernel', 3),)]


def test_resume_does_not_redo_finished_runs(fake_fashion_mnist, tmp_path, monkeypatch):
    preset = _tiny_preset()
    rows = study.preset_rows(preset)
    loaded = study.load_data(preset, fake_fashion_mnist)
    calls = []
    real = training.train_and_evaluate

    def counting(name, *args, **kwargs):
        calls.append(name)
        if fail_on and len(calls) == fail_on:
            raise KeyboardInterrupt  # the sweep is stopped half-way
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runs.training, 'train_and_evaluate', counting)
    out = tmp_path / 'out'
    fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        study.sweep(rows, preset, loaded, out, log=lambda m: None)
    assert sorted(p.name for p in (out / 'runs').iterdir()) == ['plain-20-seed0.json']  # nothing half-written
    fail_on = 0
    calls.clear()
    records = study.sweep(rows, preset, loaded, out, log=lambda m: None)
    assert calls == ['cifar_resnet20', 'pnnh_resnet20'] and len(records) == 3
    calls.clear()
    again = study.sweep(rows, preset, loaded, out, log=lambda m: None)
    assert calls == [] and again == records
    # a new seed runs only the new runs; changed settings run again; --no-resume redoes everything
    calls.clear()
    study.sweep(rows, _tiny_preset(seeds=[0, 1]), loaded, out, log=lambda m: None)
    assert calls == ['plain_resnet20', 'cifar_resnet20', 'pnnh_resnet20']
    calls.clear()
    study.sweep(rows, _tiny_preset(steps=2), loaded, out, log=lambda m: None)
    assert len(calls) == 3
    calls.clear()
    study.sweep(rows[:1], _tiny_preset(steps=2), loaded, out, resume=False, log=lambda m: None)
    assert calls == ['plain_resnet20']


def _row(label, family, depth, params, accs, ips, r2_last, kwargs=None, deployed_ips=None):
    curve = [dict(index=1, name='layer1.0', shape=[16, 28, 28], r2=0.9, cka=0.9, alive=0.5),
             dict(index=2, name='layer3.8', shape=[64, 7, 7], r2=r2_last, cka=r2_last, alive=0.5)]
    return dict(label=label, family=family, model=f'{family}_resnet{depth}', arch='resnet', depth=depth,
                model_kwargs=kwargs or {}, blocks=2, params=params, seeds=[0, 1, 2], test_accs=accs,
                acc_mean=float(np.mean(accs)), acc_std=float(np.std(accs, ddof=1)), diverged_seeds=[], epochs=[],
                train_img_s=ips, infer_img_s=2 * ips, deploy_img_s=deployed_ips or 3 * ips, saved_mb=10.0,
                deploy_params_m=params / 1e6, retention_init=curve, retention_trained=curve)


@pytest.fixture
def small_study():
    summary = [
        _row('plain-20', 'plain', 20, 269_000, [88.0, 88.2, 87.8], 500, 0.2),
        _row('residual-20', 'residual', 20, 272_000, [88.5, 88.9, 88.7], 480, 0.7),
        _row('pnnh-20', 'pnnh', 20, 283_000, [88.4, 88.6, 88.5], 400, 0.7),
        _row('plain-56', 'plain', 56, 853_000, [40.0, 50.0, 45.0], 200, 0.05),
        _row('residual-56', 'residual', 56, 856_000, [90.0, 90.5, 90.2], 180, 0.7),
        _row('pnnh-56', 'pnnh', 56, 899_000, [89.5, 90.0, 89.6], 150, 0.68),
        _row('pnnh-56 learner_ratio=0.5', 'pnnh', 56, 430_000, [90.1, 90.3, 90.2], 210, 0.7, {'learner_ratio': 0.5},
             deployed_ips=500),
    ]
    return dict(command='timm-pnnh study --preset quick', preset='quick', date='2024-05-01T12:00:00+00:00',
                hardware=dict(cpu='Test CPU', cpu_count=2, torch_threads=2, device='cpu', torch='2', timm='1'),
                seeds=[0, 1, 2], recipe=dict(training.Recipe().__dict__), depths=[20, 56], data='Fashion-MNIST: test',
                train_seconds=600.0, plots=list(study.PLOTS), summary=summary, runs=[],
                speed=dict(config=dict(device='cpu', device_name='Test CPU', threads=2, batch_size=128, channels_last=True,
                                       amp=None)))


def test_report_verdicts_are_computed_from_the_numbers(small_study):
    lines = report.verdicts(small_study)
    text = '\n'.join(lines)
    assert 'plain-56 vs plain-20: -43.0 +- 4.9 points over 3 seeds: reproduced: the deeper plain net is worse' in text
    assert 'pnnh-20 vs residual-20**: -0.2 +- 0.1 points' in text and 'on par within 2 std' in text
    assert 'pnnh-56 vs residual-56**: -0.5 +- 0.1 points' in text and 'PNNH worse by more than 2 std' in text
    # the half-width learner row is on par with residual-56 at half its parameters: the front verdicts
    # compare each PNNH row with the residual row that reaches its accuracy and is best on the axis
    assert ('**Parameters at equal accuracy**: best pnnh-56 learner_ratio=0.5 vs residual-56, 1.99x; PNNH ahead, '
            'below the bar of 2x (paper: up to 2x).') in text
    assert '**pnnh-56 learner_ratio=0.5 vs residual-56** (430k vs 856k params): -0.0 +- 0.2 points: on par' in text
    assert '**Plain vs residual at depth 56**: -45.2 +- 4.8 points: the plain net is worse by more than 2 std' in text
    # training: pnnh-56 lr0.5 (210 img/s) vs residual-56 (180) is the best pair: 1.17x; pnnh-20 is not reached by
    # residual-20 only within noise... every residual row reaches pnnh-20, the fastest is residual-20 (480)
    assert 'best pnnh-56 learner_ratio=0.5 vs residual-56, 1.17x; PNNH ahead, below the bar of 1.3x' in text
    assert '(bench: cpu Test CPU, 2 threads, batch 128, channels_last=True, amp=None)' in text
    assert '**Deployed throughput at equal accuracy** (bench' in text and '0.93x; not reproduced' in text
    assert 'R^2 plain 0.05, residual 0.70, PNNH 0.68' in text and 'reproduced: the plain net holds less' in text
    table = report.front_table(small_study['summary'])
    assert ('| pnnh-56 learner_ratio=0.5 (90.20 +- 0.10) | Parameters at equal accuracy | residual-56 (90.23 +- 0.25) '
            '| -0.0 +- 0.2 | 1.99x |') in table
    # change a number, the verdict follows
    changed = copy.deepcopy(small_study)
    changed['summary'][5]['test_accs'] = [90.0, 90.5, 90.3]
    assert 'pnnh-56 vs residual-56**: +0.0 +- 0.1 points' in '\n'.join(report.verdicts(changed))
    changed['summary'][6]['deploy_img_s'] = 300  # 1.67x residual-56's 540 deployed: past RepVGG's bar
    assert 'best pnnh-56 learner_ratio=0.5 vs residual-56, 1.67x; reproduced' not in '\n'.join(report.verdicts(changed))
    changed['summary'][6]['deploy_img_s'] = 900
    assert 'best pnnh-56 learner_ratio=0.5 vs residual-56, 1.67x; reproduced (RepVGG' in '\n'.join(report.verdicts(changed))
    changed['summary'][2]['test_accs'] = [91.0, 91.2, 91.1]  # pnnh-20 above every residual row
    assert 'residual-56 (90.23 +- 0.25), less accurate: none reaches it' in report.front_table(changed['summary'])


def test_the_headline_says_the_answer_from_the_numbers(small_study):
    text = report.headline(small_study)
    assert text.startswith('**In short:** pnnh-20 vs residual-20: -0.2 +- 0.1 points, on par within 2 std; '
                           'pnnh-56 vs residual-56: -0.5 +- 0.1 points, worse by more than 2 std; ')
    assert ('a PNNH row is ahead of the residual rows of its accuracy on parameters and training images/s (best PNNH '
            'advantage: 1.99x on parameters, 1.17x on training images/s, 0.93x on deployed images/s, all by pnnh-56 '
            'learner_ratio=0.5).') in text
    slower = copy.deepcopy(small_study)
    slower['summary'][6].update(params=900_000, train_img_s=100)
    text = report.headline(slower)
    assert 'no PNNH row is ahead of the residual rows of its accuracy on any axis' in text
    assert text in report.results_markdown(slower, None).split('\n')[0]


def _vit(label, family, params, accs, ips, kwargs=None):
    return dict(_row(label, family, 12, params, accs, ips, 0.7, kwargs), arch='vit', depth=None,
                model=f'{family}_vit_tiny_patch4_32')


def test_a_pnnh_vit_is_measured_against_sasp_on_the_fronts_too(small_study):
    """For the ViTs the published skipless block is the other way to drop the skips: the headline, the
    verdicts and the front tables say whether a PNNH row is ahead of the SAS-P rows of its accuracy, as
    they do for the residual rows, without the paper's bar (the paper did not compare with SAS-P)."""
    vits = dict(small_study, summary=[
        _vit('residual-vit', 'residual', 1_350_000, [88.0, 89.0, 88.5], 80),
        _vit('plain-vit', 'plain', 1_350_000, [10.0, 10.1, 10.2], 82),
        _vit('pnnh-vit', 'pnnh', 1_460_000, [88.9, 89.2, 89.0], 70),
        _vit('pnnh-vit mlp_ratio=3.0', 'pnnh', 1_238_000, [89.0, 89.3, 89.1], 78, {'mlp_ratio': 3.0}),
        _vit('sasp-vit', 'sasp', 1_124_000, [89.6, 89.8, 89.7], 90)])
    text = report.headline(vits)
    assert ('a PNNH row is ahead of the residual rows of its accuracy on parameters (best PNNH advantage: 1.09x on '
            'parameters, 0.97x on training images/s, 0.97x on deployed images/s, all by pnnh-vit mlp_ratio=3.0)') in text
    assert text.endswith('; no PNNH row is ahead of the sasp rows of its accuracy on any axis (best PNNH advantage: '
                         '0.91x on parameters, 0.87x on training images/s, 0.87x on deployed images/s, all by pnnh-vit '
                         'mlp_ratio=3.0).')
    lines = report.verdicts(vits)
    assert ('- **Parameters at equal accuracy, against sasp**: best pnnh-vit mlp_ratio=3.0 vs sasp-vit, 0.91x; no PNNH '
            'row is ahead of the sasp rows of its accuracy.') in lines
    assert '- **Parameters at equal accuracy**: best pnnh-vit mlp_ratio=3.0 vs residual-vit, 1.09x; PNNH ahead' in '\n'.join(lines)
    page = report.results_markdown(vits, None)
    assert 'Each PNNH row against the sasp row that reaches its accuracy' in page
    assert '| PNNH row | axis | sasp row of equal accuracy, best on the axis |' in page
    # a SAS-P row less accurate than every PNNH row beyond noise reaches none of them: nothing to compare at
    # equal accuracy, and the verdict says so
    vits['summary'][-1].update(test_accs=[80.0, 80.2, 80.1])
    assert 'no sasp row reaches the accuracy of any PNNH row' in '\n'.join(report.verdicts(vits))
    assert 'sasp rows of its accuracy' not in report.headline(vits)
    # the ResNet studies have no SAS-P rows and are measured against the residual rows alone
    assert report.front_baselines(small_study['summary']) == ['residual']


def test_one_seed_is_said_once_per_comparison(small_study):
    one_seed = copy.deepcopy(small_study)
    for row in one_seed['summary']:
        row.update(seeds=[0], test_accs=row['test_accs'][:1], acc_mean=row['test_accs'][0], acc_std=None)
    text = report.headline(one_seed)
    assert text.startswith('**In short:** pnnh-20 vs residual-20: -0.1 (one seed, no spread) points, no verdict on noise; ')
    assert text.count('one seed') == 2  # once for each of the two depths
    assert ('- **PNNH vs residual, pnnh-56 vs residual-56**: -0.5 (one seed, no spread) points (89.50 (one seed) vs '
            '90.00 (one seed)): no verdict on noise.') in report.verdicts(one_seed)


def test_the_plain_depth_claim_needs_plain_resnets_at_two_depths(small_study):
    one_depth = dict(small_study, summary=[r for r in small_study['summary'] if r['label'] != 'plain-20'])
    lines = report.verdicts(one_depth)
    assert lines[0] == '- **Plain accuracy vs depth**: this study has no plain ResNets at two depths.'
    assert lines[1].startswith('- **Plain vs residual at depth 56**: -45.2 +- 4.8 points')


def test_a_smaller_but_less_accurate_pnnh_row_is_a_trade_not_ahead(small_study):
    """A PNNH row with fewer parameters than residual-56 but less accurate beyond 2 std, with no residual row
    of its size: the only residual rows that reach its accuracy spend their extra parameters on accuracy,
    so the study cannot say it is ahead; once a residual control of its size reaches it, it can."""
    traded = copy.deepcopy(small_study)
    traded['summary'] = [r for r in traded['summary'] if r['depth'] == 56]
    traded['summary'][3].update(test_accs=[89.0, 89.4, 89.2], acc_mean=89.2, acc_std=0.2)  # -1.0 +- 0.1 vs residual-56
    front = {f['key']: f for f in report.front_rows(traded['summary']) if f['pnnh']['label'] == 'pnnh-56 learner_ratio=0.5'}
    assert front['params']['traded'] and front['params']['ratio'] == pytest.approx(856 / 430)
    assert not front['deploy_img_s']['traded'] and front['deploy_img_s']['ratio'] < 1  # slower too: behind, no trade
    assert ('| pnnh-56 learner_ratio=0.5 (89.20 +- 0.20) | Parameters at equal accuracy | residual-56 (90.23 +- 0.25), '
            'more accurate beyond 2 std: a trade, not equal accuracy | -1.0 +- 0.1 | 1.99x |') in report.front_table(traded['summary'])
    undecided = ('pnnh-56 learner_ratio=0.5: smaller or faster than every residual row that reaches its accuracy, but '
                 'less accurate beyond 2 std, so undecided without a residual row of its size')
    text = report.headline(traded)
    assert 'no PNNH row is ahead of the residual rows of its accuracy on any axis' in text and text.endswith(f'; {undecided}.')
    verdict = next(v for v in report.verdicts(traded) if 'Parameters at equal accuracy' in v)
    assert verdict == ('- **Parameters at equal accuracy**: best pnnh-56 vs residual-56, 0.95x; not reproduced: no PNNH row '
                       f'is ahead of the residual rows of its accuracy (paper: up to 2x); {undecided}.')
    # a residual control of its size, on par with it and with more parameters: now a comparison at equal accuracy
    control = _row('residual-56 block_reduce_first=2', 'residual', 56, 500_000, [89.1, 89.3, 89.3], 200, 0.7,
                   {'block_reduce_first': 2})
    traded['summary'].append(control)
    front = {f['key']: f for f in report.front_rows(traded['summary']) if f['pnnh']['label'] == 'pnnh-56 learner_ratio=0.5'}
    assert front['params']['baseline'] is control and not front['params']['traded']
    assert 'a PNNH row is ahead of the residual rows of its accuracy on parameters' in report.headline(traded)
    assert 'undecided' not in report.headline(traded)


def test_the_results_say_where_the_runs_trained(small_study):
    """A study resumed over several machines: the header names the CPUs its runs trained on when they are
    not all the machine that wrote the study (older records name none)."""
    header = lambda s: report.results_markdown(s, None).split('Generated by')[1].split('\n')[0]  # noqa: E731
    assert 'runs trained on' not in header(small_study)  # no records
    same = dict(small_study, runs=[dict(cpu='Test CPU')] * 3)
    assert 'runs trained on' not in header(same) and '10 minutes of training in all).' in header(same)
    mixed = dict(small_study, runs=[dict(cpu='Test CPU'), dict(cpu='Other CPU, AVX2'), dict(cpu='Other CPU, AVX2'), {}])
    assert header(mixed).endswith('10 minutes of training in all; runs trained on Other CPU, AVX2 (2 runs), '
                                  'Test CPU (1 run), not recorded (1 run)).')
    through_fp32 = dict(small_study, runs=[dict(cpu='Test CPU'), dict(cpu='Test CPU', bf16_through_fp32=True)])
    assert header(through_fp32).endswith('runs trained on Test CPU (1 run), Test CPU, bf16 products in fp32 kernels (1 run)).')


def test_report_writes_the_readme_section_atomically(small_study, tmp_path, capsys, usage_error):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'study.json').write_text(json.dumps(small_study))
    (tmp_path / 'out' / 'accuracy_vs_depth.png').write_bytes(b'png')
    readme = tmp_path / 'README.md'
    readme.write_text('# x\n\n## Results\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n')
    assert main(['report', '--from', str(tmp_path / 'out' / 'study.json'), '--write-readme', str(readme)]) == 0
    text = readme.read_text()
    assert '\nold\n' not in text and text.endswith('<!-- results:end -->\n\nafter\n')
    assert '| pnnh-56 (`pnnh_resnet56`) | pnnh | 56 | 899k | 899k | 89.70 +- 0.26 | 3 | 150 | 450 | 10.0 |' in text
    assert '![accuracy vs depth](out/accuracy_vs_depth.png)' in text and 'retention_vs_depth' not in text
    assert '`timm-pnnh study --preset quick`' in text and '2024-05-01' in text and 'Seeds 0, 1, 2' in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md', 'out']  # nothing copied, no temporary file
    assert main(['report', '--from', str(tmp_path / 'out' / 'study.json'), '--write-readme', str(readme),
                 '--plots-dir', 'docs/study']) == 0
    assert '![accuracy vs depth](docs/study/accuracy_vs_depth.png)' in readme.read_text()
    assert (tmp_path / 'docs' / 'study' / 'accuracy_vs_depth.png').read_bytes() == b'png'
    readme.write_text('no markers')
    assert re.match('--write-readme=.*no <!-- results:start -->',
                    usage_error(['report', '--from', tmp_path / 'out' / 'study.json', '--write-readme', readme]))


def test_report_on_rows_that_share_no_seed_reports_them_unpaired(small_study, tmp_path, capsys):
    # finished rows whose baseline ran other seeds (e.g. --finished-only mid-study): no paired
    # difference exists, so the report says so instead of ending in paired()'s ValueError
    for row in small_study['summary']:
        if row['family'] == 'residual':
            row['seeds'] = [3, 4, 5]
    (tmp_path / 'study.json').write_text(json.dumps(small_study))
    assert main(['report', '--from', str(tmp_path / 'study.json')]) == 0
    printed = capsys.readouterr().out
    assert ('pnnh-56 (seeds 0, 1, 2) and residual-56 (seeds 3, 4, 5) share no seed, so they are not compared'
            in printed)
    assert '**Plain vs residual at depth 56**: plain-56 (seeds 0, 1, 2) and residual-56' in printed
    assert 'plain-56 vs plain-20: -43.0 +- 4.9 points over 3 seeds' in printed  # rows that do share seeds still compared
    assert 'not compared: ' in summary.quick_note(small_study['summary'], steps=10)


def test_tiny_study_end_to_end(fake_fashion_mnist, tmp_path, capsys):
    out = tmp_path / 'study'
    assert main(['study', '--data-dir', str(fake_fashion_mnist), '--out', str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith('| ') and 'resnet20' in line]
    assert [line.split('|')[2].strip() for line in table] == ['plain', 'residual', 'pnnh']
    assert 'Against the longest finished studies (depth 56' in printed and 'input retention at init' in printed
    assert '--write-readme' not in printed  # the demonstration's numbers never go into a results page
    result = json.loads((out / 'study.json').read_text())
    assert len(result['runs']) == 6 and result['seeds'] == [0, 1] and result['recipe']['steps'] == 2
    assert result['command'].startswith('timm-pnnh study --preset quick --seeds 0 1 --depths 20 --steps 2')
    pnnh = next(s for s in result['summary'] if s['family'] == 'pnnh')
    assert pnnh['blocks'] == 9 and len(pnnh['retention_trained']) == 9 and len(pnnh['test_accs']) == 2
    assert pnnh['params'] == sum(p.numel() for p in timm.create_model('pnnh_resnet20', num_classes=10, in_chans=1).parameters())
    assert main(['study', '--data-dir', str(fake_fashion_mnist), '--out', str(out), *TINY]) == 0
    assert capsys.readouterr().out.count('finished earlier, reused') == 6
    assert main(['report', '--from', str(out / 'study.json')]) == 0
    assert '**PNNH vs residual, pnnh-20 vs residual-20**' in capsys.readouterr().out


def test_study_without_the_dataset_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, 'DEBIAN_DIR', tmp_path / 'nowhere')
    assert main(['study', '--data-dir', str(tmp_path), '--out', str(tmp_path / 'o')]) == 2
    assert 'apt-get install -y dataset-fashion-mnist' in capsys.readouterr().err


TINY_CONVERGED = ['--preset', 'converged-cpu', '--depths', '20', '--seeds', '0', '1', '--epochs', '2', '--batch-size', '32',
                  '--train-size', '64', '--test-size', '32', '--diag-batch', '8', '--speed-repeats', '1']


@pytest.mark.slow
def test_tiny_converged_preset_end_to_end(fake_fashion_mnist, tmp_path, capsys):
    """The converged preset's code path on fake data: accuracy per epoch, the side-by-side speed figures,
    the fronts' plots and table, and a rerun that reuses both the runs and the speed report."""
    pytest.importorskip('matplotlib')
    out = tmp_path / 'converged'
    argv = ['study', '--data-dir', str(fake_fashion_mnist), '--out', str(out), *TINY_CONVERGED]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert '| model | epoch 1 | epoch 2 |' in printed
    assert 'Results page' not in printed and 'Against the longest' not in printed  # not the preset as defined
    result = json.loads((out / 'study.json').read_text())
    labels = [s['label'] for s in result['summary']]
    assert labels == ['plain-20', 'residual-20', 'pnnh-20', 'pnnh-20 learner_ratio=0.5', 'residual-20 block_reduce_first=2',
                      'pnnh-20 coder_ratio=0.5 learner_ratio=0.5', 'pnnh-20 coder_ratio=0.5 learner_ratio=0.5 coder_sharing=stage',
                      'pnnh-20 coder_ratio=0.25 learner_ratio=0.25', 'residual-20 block_reduce_first=4',
                      'pnnh-20 learner_ratio=0.25']
    assert result['recipe']['steps'] == 4 and result['epochs'] == 2 and result['recipe']['channels_last'] is True
    for s in result['summary']:
        assert [p['epoch'] for p in s['epochs']] == [1.0, 2.0] and s['epochs'][-1]['acc_mean'] == s['acc_mean']
        assert s['train_img_s'] > 0 and s['deploy_img_s'] > 0 and s['saved_mb'] > 0
    speed = json.loads((out / 'speed.json').read_text())
    assert speed['config']['reference'] == speed['settings']['specs']['residual-20']
    narrow = next(s for s in result['summary'] if s['label'] == 'residual-20 block_reduce_first=2')
    assert narrow['params'] == sum(p.numel() for p in timm.create_model(
        'cifar_resnet20', block_reduce_first=2, num_classes=10, in_chans=1).parameters())
    assert set(result['plots']) == {'accuracy_vs_epochs.png', 'accuracy_vs_params.png', 'accuracy_vs_train_speed.png',
                                    'accuracy_vs_deploy_speed.png', 'retention_vs_depth.png'}
    assert all((out / p).read_bytes().startswith(b'\x89PNG') for p in result['plots'])
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count('finished earlier, reused') == 20 and 'speed: measured earlier, reused' in again
    assert main(['report', '--from', str(out / 'study.json')]) == 0
    text = capsys.readouterr().out
    assert 'Test accuracy after each epoch' in text and '| PNNH row | axis |' in text
    assert '**Deployed throughput at equal accuracy**' in text


def speed_report(specs):
    """What ``bench.benchmark`` returns for ``specs``, with made-up figures."""
    figures = dict(params_m=0.3, train_img_s=100.0, infer_img_s=300.0, deploy_img_s=400.0, saved_mb=10.0, deploy_params_m=0.3)
    return dict(config=dict(device='cpu', device_name='Test CPU', threads=2, batch_size=8, channels_last=False, amp=None),
                results={spec: dict(figures) for spec in specs}, ratios={spec: dict(train_img_s=1.0) for spec in specs})


def test_speed_figures_are_reused_on_another_machine_unless_retimed(fake_fashion_mnist, tmp_path, monkeypatch):
    """A study resumes to the same tables on any machine: speed.json measured elsewhere for the same settings
    is reused and the log names its machine; other settings, or ``resume=False`` (--retime), measure again."""
    preset = _tiny_preset()
    rows = study.preset_rows(preset)[:2]
    loaded = study.load_data(preset, fake_fashion_mnist)
    timed = []
    monkeypatch.setattr(runs, 'benchmark', lambda specs, **kw: timed.append(specs) or speed_report(specs))
    out = tmp_path / 'out'

    def measure(repeats=1, resume=True):
        messages = []
        runs.measure_speed(rows, preset, loaded, out, repeats, resume, log=messages.append)
        return messages

    assert 'side by side' in measure()[0] and len(timed) == 1
    assert measure() == [f"speed: measured earlier, reused ({out / 'speed.json'})"] and len(timed) == 1
    elsewhere = json.loads((out / 'speed.json').read_text())
    elsewhere['settings']['hardware']['cpu'] = 'Other CPU'
    (out / 'speed.json').write_text(json.dumps(elsewhere))
    assert measure() == [f"speed: measured earlier on Other CPU, reused ({out / 'speed.json'}); --retime measures on "
                         "this machine"] and len(timed) == 1
    assert 'side by side' in measure(repeats=2)[0] and len(timed) == 2  # other settings
    assert 'side by side' in measure(repeats=2, resume=False)[0] and len(timed) == 3
    written = json.loads((out / 'speed.json').read_text())
    assert written['settings']['hardware'] == runs.hardware(preset.device)


def test_retime_is_recorded_in_the_study_command():
    args = _args(preset='converged-cpu', retime=True, finished_only=False)
    assert study.command.command_line(args).endswith('--retime')
    assert '--retime' not in study.command.command_line(_args(preset='converged-cpu', finished_only=False))


def test_rows_keep_the_named_rows_in_the_presets_order_and_the_command_quotes_them():
    args = _args(preset='vit-cpu', rows=['sasp-vit', 'pnnh-vit mlp_ratio=3.0'], finished_only=False)
    assert [row.label for row in study.preset_rows(study.resolve_preset(args))] == ['pnnh-vit mlp_ratio=3.0', 'sasp-vit']
    assert study.command.command_line(args) == "timm-pnnh study --preset vit-cpu --rows sasp-vit 'pnnh-vit mlp_ratio=3.0'"


def test_a_study_split_by_rows_between_two_commands_is_one_study(fake_fashion_mnist, tmp_path, capsys):
    """Two commands that share OUT/runs, each with its own --rows, train disjoint runs; the whole preset then
    finds every run finished."""
    out = tmp_path / 'study'
    base = ['study', '--data-dir', str(fake_fashion_mnist), '--out', str(out), '--preset', 'quick', '--depths', '20',
            '--seeds', '0', '--steps', '2', '--batch-size', '16', '--train-size', '64', '--test-size', '32',
            '--diag-batch', '8', '--speed-repeats', '0']
    assert main(base + ['--rows', 'pnnh-20']) == 0
    assert sorted(p.name for p in (out / 'runs').iterdir()) == ['pnnh-20-seed0.json']
    assert main(base + ['--rows', 'residual-20', 'plain-20']) == 0
    assert '--rows residual-20 plain-20' in json.loads((out / 'study.json').read_text())['command']
    capsys.readouterr()
    assert main(base + ['--finished-only']) == 0
    assert capsys.readouterr().out.count('finished earlier, reused') == 3
    assert json.loads((out / 'study.json').read_text())['pending'] == []


def test_unreadable_records_are_run_again(fake_fashion_mnist, tmp_path):
    preset = _tiny_preset()
    rows = study.preset_rows(preset)[:1]
    loaded = study.load_data(preset, fake_fashion_mnist)
    out = tmp_path / 'out'
    first = study.sweep(rows, preset, loaded, out, log=lambda m: None)[0]
    path = out / 'runs' / 'plain-20-seed0.json'
    text = path.read_text()
    for broken, why in [('', 'is not a JSON file (it is empty)'), (text[:len(text) // 2], 'is not a JSON file (cut off'),
                        ('not json', 'is not a JSON file (cut off or damaged at line 1 column 1'),
                        ('[1, 2]', 'is not a run record: the file=[1, 2] is not allowed: it must be an object'),
                        (json.dumps({'settings_digest': first['settings_digest']}), 'is not a run record: label is missing'),
                        (text.replace(f'"test_acc": {first["test_acc"]}', f'"test_acc": "{first["test_acc"]}"'),
                         f"is not a run record: test_acc='{first['test_acc']}' is not allowed: it must be a number in [0, 100]")]:
        path.write_text(broken)
        messages = []
        again = study.sweep(rows, preset, loaded, out, log=messages.append)[0]
        assert any(f'{path} {why}' in m and m.endswith('; running again') for m in messages), (why, messages)
        assert again['test_acc'] == first['test_acc'] and json.loads(path.read_text())['test_acc'] == first['test_acc']


def test_a_stopped_run_of_an_epoch_preset_continues_from_its_last_epoch(fake_fashion_mnist, tmp_path, monkeypatch):
    """Stopped in its second epoch, a run keeps the state saved after its first (a hidden file beside the
    records, not a record); the rerun continues from there, ends as a run never stopped does, and removes it."""
    preset = study.resolve_preset(_args(preset='converged-cpu', depths=[20], seeds=[0], epochs=2, batch_size=32,
                                        train_size=64, test_size=32, diag_batch=8))
    rows = study.preset_rows(preset)[:1]
    loaded = study.load_data(preset, fake_fashion_mnist)
    out = tmp_path / 'out'
    real = training.train_and_evaluate

    def stopped_in_epoch_2(*args, progress=None, **kwargs):
        def stop(step, loss):
            if step == preset.steps_per_epoch:
                raise KeyboardInterrupt
        return real(*args, progress=stop, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(runs.training, 'train_and_evaluate', stopped_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            study.sweep(rows, preset, loaded, out, log=lambda m: None)
    kept = [p.name for p in (out / 'runs').iterdir()]
    assert len(kept) == 1 and re.fullmatch(r'\.plain-20-seed0\.[0-9a-f]{16}\.state', kept[0]), kept
    messages = []
    record = study.sweep(rows, preset, loaded, out, log=messages.append)[0]
    assert any('continuing from the training state saved after its last finished epoch' in m for m in messages)
    assert record['resumed_step'] == preset.steps_per_epoch
    assert [p.name for p in (out / 'runs').iterdir()] == ['plain-20-seed0.json']
    never_stopped = study.sweep(rows, preset, loaded, tmp_path / 'again', log=lambda m: None)[0]
    assert never_stopped['resumed_step'] is None
    assert record['curve'] == never_stopped['curve'] and record['test_acc'] == never_stopped['test_acc']


def test_a_diverging_run_is_recorded_not_fatal(fake_fashion_mnist, tmp_path):
    from dataclasses import replace
    preset = _tiny_preset(steps=6)
    preset = replace(preset, recipe=replace(preset.recipe, lr=1e12, warmup_fraction=0.0))
    rows = [r for r in study.preset_rows(preset) if r.family == 'plain']
    records = study.sweep(rows, preset, study.load_data(preset, fake_fashion_mnist), tmp_path / 'out', log=lambda m: None)
    record = records[0]
    assert record['diverged_step'] is not None and 0 < record['diverged_step'] < 6
    summary = study.summarize(rows, records)
    assert summary[0]['diverged_seeds'] == [0] and study.fmt_acc(summary[0]).endswith('(one seed) (1 diverged)')
    assert '(1 diverged)' in study.study_table(summary)


# Runs the study CLI in a child process that interrupts itself at a known point: a real SIGINT (what Ctrl-C
# sends) to its own main thread, during run N's training (after its second SGD step) or half-way through writing
# run N's record. No timing: the same point on any machine, however fast or loaded.
INTERRUPTING_STUDY = r"""
import json, signal, sys
from pathlib import Path
from timm_pnnh import data, files
from timm_pnnh.cli import main
from timm_pnnh.study import runs

data.DEBIAN_DIR = Path(sys.argv[1])
point, n = sys.argv[2], int(sys.argv[3])
calls = dict(train=0, write=0)
real_train, real_write = runs.training.train_and_evaluate, runs.write_json


# as in an interactive shell (a runner may start the tests, and so this process, with SIGINT ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)


def ctrl_c():
    signal.raise_signal(signal.SIGINT)  # to this (the main) thread; delivered before raise_signal returns
    for _ in range(10 ** 6):  # Python raises the KeyboardInterrupt at this loop's first jump at the latest
        pass
    raise RuntimeError('SIGINT was not delivered')


def train(*args, progress=None, **kwargs):
    calls['train'] += 1
    if point == 'training' and calls['train'] == n:
        def interrupting(step, loss):
            progress(step, loss)
            if step == 1:
                ctrl_c()
        return real_train(*args, progress=interrupting, **kwargs)
    return real_train(*args, progress=progress, **kwargs)


def write_json(path, obj):
    calls['write'] += 1
    if point == 'writing' and calls['write'] == n:
        text = json.dumps(obj, indent=1)
        def half(f):
            f.write(text[:len(text) // 2])
            f.flush()
            ctrl_c()
        files.atomic_write(path, half)
    real_write(path, obj)


runs.training.train_and_evaluate, runs.write_json = train, write_json
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize('point', ['training', 'writing'])
def test_interrupted_study_leaves_only_complete_records_and_resumes(point, fake_fashion_mnist, tmp_path):
    """A real Ctrl-C (SIGINT) in the middle of the second of three runs: the process fails, runs/ holds the
    first run's complete record and nothing else (no half-written or temporary file), and a rerun reuses
    that record and runs the other two."""
    import os
    import signal
    import subprocess
    import sys
    out = tmp_path / 'out'
    debian = fake_fashion_mnist.parent / 'debian'
    argv = ['study', '--out', str(out), '--depths', '20', '--seeds', '0', '--steps', '3', '--batch-size', '16',
            '--train-size', '64', '--test-size', '32', '--diag-batch', '8', '--speed-repeats', '0']
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def study_process(point, n):
        return subprocess.run([sys.executable, '-c', INTERRUPTING_STUDY, str(debian), point, str(n), *argv],
                              env=env, capture_output=True, text=True)

    interrupted = study_process(point, 2)
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.stderr[-2000:]
    assert interrupted.stderr.strip().splitlines()[-1] == (
        f'timm-pnnh study: interrupted: the records of the finished runs are kept in {out / "runs"} (and, for a preset '
        'that counts epochs, the training state after the last finished epoch); run the same command to resume from them')
    assert 'Traceback' not in interrupted.stderr and 'SIGINT was not delivered' not in interrupted.stderr
    assert '[2/3] residual-20 seed 0' in interrupted.stdout and '[3/3]' not in interrupted.stdout
    files = sorted(p.name for p in (out / 'runs').iterdir())
    assert files == ['plain-20-seed0.json'], files  # no record of run 2, whole or half, and no temporary file
    first = study.read_record(out / 'runs' / files[0])
    assert first is not None and first['label'] == 'plain-20'
    first_bytes = (out / 'runs' / files[0]).read_bytes()

    resumed = study_process('none', 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count('finished earlier, reused') == 1 and '[1/3] plain-20 seed 0: finished earlier' in resumed.stdout
    assert '[2/3] residual-20 seed 0 (cifar_resnet20)' in resumed.stdout and '[3/3] pnnh-20 seed 0' in resumed.stdout
    assert sorted(p.name for p in (out / 'runs').iterdir()) == ['plain-20-seed0.json', 'pnnh-20-seed0.json',
                                                                'residual-20-seed0.json']
    assert (out / 'runs' / 'plain-20-seed0.json').read_bytes() == first_bytes
    assert [r['label'] for r in json.loads((out / 'study.json').read_text())['runs']] == ['plain-20', 'residual-20',
                                                                                         'pnnh-20']


def test_unwritable_output_folder_is_refused_before_training(fake_fashion_mnist, tmp_path, usage_error):
    import os
    import subprocess
    locked = tmp_path / 'locked'
    locked.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: make the folder immutable instead
        if subprocess.run(['chattr', '+i', str(locked)], capture_output=True).returncode != 0:
            pytest.skip('running as root and chattr +i is not available here')
    else:
        locked.chmod(0o500)
    try:
        message = usage_error(['study', '--data-dir', fake_fashion_mnist, '--out', locked / 'study', *TINY])
    finally:
        subprocess.run(['chattr', '-i', str(locked)], capture_output=True) if os.geteuid() == 0 else locked.chmod(0o700)
    assert message.startswith(f"--out={str(locked / 'study')!r}") and 'not writable' in message
    assert not (locked / 'study').exists()


def test_a_full_disk_is_refused_before_training(fake_fashion_mnist, tmp_path, monkeypatch, usage_error):
    import shutil
    real = shutil.disk_usage
    monkeypatch.setattr(runs.shutil, 'disk_usage', lambda path: real(path)._replace(free=1024))
    calls = []
    monkeypatch.setattr(runs.training, 'train_and_evaluate', lambda *a, **k: calls.append(a))
    message = usage_error(['study', '--data-dir', fake_fashion_mnist, '--out', tmp_path / 'study', *TINY])
    assert 'has 0.0 MiB free; the study needs about 7 MiB for 6 run records' in message and calls == []


@pytest.mark.parametrize('native', [False, True])
def test_a_bf16_preset_on_a_cpu_that_emulates_bf16_is_refused_unless_asked_for(native, fake_fashion_mnist, tmp_path,
                                                                              monkeypatch, usage_error):
    """long-cpu's bf16 autocast, emulated on a CPU without AVX-512 BF16 or AMX (its products in fp32 kernels),
    trains slower than fp32: the preset is refused there before anything runs, and runs when bf16 is native or
    asked for by name."""
    import torch
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: True)
    monkeypatch.setattr(training, 'cpu_flags', lambda cpuinfo=None: frozenset({'avx512f', 'avx512_bf16'} if native else {'avx512f'}))
    calls = []
    monkeypatch.setattr(runs, 'run_one', lambda *a, **k: calls.append(a[2].recipe.amp) or 1 / 0)
    argv = ['study', '--preset', 'long-cpu', '--data-dir', fake_fashion_mnist, '--out', tmp_path / 'study',
            '--train-size', '128', '--test-size', '32', '--diag-batch', '8']
    if not native:
        message = usage_error(argv)
        assert message.startswith('--preset=long-cpu trains with amp=bf16, which this CPU only emulates')
        assert '--amp bf16 to run it anyway' in message and calls == [] and not (tmp_path / 'study').exists()
        argv += ['--amp', 'bf16']
    with pytest.raises(ZeroDivisionError):  # training started: the stand-in for run_one stops it there
        main([str(a) for a in argv])
    assert calls == ['bf16']


@pytest.mark.parametrize('cpuinfo, onednn, native', [
    ('flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n', True, False),  # AVX-512, no bf16: emulated
    ('flags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n', True, True),
    ('flags\t\t: fpu avx2 amx_bf16 amx_tile\n', True, True),
    ('Features\t: fp asimd sve bf16 i8mm\n', True, True),  # Arm
    ('Features\t: fp asimd\n', True, False),
    ('flags\t\t: avx512f avx512_bf16\n', False, False),  # oneDNN without bf16 kernels
    (None, True, True),  # no /proc/cpuinfo: oneDNN's answer
    (None, False, False),
])
def test_native_bf16_needs_the_cpus_bf16_instructions_not_only_onednns_kernels(cpuinfo, onednn, native, tmp_path,
                                                                                monkeypatch):
    """oneDNN reports bf16 support on any AVX-512 CPU, where autocast is still emulated (many times slower
    than fp32): native bf16 also needs AVX-512 BF16, AMX or Arm's bf16 among the CPU's flags."""
    import torch
    monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported', lambda: onednn)
    path = tmp_path / 'cpuinfo'
    if cpuinfo is not None:
        path.write_text('processor\t: 0\nmodel name\t: a CPU\n' + cpuinfo)
    assert training.cpu_has_native_bf16(str(path)) is native


def test_finished_only_trains_nothing_and_reports_the_pending_runs(fake_fashion_mnist, tmp_path, capsys):
    """A study over several sittings: --finished-only summarizes, times and reports the finished runs and
    names the rest, without training them; the same command without the flag then trains only the rest."""
    out = tmp_path / 'study'
    base = ['study', '--data-dir', str(fake_fashion_mnist), '--out', str(out), '--preset', 'quick', '--depths', '20',
            '--steps', '2', '--batch-size', '16', '--train-size', '64', '--test-size', '32', '--diag-batch', '8',
            '--speed-repeats', '0']
    assert main(base + ['--seeds', '0']) == 0  # seed 0 of every row finished
    capsys.readouterr()
    assert main(base + ['--seeds', '0', '1', '--finished-only']) == 0
    printed = capsys.readouterr().out
    assert printed.count('not finished yet') == 3 and 'step 1/2' not in printed
    study = json.loads((out / 'study.json').read_text())
    assert study['pending'] == ['plain-20 seed 1', 'residual-20 seed 1', 'pnnh-20 seed 1']
    assert [s['seeds'] for s in study['summary']] == [[0], [0], [0]] and '--finished-only' in study['command']
    assert sorted(p.name for p in (out / 'runs').iterdir()) == ['plain-20-seed0.json', 'pnnh-20-seed0.json',
                                                                'residual-20-seed0.json']
    assert main(['report', '--from', str(out / 'study.json')]) == 0
    assert 'Not finished yet (`--finished-only`' in capsys.readouterr().out and 'plain-20 seed 1' in study['pending']
    assert main(base + ['--seeds', '0', '1']) == 0
    printed = capsys.readouterr().out
    assert printed.count('finished earlier, reused') == 3 and printed.count('test acc') >= 3
    assert json.loads((out / 'study.json').read_text())['pending'] == []


@pytest.mark.parametrize('amp, native, through_fp32', [('bf16', False, True), ('fp32', False, False)])
def test_a_run_record_says_whether_bf16_products_ran_in_fp32_kernels(amp, native, through_fp32, fake_fashion_mnist,
                                                                     monkeypatch):
    monkeypatch.setattr(training, 'cpu_has_native_bf16', lambda: native)
    preset = _tiny_preset(amp=amp)
    record = runs.run_one(study.preset_rows(preset)[0], 0, preset, study.load_data(preset, fake_fashion_mnist),
                          log=lambda m: None)
    assert record['bf16_through_fp32'] is through_fp32

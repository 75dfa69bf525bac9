"""The quick preset's note (how its short-schedule numbers compare with the longest finished studies) and
the line a study prints at its end: the report command for the results page, for its presets only."""
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

from timm_pnnh import report
from timm_pnnh.study import command, presets, summary
from timm_pnnh.study.summary import CONVERGED, CONVERGED_STUDY, LONGEST_STUDY, quick_note

ROOT = Path(__file__).resolve().parents[1]


def _row(label, family, depth, accs, r2_init, kwargs=None):
    curve = [dict(index=1, name='layer1.0', shape=[16, 28, 28], r2=0.9, cka=0.9, alive=0.5),
             dict(index=2, name='layer3.8', shape=[64, 7, 7], r2=r2_init, cka=r2_init, alive=0.5)]
    return dict(label=label, family=family, model=f'{family}_resnet{depth}', arch='resnet', depth=depth,
                model_kwargs=kwargs or {}, seeds=[0, 1, 2], test_accs=accs, acc_mean=float(np.mean(accs)),
                acc_std=float(np.std(accs, ddof=1)), retention_init=curve, retention_trained=curve)


def _quick(plain20, residual20, plain56, pnnh56, r2_plain56=0.08):
    return [_row('plain-20', 'plain', 20, plain20, 0.19), _row('residual-20', 'residual', 20, residual20, 0.69),
            _row('pnnh-20', 'pnnh', 20, [69.0, 68.5, 69.3], 0.69), _row('plain-56', 'plain', 56, plain56, r2_plain56),
            _row('residual-56', 'residual', 56, [70.9, 70.3, 71.4], 0.70), _row('pnnh-56', 'pnnh', 56, pnnh56, 0.70)]


def test_the_note_says_what_agrees_with_the_longest_studies():
    note = quick_note(_quick(plain20=[68.0, 68.1, 68.3], residual20=[68.5, 68.2, 68.7], plain56=[28.5, 10.5, 46.5],
                             pnnh56=[71.7, 70.8, 72.6]), 120)
    lines = note.splitlines()
    assert lines[0] == (f'Against the longest finished studies (depth 56, the whole training set: {LONGEST_STUDY}, 10 epochs; '
                        f'for the plain net, which it does not train, {CONVERGED_STUDY}, 3 epochs), these 120-step numbers:')
    assert lines[1:] == [
        '- agrees: plain-56 vs plain-20 -39.6 +- 17.9 points: the plain net fails with depth '
        '(3 epochs: plain-56 6.8 points behind residual-56).',
        '- agrees: pnnh-56 vs residual-56 +0.8 +- 0.4 points: on par, within 1 point (10 epochs: PNNH 0.3 +- 0.3 points '
        'behind, less than 2 std).',
        '- agrees: input retention at init, R^2 of the deepest block: plain-56 0.08, residual-56 0.70, pnnh-56 0.70: '
        'the plain net loses the input (the 3-epoch study: 0.10 / 0.70 / 0.70).',
        '- agrees: plain-20 vs residual-20 -0.3 +- 0.2 points: the plain net is not ahead '
        '(3 epochs: plain-56 6.8 points behind residual-56).',
    ]
    assert 'disagrees' not in note


def test_the_note_says_where_the_short_schedule_disagrees_and_why():
    note = quick_note(_quick(plain20=[75.7, 74.0, 77.3], residual20=[68.5, 68.2, 68.7], plain56=[76.0, 74.5, 78.0],
                             pnnh56=[60.0, 61.0, 59.5], r2_plain56=0.68), 120)
    lines = note.splitlines()[1:]
    assert lines[0] == ('- disagrees: plain-56 vs plain-20 +0.5 +- 0.2 points: 120 steps do not show the plain net failing '
                        'with depth; the 3-epoch study does (plain-56 6.8 points behind residual-56).')
    assert lines[1] == ('- disagrees: pnnh-56 vs residual-56 -10.7 +- 1.3 points: 120 steps leave PNNH behind by more than '
                        '1 point and 2 std; at 10 epochs PNNH is 0.3 +- 0.3 points behind, less than 2 std.')
    assert lines[2].startswith('- disagrees: input retention at init') and 'the plain net is not 0.05 below both' in lines[2]
    assert lines[3] == ('- disagrees: plain-20 vs residual-20 +7.2 +- 1.4 points: 120 steps favour the shallow plain net; '
                        'in the 3-epoch study plain-56 leads residual-56 after the first epoch '
                        '(71.3 vs 67.3) and ends 6.8 points behind (85.4 vs 92.2).')


def test_the_note_needs_rows_to_compare():
    rows = _quick([68.0, 68.1, 68.3], [68.5, 68.2, 68.7], [28.5, 10.5, 46.5], [71.7, 70.8, 72.6])
    assert quick_note([], 120) == ''
    one_depth = quick_note([r for r in rows if r['depth'] == 56], 120)  # no depth comparison, no shallow pair
    assert [line.split(':')[1].strip() for line in one_depth.splitlines()[1:]] == ['pnnh-56 vs residual-56 +0.8 +- 0.4 points',
                                                                                    'input retention at init, R^2 of the deepest block']
    one_seed = [dict(r, seeds=[0], test_accs=r['test_accs'][:1]) for r in rows]
    assert '(one seed, no spread)' in quick_note(one_seed, 120)


def _depth56(study, family):
    return next((s for s in study['summary'] if s['family'] == family and not s['model_kwargs'] and s['depth'] == 56
                 and s['arch'] == 'resnet'), None)


def test_the_references_are_the_longest_finished_studies():
    """No finished results study is longer than the one the note names for what it compares."""
    studies = [json.loads((ROOT / command.results_study(p)).read_text()) for p in command.RESULTS_PAGES
               if (ROOT / command.results_study(p)).is_file()]
    finished = [s for s in studies if not s.get('pending')]

    def longest(families):
        having = [s for s in finished if all(_depth56(s, f) for f in families)]
        return max(having, key=report.training_images)['command'].split('--out ')[1].split()[0]
    assert longest(('pnnh', 'residual')) == LONGEST_STUDY
    assert longest(('plain', 'residual', 'pnnh')) == CONVERGED_STUDY


def test_the_references_are_the_studies_numbers():
    study = json.loads((ROOT / CONVERGED_STUDY / 'study.json').read_text())
    assert study['command'].startswith('timm-pnnh study --preset converged-cpu') and study['epochs'] == summary.CONVERGED_EPOCHS
    for family, expected in CONVERGED.items():
        row = _depth56(study, family)
        assert row['epochs'][0]['epoch'] == 1 and row['epochs'][0]['acc_mean'] == pytest.approx(expected['first'], abs=0.005)
        assert row['acc_mean'] == pytest.approx(expected['last'], abs=0.005)
        assert row['retention_init'][-1]['r2'] == pytest.approx(expected['r2_init'], abs=0.005)
    study = json.loads((ROOT / LONGEST_STUDY / 'study.json').read_text())
    assert study['command'].startswith('timm-pnnh study --preset long-cpu') and study['epochs'] == summary.LONGEST_EPOCHS
    mean, std, _ = summary.paired(_depth56(study, 'pnnh'), _depth56(study, 'residual'))
    assert (mean, std) == (pytest.approx(summary.LONGEST_PNNH_GAP['mean'], abs=0.005),
                           pytest.approx(summary.LONGEST_PNNH_GAP['std'], abs=0.005))


def _args(**overrides):
    base = dict(preset='quick', seeds=None, depths=None, steps=None, batch_size=None, train_size=None, test_size=None,
                diag_batch=None, data_dir=None, out=None, resume=True, epochs=None, device=None, amp=None, speed_repeats=0, rows=None)
    return Namespace(**dict(base, **overrides))


@pytest.mark.parametrize('overrides, expected', [
    (dict(preset='quick'), None),
    (dict(preset='ablation'), None),
    (dict(preset='full'), None),
    (dict(preset='converged-cpu'), 'timm-pnnh report --from out/study.json --write-readme docs/results-converged-cpu.md'),
    (dict(preset='long-cpu'), 'timm-pnnh report --from out/study.json --write-readme docs/results-long-cpu.md'),
    (dict(preset='converged', device='cpu'), 'timm-pnnh report --from out/study.json --write-readme docs/results-gpu.md'),
    (dict(preset='converged-cpu', train_size=6400), None),  # a changed study is not the results page's
    (dict(preset='converged-cpu', seeds=[0]), None),
    (dict(preset='long-cpu', amp='fp32'), None),
    (dict(preset='vit-cpu', rows=['sasp-vit']), None),  # some of its rows: not the whole page
])
def test_only_a_converged_preset_proposes_the_results_page(overrides, expected):
    args = _args(**overrides)
    assert command.results_page_command(args, presets.resolve_preset(args), Path('out')) == expected


def test_the_report_writes_any_file_with_the_results_markers(tmp_path, capsys):
    from timm_pnnh.cli import main
    study = dict(command='timm-pnnh study --preset converged-cpu', preset='converged-cpu', date='2026-11-24T00:00:00+00:00',
                 hardware=dict(cpu='Test CPU', cpu_count=2, torch_threads=2, device='cpu', torch='2', timm='1'), epochs=None,
                 seeds=[0, 1, 2], recipe=dict(steps=10, batch_size=8, lr=0.1, warmup_fraction=0.1, weight_decay=5e-4),
                 data='Fashion-MNIST: test', train_seconds=60.0, plots=[], runs=[],
                 summary=[dict(r, blocks=2, params=1000, diverged_seeds=[], epochs=[], train_img_s=None, infer_img_s=None,
                               deploy_img_s=None, saved_mb=None, deploy_params_m=None)
                          for r in _quick([68.0, 68.1, 68.3], [68.5, 68.2, 68.7], [28.5, 10.5, 46.5], [71.7, 70.8, 72.6])])
    (tmp_path / 'study.json').write_text(json.dumps(study))
    page = tmp_path / 'docs' / 'results.md'
    page.parent.mkdir()
    page.write_text('# Results\n\n<!-- results:start -->\n<!-- results:end -->\n')
    assert main(['report', '--from', str(tmp_path / 'study.json'), '--write-readme', str(page)]) == 0
    assert '| pnnh-56 (`pnnh_resnet56`) | pnnh | 56 |' in page.read_text()

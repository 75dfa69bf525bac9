"""The files the project reads back are checked (``timm_pnnh.schema``), output paths are checked before the
work, user errors and Ctrl-C end in one line, and meaningless measurements are refused.

The property tests mutate valid files field by field (a wrong type, NaN, inf, a value out of range, a missing
key, a cut-off file): ``report`` and ``publish`` refuse them in one line naming the file and the field, or
work; a resumed study runs a bad record again; a bad speed.json is measured again. Never a traceback.
"""
import copy
import json
import math
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timm_pnnh import convert, files, hub, study
from timm_pnnh.cli import main
from timm_pnnh.errors import UsageError, check_output_dir
from timm_pnnh.study import runs
from test_study import _tiny_preset, speed_report

ROOT = Path(__file__).resolve().parents[1]
STUDY_JSON = ROOT / 'results/study-converged-cpu/study.json'
PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, max_examples=40,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MUTATIONS = ('wrong type', 'nan', 'inf', 'out of range', 'missing key')


def leaves(obj, path=()):
    """Every (path, value) of a JSON object, containers included (not the root)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = enumerate(obj)
    else:
        return []
    found = []
    for key, value in items:
        found.append((path + (key,), value))
        found += leaves(value, path + (key,))
    return found


def mutate(obj, path, kind):
    """A copy of ``obj`` with the field at ``path`` changed as ``kind`` says."""
    obj = copy.deepcopy(obj)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    if kind == 'missing key':
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif kind == 'wrong type':
        parent[key] = str(value) if not isinstance(value, str) else 12.5
    elif kind in ('nan', 'inf'):
        parent[key] = float(kind)
    else:
        parent[key] = -1e9 if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 1e9
    return obj


def write(path, obj, truncate=None):
    text = json.dumps(obj, indent=1)
    path.write_text(text[:truncate] if truncate is not None else text)


def mutations(obj, limit_paths=None):
    paths = [p for p, _ in leaves(obj)]
    if limit_paths:
        paths = [p for p in paths if p[0] in limit_paths]
    return st.tuples(st.sampled_from(paths), st.sampled_from(MUTATIONS))


def one_line(capsys, command, code):
    err = capsys.readouterr().err
    if code == 0:
        return None
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f'timm-pnnh {command}: error: '), err
    assert 'Traceback' not in err
    return lines[0]


# ------------------------------------------------------------------------------------ study.json -> report

STUDY = json.loads(STUDY_JSON.read_text())
STUDY = dict(STUDY, runs=STUDY['runs'][:2])  # smaller: the other runs are like them


@settings(**PROPERTY_SETTINGS)
@given(mutation=mutations(STUDY), cut=st.integers(0, 100))
def test_report_refuses_a_mutated_study_json_in_one_line_or_reports_it(mutation, cut, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp('report')
    path, kind = mutation
    source = folder / 'study.json'
    write(source, mutate(STUDY, path, kind))
    line = one_line(capsys, 'report', main(['report', '--from', str(source)]))
    if line is not None:
        assert f"--from='{source}' is not a study.json" in line
    write(source, STUDY, truncate=cut * len(json.dumps(STUDY, indent=1)) // 101)  # a cut-off file
    line = one_line(capsys, 'report', main(['report', '--from', str(source)]))
    assert line is not None and f"--from='{source}' is not a JSON file" in line


@pytest.mark.parametrize('value', ['12.5', None, 'missing', float('nan'), 101.0])
def test_report_names_the_file_field_and_value(value, tmp_path, usage_error):
    bad = copy.deepcopy(STUDY)
    if value == 'missing':
        del bad['summary'][0]['acc_mean']
    else:
        bad['summary'][0]['acc_mean'] = value
    write(tmp_path / 'study.json', bad)
    message = usage_error(['report', '--from', tmp_path / 'study.json'])
    field = 'summary[0].acc_mean is missing' if value == 'missing' else f'summary[0].acc_mean={value!r} is not allowed'
    assert message.startswith(f"--from='{tmp_path / 'study.json'}' is not a study.json of `timm-pnnh study`: {field}")


# ------------------------------------------------------------------------------- run records -> resume

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A finished tiny sweep (one run) on a small stand-in for Fashion-MNIST: its rows, preset, data, record."""
    import numpy as np
    from conftest import write_idx
    from timm_pnnh import data
    base = tmp_path_factory.mktemp('sweep')
    debian = base / 'debian'
    debian.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (('train', 256), ('t10k', 64)):
        labels = rng.integers(0, 10, n)
        write_idx(debian / f'{split}-images-idx3-ubyte.gz', rng.integers(0, 40, (n, 28, 28)) + labels[:, None, None] * 20)
        write_idx(debian / f'{split}-labels-idx1-ubyte.gz', labels)
    real = data.DEBIAN_DIR
    data.DEBIAN_DIR = debian
    try:
        preset = _tiny_preset()
        rows = study.preset_rows(preset)[:1]
        loaded = study.load_data(preset, base / 'root')
        record = study.sweep(rows, preset, loaded, base / 'out', log=lambda m: None)[0]
    finally:
        data.DEBIAN_DIR = real
    return rows, preset, loaded, record


def test_a_mutated_run_record_is_run_again_or_reused_whole(finished, tmp_path_factory, monkeypatch):
    rows, preset, loaded, record = finished
    calls = []
    monkeypatch.setattr(runs, 'run_one', lambda *a, **k: calls.append(1) or {k: v for k, v in record.items()
                                                                             if k not in ('settings', 'settings_digest')})

    @settings(**PROPERTY_SETTINGS)
    @given(mutation=mutations(record), cut=st.integers(0, 100))
    def check(mutation, cut):
        out = tmp_path_factory.mktemp('resume')
        path = out / 'runs' / f'{study.run_key(rows[0], 0)}.json'
        path.parent.mkdir()
        for truncate in (None, cut * len(json.dumps(record, indent=1)) // 101):
            write(path, mutate(record, *mutation) if truncate is None else record, truncate)
            calls.clear()
            messages = []
            again = study.sweep(rows, preset, loaded, out, log=messages.append)
            if calls:  # run again, saying why, and the record rewritten whole
                assert messages[0].endswith('running again'), messages
                assert json.loads(path.read_text())['test_acc'] == record['test_acc']
            else:  # reused: a valid record, which the summary and its table take
                assert truncate is None and 'finished earlier, reused' in messages[0]
                study.study_table(study.summarize(rows, again))
            assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    check()


# ------------------------------------------------------------------------------ speed.json -> measured again

def test_a_mutated_speed_json_is_measured_again_or_reused_whole(finished, tmp_path_factory, monkeypatch):
    rows, preset, loaded, record = finished
    timed = []
    monkeypatch.setattr(runs, 'benchmark', lambda specs, **kw: timed.append(1) or speed_report(specs))
    first = tmp_path_factory.mktemp('speed')
    runs.measure_speed(rows, preset, loaded, first, 1, log=lambda m: None)
    valid = json.loads((first / 'speed.json').read_text())

    @settings(**PROPERTY_SETTINGS)
    @given(mutation=mutations(valid, limit_paths=('config', 'results', 'ratios')), cut=st.integers(0, 100))
    def check(mutation, cut):
        out = tmp_path_factory.mktemp('speed')
        for truncate in (None, cut * len(json.dumps(valid, indent=1)) // 101):
            write(out / 'speed.json', mutate(valid, *mutation) if truncate is None else valid, truncate)
            timed.clear()
            messages = []
            report = runs.measure_speed(rows, preset, loaded, out, 1, log=messages.append)
            if timed:
                assert 'measuring again' in messages[0] or 'side by side' in messages[0], messages
            else:
                assert truncate is None and 'reused' in messages[0]
            study.study_table(study.summarize(rows, [record], report))
    check()


# ------------------------------------------------------------------------------ validate.py results -> publish

RESULT = dict(model='pnnh_resnet20.fmnist', top1=12.5, top1_err=87.5, top5=50.0, top5_err=50.0, param_count=0.27,
              img_size=28, crop_pct=1.0, interpolation='bilinear')


@settings(**PROPERTY_SETTINGS)
@given(mutation=mutations(RESULT), cut=st.integers(0, 100))
def test_publish_refuses_a_mutated_results_file_in_one_line_or_takes_it(mutation, cut, tmp_path_factory):
    path = tmp_path_factory.mktemp('results') / 'results.json'
    params = int(0.27e6)
    for truncate in (None, cut * len(json.dumps(RESULT, indent=1)) // 101):
        write(path, mutate(RESULT, *mutation) if truncate is None else RESULT, truncate)
        try:
            result = hub.load_results(str(path), 'pnnh_resnet20', 'fmnist', params)
        except UsageError as err:
            assert str(err).startswith(f"--results='{path}'") and '\n' not in str(err)
        else:
            assert truncate is None
            assert all(math.isfinite(result[k]) and 0 <= result[k] <= 100 for k in ('top1', 'top5'))


def test_publish_names_the_results_field(tmp_path):
    (tmp_path / 'r.json').write_text(json.dumps(dict(RESULT, param_count='0.28')))
    with pytest.raises(UsageError, match=r"--results='.*r.json' is not a validate.py --results-file .* entry: "
                                         r"param_count='0.28' is not allowed: it must be a number >= 0"):
        hub.load_results(str(tmp_path / 'r.json'), 'pnnh_resnet20', 'fmnist', int(0.27e6))


# ------------------------------------------------------------------------------ output paths, before the work

@pytest.mark.parametrize('output', ['afile', 'afile/sub', 'locked/sub'])
def test_convert_checks_its_output_before_converting(output, tmp_path, monkeypatch, usage_error):
    (tmp_path / 'afile').write_text('a file')
    (tmp_path / 'locked').mkdir()
    monkeypatch.setattr(convert, 'convert_checkpoint', lambda *a, **k: 1 / 0)  # the work: must not start
    real_mkstemp = files.tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # a read-only folder, also for root
        if Path(dir) == tmp_path / 'locked':
            raise PermissionError(13, 'Permission denied')
        return real_mkstemp(*args, dir=dir, **kwargs)
    monkeypatch.setattr('timm_pnnh.errors.tempfile.mkstemp', mkstemp)
    message = usage_error(['convert', '--checkpoint', 'x.pth', '--output', tmp_path / output])
    expected = {'afile': 'exists and is not a folder', 'afile/sub': "afile' exists and is not a folder",
                'locked/sub': "locked' is not writable (Permission denied)"}[output]
    assert message.startswith(f"--output='{tmp_path / output}'") and expected in message


def test_the_write_probe_has_a_name_of_its_own_and_is_removed(tmp_path, monkeypatch):
    names = []
    real = files.tempfile.mkstemp
    monkeypatch.setattr('timm_pnnh.errors.tempfile.mkstemp', lambda **kw: names.append(real(**kw)) or names[-1])
    check_output_dir('--out', str(tmp_path / 'study'))
    check_output_dir('--out', str(tmp_path / 'study'))
    assert len({n for _, n in names}) == 2 and list(tmp_path.iterdir()) == []  # unique per call, and removed


# ------------------------------------------------------------------------------ flags by name, Ctrl-C

def test_sizes_the_dataset_cannot_give_name_the_flag(fake_fashion_mnist, tmp_path, usage_error):
    message = usage_error(['study', '--data-dir', fake_fashion_mnist, '--out', tmp_path / 's', '--train-size', '10000000'])
    assert message == '--train-size=10000000 is not allowed: it must be in [1, 256] (the images of the dataset)'


def test_ctrl_c_ends_in_one_line_saying_what_was_kept(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(convert, 'convert_checkpoint', interrupted)
    assert main(['convert', '--checkpoint', 'x.pth', '--output', str(tmp_path / 'out')]) == 130
    err = capsys.readouterr().err
    assert err == (f"timm-pnnh convert: interrupted: --output='{tmp_path / 'out'}' is as it was or whole (the folder "
                   'is built aside and moved into place when whole)\n')
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_a_folder_is_replaced_waits_and_leaves_no_old_folder(tmp_path, monkeypatch):
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'old.txt').write_text('old')
    real = files.shutil.rmtree

    def rmtree_with_ctrl_c(path, *args, **kwargs):  # Ctrl-C while the old folder is being removed
        signal.raise_signal(signal.SIGINT)
        real(path, *args, **kwargs)
    monkeypatch.setattr(files.shutil, 'rmtree', rmtree_with_ctrl_c)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        files.build_folder(target, lambda folder: (folder / 'new.txt').write_text('new'))
    assert [p.name for p in tmp_path.iterdir()] == ['out'] and [p.name for p in target.iterdir()] == ['new.txt']


# ------------------------------------------------------------------------------ meaningless measurements

@pytest.mark.parametrize('argv, message', [
    (['--model', 'pnnh_resnet20', '--batch-size', '1'], '--batch-size=1 is not allowed: it must be >= 8'),
    (['--model', 'pnnh_resnet20', '--batch-size', '2'], '--batch-size=2 is not allowed: it must be >= 8'),
    (['--model', 'pnnh_vit_tiny_patch4_32', '--img-size', '30', '--batch-size', '8'],
     '--img-size=30 is not allowed for pnnh_vit_tiny_patch4_32: its 4x4 patches cover 28 of the 30 pixels per side'),
])
def test_diagnose_refuses_inputs_that_make_the_measures_meaningless(argv, message, tmp_path, usage_error):
    assert usage_error(['diagnose', *argv, '--out', tmp_path / 'd']).startswith(message)
    assert not (tmp_path / 'd').exists()


def test_study_refuses_a_retention_batch_too_small(fake_fashion_mnist, tmp_path, usage_error):
    message = usage_error(['study', '--data-dir', fake_fashion_mnist, '--out', tmp_path / 's', '--train-size', '64',
                                    '--test-size', '32', '--diag-batch', '2'])
    assert message.startswith('--diag-batch=2 is not allowed: it must be >= 8')

"""Every sub-command turns a user error into one argparse-style line on stderr and exit code 2 (the
``usage_error`` fixture checks both); a bug keeps its traceback."""
import fractions
import json
import re
from pathlib import Path

import pytest
import timm
import torch

from timm_pnnh import catalog, data
from timm_pnnh.cli import main
from timm_pnnh.checkpoint import load_weights, read_checkpoint
from timm_pnnh.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = "--model='nonexistent_model' is not a timm model; see `timm-pnnh models --names-only`"


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Named files for the error cases: a README without markers, a broken JSON, a JSON that is no
    study, checkpoints (of cifar_resnet20 at 10 classes, of another net, damaged, needing pickle)."""
    monkeypatch.setattr(data, 'DEBIAN_DIR', tmp_path / 'no-dataset-here')
    paths = dict(tmp=tmp_path, missing=tmp_path / 'missing.pth', folder=tmp_path)
    paths['plain'] = tmp_path / 'plain.md'
    paths['plain'].write_text('a README without markers\n')
    paths['broken_json'] = tmp_path / 'broken.json'
    paths['broken_json'].write_text('{"summary": [')
    paths['not_study'] = tmp_path / 'other.json'
    paths['not_study'].write_text(json.dumps({'model': 'x', 'top1': 1.0}))
    torch.manual_seed(0)
    weights = timm.create_model('cifar_resnet20', num_classes=10, in_chans=1).state_dict()
    paths['resnet20'] = tmp_path / 'resnet20.pth'
    torch.save({'state_dict': weights, 'epoch': 3}, paths['resnet20'])
    paths['other_arch'] = tmp_path / 'resnet32.pth'
    torch.save(timm.create_model('cifar_resnet32', num_classes=10, in_chans=1).state_dict(), paths['other_arch'])
    paths['damaged'] = tmp_path / 'damaged.pth'
    paths['damaged'].write_bytes(paths['resnet20'].read_bytes()[:2000])
    paths['pickled'] = tmp_path / 'pickled.pth'
    torch.save({'state_dict': weights, 'note': fractions.Fraction(1, 3)}, paths['pickled'])
    return paths


DIAGNOSE = ['diagnose', '--batch-size', '8', '--img-size', '12']
CASES = [
    # models
    (['models', '--filter', 'zzz*'], r"--filter='zzz\*' matches no registered model"),
    (['models', '--names-only', '--write-readme', '{missing}'], r"--write-readme='.*missing.pth': no such file"),
    (['models', '--filter', 'pnnh_resnet20', '--write-readme', '{plain}'],
     r"--write-readme='.*plain.md': the file has no <!-- models-table:start --> \.\.\. <!-- models-table:end --> block"),
    # diagnose
    ([*DIAGNOSE, '--model', 'nonexistent_model'], NO_MODEL),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', '{missing}'], r"--checkpoint='.*missing.pth': no such file"),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', '{folder}'], r"--checkpoint='.*' is not a file"),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', '{other_arch}'],
     r"--checkpoint='.*resnet32.pth' is a checkpoint of another architecture than cifar_resnet20: "
     r"72 unexpected keys \['layer1.3.bn1.bias', .*is --model='cifar_resnet20' with --num-classes=10"),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--num-classes', '5', '--checkpoint', '{resnet20}'],
     r"--checkpoint='.*resnet20.pth' is a checkpoint of another architecture .* 2 shape mismatches"
     r' \[.fc.weight: checkpoint \(10, 64\) vs model \(5, 64\)'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', '{damaged}'],
     r"--checkpoint='.*damaged.pth' is truncated \(2,000 bytes; the end of its zip archive.* is missing\): give a "
     r'checkpoint written by torch.save'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', '{pickled}'],
     r"--checkpoint='.*pickled.pth' holds Python objects other than tensors.*give --unsafe-pickle"),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--model', 'pnnh_resnet20', '--checkpoint', '{resnet20}'],
     r'--checkpoint given 1 times for 2 --model'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--batch-size', '0'], r'--batch-size=0 is not allowed: it must be >= 1'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--img-size', '-2'], r'--img-size=-2 is not allowed: it must be >= 1'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--in-chans', '0'], r'--in-chans=0 is not allowed'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--num-classes', '0'], r'--num-classes=0 is not allowed'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--alpha', '0'], r'--alpha=0.0 is not allowed: it must be > 0'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--alpha', 'inf'], r'--alpha=inf is not allowed: it must be a finite'),
    ([*DIAGNOSE, '--model', 'cifar_resnet20', '--out', '{plain}/sub'], r"--out='.*plain.md/sub': '.*plain.md' exists "
                                                                        r'and is not a folder'),
    # study (values checked before the sweep)
    (['study', '--depths', '21'], r'--depths value 21 is not allowed: the registered CIFAR-style ResNet depths are 20, 32'),
    (['study', '--seeds', '1', '1'], r'--seeds=\[1, 1\] is not allowed: give distinct values'),
    (['study', '--steps', '0'], r'--steps=0 is not allowed: it must be >= 1'),
    (['study', '--batch-size', '-1'], r'--batch-size=-1 is not allowed: it must be >= 1'),
    (['study', '--train-size', '0'], r'--train-size=0 is not allowed: it must be >= 1'),
    (['study', '--preset', 'quick', '--epochs', '0'], r'--epochs=0 is not allowed: it must be >= 1'),
    (['study', '--device', 'tpu'], r"--device='tpu': it must be 'cpu', 'cuda' or 'cuda:N'"),
    (['study', '--data-dir', '{tmp}'], r"--data-dir='.*': Fashion-MNIST not found"),
    # report
    (['report', '--from', 'missing.json'], r"--from='missing.json': no such file"),
    (['report', '--from', '{broken_json}'], r"--from='.*broken.json' is not a JSON file \(cut off or damaged at line 1 column 14: .*\); give a study.json"),
    (['report', '--from', '{not_study}'], r"--from='.*other.json' is not a study.json of `timm-pnnh study`: command is missing"),
    # publish (its checks on the checkpoint, results and folder: test_hub.py)
    (['publish', '--checkpoint', '{missing}', '--results', 'r.json', '--output', '{tmp}/out', '--train-config', 'c.yaml'],
     r"--checkpoint='.*missing.pth': no such file"),
    # bench (the models and numbers are checked by argparse while parsing: test_bench.py)
    (['bench', '--model', 'cifar_resnet20', '--json', '{folder}'], r"--json='.*' is a folder; give a file name"),
]


@pytest.mark.parametrize('argv, message', CASES, ids=[' '.join(a[:1] + a[-2:]) for a, _ in CASES])
def test_user_error_is_one_line_with_exit_code_2(argv, message, files, usage_error):
    error = usage_error([a.format(**files) for a in argv])
    assert re.fullmatch(message + '.*', error), error


def test_report_refuses_plots_dir_under_a_file(files, usage_error, tmp_path):
    (tmp_path / 'study.json').write_bytes((ROOT / 'results/study-converged-cpu/study.json').read_bytes())
    readme = tmp_path / 'README.md'
    readme.write_text('<!-- results:start -->\n<!-- results:end -->\n')
    assert re.fullmatch(r"--write-readme='.*plain.md': the file has no <!-- results:start --> .*",
                        usage_error(['report', '--from', tmp_path / 'study.json', '--write-readme', files['plain']]))
    assert re.fullmatch(r"--plots-dir='.*plain.md/plots': '.*plain.md' exists and is not a folder",
                        usage_error(['report', '--from', tmp_path / 'study.json', '--write-readme', readme,
                                     '--plots-dir', 'plain.md/plots']))


def test_study_refuses_out_under_a_file(fake_fashion_mnist, tmp_path, usage_error):
    (tmp_path / 'plain.md').write_text('a file')
    assert re.fullmatch(r"--out='.*plain.md/study': '.*plain.md' exists and is not a folder",
                        usage_error(['study', '--data-dir', fake_fashion_mnist, '--out', tmp_path / 'plain.md/study']))


def test_unsafe_pickle_loads_a_checkpoint_with_python_objects_when_asked(files, tmp_path, capsys):
    assert main([*DIAGNOSE, '--model', 'cifar_resnet20', '--checkpoint', str(files['pickled']), '--unsafe-pickle',
                 '--out', str(tmp_path / 'out')]) == 0
    assert (tmp_path / 'out' / 'diagnose.json').is_file()


def test_weights_load_exactly_and_safetensors_files_are_read_without_pickle(files, tmp_path):
    from safetensors.torch import save_file
    model = timm.create_model('cifar_resnet20', num_classes=10, in_chans=1)
    load_weights(model, '--checkpoint', str(files['resnet20']))
    expected = torch.load(files['resnet20'], weights_only=True)['state_dict']
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    save_file(expected, tmp_path / 'w.safetensors')
    assert read_checkpoint('--checkpoint', str(tmp_path / 'w.safetensors')).keys() == expected.keys()
    (tmp_path / 'bad.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(UsageError, match=r"--checkpoint='.*bad.safetensors' is not a safetensors file"):
        read_checkpoint('--checkpoint', str(tmp_path / 'bad.safetensors'))


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(pattern=''):
        raise KeyError('a bug')
    monkeypatch.setattr(catalog, 'registered_models', broken)
    with pytest.raises(KeyError, match='a bug'):
        main(['models'])


def test_argparse_errors_keep_argparse_exit_code(capsys):
    with pytest.raises(SystemExit) as info:
        main(['models', '--format', 'xml'])
    assert info.value.code == 2 and "argument --format: invalid choice: 'xml'" in capsys.readouterr().err

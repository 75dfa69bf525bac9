"""Every command that reads a checkpoint reads it through ``checkpoint.read_checkpoint`` / ``check_checkpoint_file``:
a missing, empty, truncated or foreign file ends the command with one line naming the parameter and the file,
exit code 2, and no traceback, whichever command it is."""
import os
import pickle
import re
import subprocess
import sys
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from timm_pnnh.checkpoint import check_checkpoint_file, read_checkpoint
from timm_pnnh.errors import UsageError
from timm_pnnh.run import checkpoint_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HINT = r': give a checkpoint written by torch\.save \(.*\) or a \.safetensors file'


def _torch_bytes(tmp_path, **kwargs) -> bytes:
    path = tmp_path / 'complete.pth'
    torch.save({'state_dict': {'w': torch.arange(600.0)}, 'epoch': 1}, path, **kwargs)
    data = path.read_bytes()
    path.unlink()
    return data


def _safetensors_bytes(tmp_path) -> bytes:
    path = tmp_path / 'complete.safetensors'
    save_file({'w': torch.arange(600.0)}, str(path))
    data = path.read_bytes()
    path.unlink()
    return data


def _foreign_zip(path):
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('notes.txt', 'not a checkpoint')


# file name -> (what to write: bytes, a function of the path, or None for no file; the expected problem)
BAD_FILES = {
    'missing.pth': (None, r': no such file'),
    'empty.pth': (lambda tmp: b'', r' is empty \(0 bytes\)' + HINT),
    'truncated.pth': (lambda tmp: _torch_bytes(tmp)[:1500],
                      r' is truncated \(1,500 bytes; the end of its zip archive, which torch\.save writes last, is '
                      r'missing\)' + HINT),
    'text.pth': (lambda tmp: b'model: resnet50\nepochs: 3\n', r" is a text file, not a checkpoint \(it starts with "
                                                              r"'model: resnet50\\nepoc'\)" + HINT),
    'other.zip': (lambda tmp: _foreign_zip, r' is a zip archive that torch\.save did not write \(it holds no data\.pkl\)'
                                            + HINT),
    'plain.pkl': (lambda tmp: pickle.dumps({'w': [1.0, 2.0]}), r' is a Python pickle that torch\.save did not write'),
    'truncated.safetensors': (lambda tmp: _safetensors_bytes(tmp)[:-100],
                              r' is truncated \([\d,]+ bytes of the [\d,]+ bytes its header describes\)' + HINT),
    'foreign.safetensors': (lambda tmp: b'\xff' * 64, r' is not a safetensors file \(no safetensors header\)' + HINT),
}


def _write_bad_file(tmp_path, name):
    content = BAD_FILES[name][0]
    path = tmp_path / name
    if content is not None:
        data = content(tmp_path)
        data(path) if callable(data) else path.write_bytes(data)
    return path


def _stand_in_script(tmp_path):
    """A stand-in for validate.py: imports timm and would write a marker if it ran."""
    script = tmp_path / 'validate.py'
    script.write_text(f'import timm\nopen({str(tmp_path / "ran")!r}, "w").close()\n')
    return script


COMMANDS = {
    'diagnose': lambda tmp, ckpt: ['diagnose', '--model', 'cifar_resnet20', '--checkpoint', ckpt, '--out', tmp / 'out'],
    'convert': lambda tmp, ckpt: ['convert', '--checkpoint', ckpt, '--model', 'resnet18', '--output', tmp / 'out'],
    'publish': lambda tmp, ckpt: ['publish', '--dry-run', '--checkpoint', ckpt, '--results', tmp / 'results.json',
                                  '--train-config', tmp / 'config.yaml', '--output', tmp / 'out'],
    'run': lambda tmp, ckpt: ['run', _stand_in_script(tmp), '--model', 'pnnh_resnet20', '--checkpoint', ckpt],
}


@pytest.mark.parametrize('name', list(BAD_FILES))
@pytest.mark.parametrize('command', list(COMMANDS))
def test_a_bad_checkpoint_is_one_line_naming_the_parameter_and_the_file(command, name, tmp_path, usage_error):
    path = _write_bad_file(tmp_path, name)
    error = usage_error(COMMANDS[command](tmp_path, path))
    assert re.fullmatch(re.escape(f'--checkpoint={str(path)!r}') + BAD_FILES[name][1] + '.*', error), error
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'ran').exists()  # refused before any work


@pytest.mark.parametrize('name', list(BAD_FILES))
def test_the_reader_and_the_check_agree(name, tmp_path):
    path = _write_bad_file(tmp_path, name)
    for reader in (read_checkpoint, check_checkpoint_file):
        with pytest.raises(UsageError) as info:
            reader('--weights', str(path))
        assert re.fullmatch(re.escape(f'--weights={str(path)!r}') + BAD_FILES[name][1] + '.*', str(info.value))


def test_a_truncated_legacy_format_checkpoint_is_refused_when_read(tmp_path):
    """torch.save's pre-zip format has no end marker: the framing looks right, loading finds the end early."""
    path = tmp_path / 'legacy.pth'
    complete = _torch_bytes(tmp_path, _use_new_zipfile_serialization=False)
    path.write_bytes(complete)
    assert torch.equal(read_checkpoint('--checkpoint', str(path))['state_dict']['w'], torch.arange(600.0))
    path.write_bytes(complete[:-200])
    with pytest.raises(UsageError, match=re.escape(f'--checkpoint={str(path)!r} is truncated') + '.*' + HINT):
        read_checkpoint('--checkpoint', str(path))


def test_good_files_pass_the_check(tmp_path):
    (tmp_path / 'a.pth').write_bytes(_torch_bytes(tmp_path))
    (tmp_path / 'b.pth').write_bytes(_torch_bytes(tmp_path, _use_new_zipfile_serialization=False))
    (tmp_path / 'c.safetensors').write_bytes(_safetensors_bytes(tmp_path))
    for name in ('a.pth', 'b.pth', 'c.safetensors'):
        assert check_checkpoint_file('--checkpoint', str(tmp_path / name)) == str(tmp_path / name)


def test_run_finds_the_checkpoint_options_of_timms_scripts():
    args = ['--model', 'x', '--checkpoint', 'a.pth', '--resume=b.pth.tar', '--initial-checkpoint', '',
            '--pretrained-path', 'c.safetensors', '--resume', '--amp']
    assert checkpoint_arguments(args) == [('--checkpoint', 'a.pth'), ('--resume', 'b.pth.tar'),
                                          ('--pretrained-path', 'c.safetensors')]


@pytest.mark.slow
def test_run_names_the_scripts_option_and_does_not_start_the_script(tmp_path):
    script = _stand_in_script(tmp_path)
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-m', 'timm_pnnh.run', str(script), '--resume', 'empty.pth.tar'],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ''
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m timm_pnnh.run: error: --resume='empty.pth.tar' is empty "
                                                   '(0 bytes): give a checkpoint'), proc.stderr
    assert not (tmp_path / 'ran').exists()


def test_one_module_extracts_compares_and_writes(tmp_path):
    from timm_pnnh.checkpoint import mismatches, save_checkpoint, state_dict_of
    w = torch.zeros(2, 3)
    wrapped = {'state_dict': {'module.fc.weight': w}, 'state_dict_ema': {'fc.weight': w + 1}, 'epoch': 3}
    assert list(state_dict_of(wrapped, 'state_dict')) == ['fc.weight']  # DataParallel's prefix removed
    assert state_dict_of(wrapped, 'model') is None and state_dict_of(w, 'state_dict') is None
    assert torch.equal(state_dict_of(wrapped)['fc.weight'], w + 1)  # timm's order: the EMA first
    model = {'fc.weight': torch.zeros(2, 4), 'fc.bias': torch.zeros(2)}
    given = {'fc.weight': w, 'head.bias': w}
    assert mismatches(model, model) == ''
    assert mismatches(model, given) == ("1 missing keys ['fc.bias'], 1 unexpected keys ['head.bias'], "
                                        "1 shape mismatches ['fc.weight: checkpoint (2, 3) vs model (2, 4)']")
    assert mismatches(model, given, shapes=False, ignore=('fc.', 'head.')) == ''
    save_checkpoint({'state_dict': model}, tmp_path / 'c.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['c.pth']  # no temporary file left
    assert read_checkpoint('--checkpoint', str(tmp_path / 'c.pth'))['state_dict'].keys() == model.keys()

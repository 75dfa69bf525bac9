"""``timm-pnnh run``: script checks, argument and exit-code pass-through, torchrun and error paths.

These use small stand-in scripts written by the tests (they import timm, as timm's scripts do), so
they need no copy of timm's repository and run in CI always.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from timm_pnnh import cli
from timm_pnnh.run import check_script, run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    return env


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def echo_script(tmp_path):
    """Prints what a timm script would see, then exits with the code given as its first argument."""
    return _write(tmp_path / 'echo.py', """
        import sys
        import timm
        print('name', __name__)
        print('argv', sys.argv)
        print('registered', timm.is_model('pnnh_resnet20'))
        print('path0', sys.path[0])
        if sys.argv[1:2] != ['none']:
            sys.exit(int(sys.argv[1]))
    """)


@pytest.mark.parametrize('entry', [pytest.param(['-m', 'timm_pnnh', 'run'], marks=pytest.mark.slow), ['-m', 'timm_pnnh.run']])
def test_arguments_output_and_exit_code_pass_through(entry, echo_script, tmp_path):
    proc = subprocess.run([sys.executable, *entry, echo_script, '3', '--model', 'x', '-h'],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ['name __main__', f"argv {[echo_script, '3', '--model', 'x', '-h']}", 'registered True',
                     f'path0 {tmp_path}']


def test_script_that_returns_gives_zero(echo_script, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    assert cli.main(['run', echo_script, 'none']) == 0
    assert 'argv' in capsys.readouterr().out


def test_script_exit_code_propagates_in_process(echo_script, monkeypatch):
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    with pytest.raises(SystemExit) as info:
        run_script(echo_script, ['5'])
    assert info.value.code == 5


def test_missing_script_is_an_error(tmp_path, capsys):
    missing = str(tmp_path / 'train.py')
    with pytest.raises(SystemExit) as info:
        cli.main(['run', missing, '--model', 'pnnh_resnet20'])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f'SCRIPT={missing!r} is not a file' in err and 'timm-pnnh run' in err


@pytest.mark.parametrize('text, reason', [
    ('import torch\nprint("hi")\n', 'is not a timm script: it does not import timm'),
    ('from .timm import x\n', 'is not a timm script: it does not import timm'),
    ('import timmy\n', 'is not a timm script: it does not import timm'),
    ('model: resnet50\nmean:\n  - 0.5\n', 'is not a Python script'),
])
def test_non_timm_script_is_an_error(tmp_path, text, reason):
    script = _write(tmp_path / 'script.py', text)
    with pytest.raises(ValueError, match=reason):
        check_script(script)


@pytest.mark.parametrize('text', ['import timm\n', 'from timm.data import create_dataset\n',
                                  'import os, timm.utils as u\n', 'def f():\n    from timm import utils\n'])
def test_timm_scripts_are_accepted(tmp_path, text):
    script = _write(tmp_path / 'script.py', text)
    assert check_script(script) == os.path.abspath(script)


@pytest.mark.slow
def test_non_timm_script_exits_before_running(tmp_path):
    marker = tmp_path / 'ran'
    script = _write(tmp_path / 'script.py', f'open({str(marker)!r}, "w").close()\n')
    proc = subprocess.run([sys.executable, '-m', 'timm_pnnh.run', script], capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 2
    assert 'is not a timm script' in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_torchrun_target(tmp_path):
    """``torchrun -m timm_pnnh.run SCRIPT``: each rank runs the script, joins the group timm's way."""
    script = _write(tmp_path / 'dist.py', """
        import sys
        import timm
        import torch
        import torch.distributed as dist
        from timm.utils.distributed import init_distributed_device_so
        info = init_distributed_device_so(device='cpu')
        total = torch.tensor([float(info['global_rank'] + 1)])
        dist.all_reduce(total)
        with open(f"rank{info['global_rank']}.txt", 'w') as f:  # one file per rank: stdout lines interleave
            f.write(f"rank {info['global_rank']} of {info['world_size']} sum {total.item():g} "
                    f"registered {timm.is_model('pnnh_resnet20')} args {sys.argv[1:]}")
        dist.destroy_process_group()
    """)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
         '-m', 'timm_pnnh.run', script, '--x', '1'],
        capture_output=True, text=True, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        assert (tmp_path / f'rank{r}.txt').read_text() == f"rank {r} of 2 sum 3 registered True args ['--x', '1']"

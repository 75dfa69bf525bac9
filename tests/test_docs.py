"""Every code block a user would paste from README.md and docs/ works.

* ``python`` blocks run as written, each in a fresh process in an empty folder, network-free: timm's Hub
  repositories they load from are served by the local Hub server (``local_hub``), with random weights in
  timm's layout.
* ``bash`` blocks: every ``timm-pnnh`` command is parsed by the command's own parser (so a renamed option,
  sub-command or preset fails here); every ``--model`` value of a ``timm-pnnh`` or timm script command is a
  model timm knows; every ``train_configs/`` file named exists.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from timm.models._hub import save_for_hf

from timm_pnnh.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
FENCE = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)
# the Hub repositories the snippets load from (served with random weights)
SNIPPET_SOURCES = {'timm/resnet34.a1_in1k': 'resnet34'}


def blocks(language: str):
    """(page, line, code) of every fenced block in ``language``."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((page.relative_to(ROOT).as_posix(), text[:match.start()].count('\n') + 1, match.group(2)))
    return found


def _id(block):
    return f'{block[0]}:{block[1]}'


def commands(code: str):
    """The simple commands of a bash block: continuations joined, comments dropped, split at && ; || | & { },
    leading ``NAME=value`` assignments dropped."""
    for line in code.replace('\\\n', ' ').splitlines():
        lexer = shlex.shlex(line.replace('<run>', 'RUN'), posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, '#'
        argv = []
        for token in list(lexer) + [';']:
            if token in ('&&', '||', ';', '|', '&', '{', '}', '(', ')', '$'):
                if argv:
                    yield argv
                argv = []
            elif argv or not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*=.*', token):
                argv.append(token)


PYTHON_BLOCKS = blocks('python')
BASH_BLOCKS = blocks('bash')


def test_the_pages_have_snippets():
    assert len(PYTHON_BLOCKS) >= 3 and len(BASH_BLOCKS) >= 8, (len(PYTHON_BLOCKS), len(BASH_BLOCKS))


@pytest.fixture(scope='module')
def hub_repos(tmp_path_factory):
    """``SNIPPET_SOURCES`` saved as timm lays out its Hub repositories, with random weights."""
    folders = {}
    for repo, arch in SNIPPET_SOURCES.items():
        folders[repo] = tmp_path_factory.mktemp(arch)
        save_for_hf(timm.create_model(arch), folders[repo], safe_serialization=True)
    return folders


@pytest.mark.slow
@pytest.mark.parametrize('block', PYTHON_BLOCKS, ids=_id)
def test_python_snippet_runs(block, tmp_path, local_hub, hub_repos):
    page, line, code = block
    local_hub.serve(hub_repos)
    work = tmp_path / 'work'
    work.mkdir()
    result = subprocess.run([sys.executable, '-c', code], cwd=work, env=local_hub.env, capture_output=True, text=True)
    assert result.returncode == 0, f'{page}:{line} failed:\n{result.stderr[-3000:]}'
    assert 'False' not in result.stdout, f'{page}:{line} printed {result.stdout!r}'


@pytest.mark.parametrize('block', BASH_BLOCKS, ids=_id)
def test_bash_snippet_commands_exist(block, monkeypatch):
    page, line, code = block
    monkeypatch.setattr('torch.cuda.is_available', lambda: True)  # GPU commands parse on any machine
    parser = build_parser()
    for argv in commands(code):
        where = f'{page}:{line}: {" ".join(argv)}'
        if argv[0] == 'timm-pnnh':
            if argv[1:2] == ['run']:
                continue  # the rest is the script's own command line
            try:
                parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f'{where}: timm-pnnh does not accept this')
        scripted = argv[0] in ('timm-pnnh', 'python', 'python3', 'torchrun', 'srun')
        for flag, value in zip(argv, argv[1:]):
            if scripted and flag == '--model':
                assert timm.is_model(value.split(':')[0]), f'{where}: --model {value} is not a model timm knows'
        for word in argv:
            if word.startswith('train_configs/'):
                assert (ROOT / word).is_file(), f'{where}: {word} does not exist'

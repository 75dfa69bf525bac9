"""The results pages and their index: every page's Results regenerate from its study.json, the README's
Results and the model card's Evaluation are the index ``timm-pnnh report --write-index`` writes, and
they quote each page's "In short" line verbatim (so nothing they say contradicts a page)."""
import json
import re
import shutil
from pathlib import Path

import pytest

from timm_pnnh import report
from timm_pnnh.cli import main
from timm_pnnh.study.command import RESULTS_PAGES, results_study

ROOT = Path(__file__).resolve().parents[1]
INDEXED = ('README.md', 'MODEL_CARD.md')
FINISHED = [preset for preset in RESULTS_PAGES if (ROOT / results_study(preset)).is_file()]


def between(text: str, markers) -> str:
    start, end = (re.escape(m) for m in markers)
    return re.search(f'{start}\n(.*?)\n{end}', text, re.S).group(1)


def in_short(page: str) -> str:
    """The page's "In short" line, without the lead-in."""
    lines = [line for line in (ROOT / page).read_text().splitlines() if line.startswith('**In short:** ')]
    assert len(lines) == 1, f'{page} has {len(lines)} "In short" lines'
    return lines[0][len('**In short:** '):]


def test_the_finished_studies_include_the_long_and_the_3_epoch_one():
    assert {'long-cpu', 'converged-cpu'} <= set(FINISHED)


@pytest.mark.parametrize('preset', FINISHED)
def test_each_results_page_regenerates_from_its_study(preset):
    page = ROOT / RESULTS_PAGES[preset]
    body = between(page.read_text(), report.MARKERS)
    assert body == report.page_body(ROOT / results_study(preset), page), \
        f'regenerate it: timm-pnnh report --from {results_study(preset)} --write-readme {RESULTS_PAGES[preset]}'
    assert f'--out {Path(results_study(preset)).parent.as_posix()}' in page.read_text()  # the page names its study's folder


@pytest.mark.parametrize('name', INDEXED)
def test_the_index_is_generated_and_quotes_every_page(name):
    text = between((ROOT / name).read_text(), report.INDEX_MARKERS)
    assert text == report.results_index(ROOT / name), f'regenerate it: {report.INDEX_COMMAND}'
    for preset in RESULTS_PAGES:
        if (ROOT / RESULTS_PAGES[preset]).is_file():
            assert f'[{RESULTS_PAGES[preset]}]({RESULTS_PAGES[preset]})' in text
    for preset in FINISHED:
        line = in_short(RESULTS_PAGES[preset])
        assert f'): {line}' in text, f'{name} does not quote the "In short" line of {RESULTS_PAGES[preset]}'


def test_the_readme_results_are_short_and_open_with_the_longest_schedule():
    text = between((ROOT / 'README.md').read_text(), report.INDEX_MARKERS)
    assert len(text.splitlines()) <= 25
    studies = {preset: json.loads((ROOT / results_study(preset)).read_text()) for preset in FINISHED}
    longest = max(studies, key=lambda p: studies[p]['recipe']['steps'] * studies[p]['recipe']['batch_size'])
    first = text.splitlines()[0]
    assert first.startswith(f'**The longest schedule**, [{RESULTS_PAGES[longest]}]({RESULTS_PAGES[longest]}) '
                            f"(`{longest}`: {len(studies[longest]['summary'])} rows, {studies[longest]['epochs']} epochs "
                            f"of Fashion-MNIST, seeds {', '.join(map(str, studies[longest]['seeds']))}, ")
    assert first.endswith(in_short(RESULTS_PAGES[longest]))
    assert 'results:start' not in (ROOT / 'README.md').read_text()  # the tables are on the pages


def test_write_index_reads_the_studies_beside_the_file(tmp_path, capsys, usage_error):
    for preset in ('long-cpu', 'converged-cpu'):
        (tmp_path / results_study(preset)).parent.mkdir(parents=True)
        shutil.copy(ROOT / results_study(preset), tmp_path / results_study(preset))
    for page in ('docs/results-long-cpu.md', 'docs/results-converged-cpu.md', 'docs/results-gpu.md'):
        (tmp_path / page).parent.mkdir(exist_ok=True)
        (tmp_path / page).write_text('a page')
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{report.INDEX_MARKERS[0]}\nold\n{report.INDEX_MARKERS[1]}\n\nafter\n')
    assert main(['report', '--write-index', str(readme)]) == 0
    lines = between(readme.read_text(), report.INDEX_MARKERS).splitlines()
    assert lines[0].startswith('**The longest schedule**, [docs/results-long-cpu.md]')
    assert lines[4].startswith('- [docs/results-converged-cpu.md](docs/results-converged-cpu.md) (`converged-cpu`: 10 rows, '
                               '3 epochs of Fashion-MNIST, seeds 0, 1, fp32; ')
    assert lines[5] == '- [docs/results-gpu.md](docs/results-gpu.md) (`converged`): not run yet.'
    assert readme.read_text().endswith(f'{report.INDEX_MARKERS[1]}\n\nafter\n')

    # a study with pending rows is listed, says so, and does not open the index
    long = json.loads((tmp_path / results_study('long-cpu')).read_text())
    (tmp_path / results_study('long-cpu')).write_text(json.dumps(dict(long, pending=['residual-56 seed 1'])))
    assert main(['report', '--write-index', str(readme)]) == 0
    lines = between(readme.read_text(), report.INDEX_MARKERS).splitlines()
    assert lines[0].startswith('**The longest schedule**, [docs/results-converged-cpu.md]')
    assert lines[4].startswith('- [docs/results-long-cpu.md](docs/results-long-cpu.md) (`long-cpu`: 4 rows, 10 epochs of '
                               'Fashion-MNIST, seeds 0, 1, bf16, 1 run pending; ')

    readme.write_text('no markers')
    assert re.match('--write-index=.*no <!-- results-index:start -->', usage_error(['report', '--write-index', readme]))
    assert 'give one of them' in usage_error(['report', '--write-index', readme, '--write-readme', readme])

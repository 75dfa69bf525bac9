"""Writing results: files atomically (into a temporary file beside the target, then renamed over it,
so that a reader never sees a half-written file and a failure leaves nothing behind), and the one
markdown table writer every command prints with."""
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, IO, Sequence

from timm_pnnh.errors import UsageError

__all__ = ['atomic_write', 'write_json', 'check_markers', 'write_between_markers', 'save_figure', 'markdown_table', 'replace_folder',
           'build_folder', 'interrupts_deferred', 'output_folder_kept']


def atomic_write(path: os.PathLike, write: Callable[[IO], Any], binary: bool = False) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def check_markers(path: os.PathLike, markers: Sequence[str], option: str = '--write-readme') -> str:
    """The text of ``path`` (a README given as ``option``) if it has the ``markers`` block."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f'{option}={str(path)!r}: no such file')
    text = path.read_text()
    start, end = (re.escape(m) for m in markers)
    if not re.search(f'{start}.*?{end}', text, re.S):
        raise UsageError(f'{option}={str(path)!r}: the file has no {markers[0]} ... {markers[1]} block')
    return text


def write_between_markers(path: os.PathLike, markers: Sequence[str], body: str) -> None:
    """Replace the text between the two ``markers`` lines of ``path`` (a README) with ``body``."""
    text = check_markers(path, markers)
    start, end = (re.escape(m) for m in markers)
    new = re.sub(f'{start}.*?{end}', lambda _: f'{markers[0]}\n{body}\n{markers[1]}', text, flags=re.S)
    atomic_write(path, lambda f: f.write(new))


def save_figure(fig, path: os.PathLike) -> None:
    """A matplotlib figure as a PNG at ``path``; the figure is closed."""
    import matplotlib.pyplot as plt
    try:
        atomic_write(path, lambda f: fig.savefig(f, format='png', dpi=110), binary=True)
    finally:
        plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[bool] = ()) -> str:
    """A markdown table: ``header`` cells, then one line per row (cells already formatted as text).

    The one table writer: each command builds its rows and calls it. ``align[i]`` True right-aligns
    column i (numbers); default: the first column left, the others right.
    """
    align = list(align) or [False] + [True] * (len(header) - 1)
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f'a table row has {len(row)} cells for {len(header)} columns: {row}')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' ---: ' if right else ' --- ' for right in align) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


@contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) held back until the block has finished, then raised as usual: for the renames and
    removals that must not stop half-way (outside the main thread, where no handler can be set, a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


def replace_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` (in the same parent folder). An existing ``target``
    goes aside first and is removed last, so that a failure leaves one of the two whole; an interrupt waits
    until the old folder is removed, so that none is left aside."""
    with interrupts_deferred():
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f'.{target.name}.old-', dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)


def build_folder(target: os.PathLike, write: Callable[[Path], Any]) -> Path:
    """The folder ``target`` written whole or not at all: ``write(folder)`` fills a temporary folder beside
    it, which then replaces ``target`` (``replace_folder``); the temporary folder is removed whatever happens."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{target.name}.tmp-', dir=target.parent))
    try:
        write(tmp)
        replace_folder(tmp, target)
    finally:
        with interrupts_deferred():
            if tmp.exists():
                shutil.rmtree(tmp)
    return target


def output_folder_kept(args) -> str:
    """What an interrupted command that writes its ``--output`` folder with ``build_folder`` keeps."""
    return f'--output={args.output!r} is as it was or whole (the folder is built aside and moved into place when whole)'

"""Fashion-MNIST, found where it already is: torchvision's layout or Debian's package.

torchvision's ``FashionMNIST`` (and so timm's ``--dataset torch/fashion_mnist --data-dir ROOT``) reads
the *uncompressed* IDX files from ``ROOT/FashionMNIST/raw/``; symlinks to the ``.gz`` archives do not
work. Debian's ``dataset-fashion-mnist`` installs the gzipped originals in
``/usr/share/datasets/fashion-mnist/``. ``prepare_fashion_mnist`` lays the latter out as the former
(decompressing into a temporary file, then renaming it, so no half-written file is left; files
already there are kept); nothing is downloaded. From the shell::

    python -m timm_pnnh.data ROOT [--source DIR]
"""
import argparse
import gzip
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from timm_pnnh.errors import UsageError
from timm_pnnh.files import atomic_write
from timm_pnnh.models._cfgs import FMNIST_MEAN, FMNIST_STD

DEBIAN_DIR = Path('/usr/share/datasets/fashion-mnist')
DEFAULT_ROOT = Path(os.environ.get('TIMM_PNNH_DATA', Path.home() / '.cache' / 'timm_pnnh' / 'data'))
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')

HOW_TO_GET = (
    'Fashion-MNIST was not found. Install it with Debian\'s package\n'
    '    apt-get update && apt-get install -y dataset-fashion-mnist\n'
    f'(files in {DEBIAN_DIR}), or put the four IDX files ({", ".join(FILES)}, optionally .gz)\n'
    'in DATA_ROOT/FashionMNIST/raw/ and pass --data-dir DATA_ROOT.')


def _find_source(name: str, search: Tuple[Path, ...]) -> Optional[Path]:
    for folder in search:
        for candidate in (folder / name, folder / f'{name}.gz'):
            if candidate.is_file():
                return candidate
    return None


def prepare_fashion_mnist(root: Optional[os.PathLike] = None, source: Optional[os.PathLike] = None) -> Path:
    """Make ``root/FashionMNIST/raw/`` hold the four uncompressed IDX files; return ``root``.

    Looks in ``root/FashionMNIST/raw`` (plain or .gz), then in ``source`` (default: Debian's folder).
    Raises FileNotFoundError with instructions, before writing anything, when a file is nowhere, and a
    one-line UsageError naming the file when a source cannot be read to its end (a cut-off or damaged
    .gz); the file being written is then not left behind.
    """
    root = Path(root) if root is not None else DEFAULT_ROOT
    raw = root / 'FashionMNIST' / 'raw'
    search = (raw, Path(source) if source is not None else DEBIAN_DIR)
    missing = [name for name in FILES if not (raw / name).is_file()]
    sources = {name: _find_source(name, search) for name in missing}
    absent = [name for name, src in sources.items() if src is None]
    if absent:
        raise FileNotFoundError(f'{HOW_TO_GET}\nMissing: {", ".join(absent)} (looked in {search[0]} and {search[1]})')
    raw.mkdir(parents=True, exist_ok=True)
    for name, src in sources.items():
        opener = gzip.open if src.suffix == '.gz' else open
        try:
            with opener(src, 'rb') as fin:
                atomic_write(raw / name, lambda fout: shutil.copyfileobj(fin, fout), binary=True)
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise UsageError(f'{str(src)!r} is truncated or damaged ({type(err).__name__}: {err}); '
                             f'give an intact copy of {src.name}') from None
    return root


def require_fashion_mnist(root: Optional[os.PathLike] = None) -> Path:
    """``prepare_fashion_mnist(root)``; a dataset found nowhere is a UsageError naming ``--data-dir``."""
    try:
        return prepare_fashion_mnist(root)
    except FileNotFoundError as err:
        missing = str(err).splitlines()[-1]
        raise UsageError(f'--data-dir={None if root is None else str(root)!r}: Fashion-MNIST not found ({missing}); '
                         'install it with `apt-get install -y dataset-fashion-mnist` or put the IDX files in '
                         'DATA_DIR/FashionMNIST/raw') from None


def load_fashion_mnist(root: Optional[os.PathLike] = None, train: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images as a float tensor (N, 1, 28, 28) normalised with the dataset's mean/std, and labels (N,)."""
    from torchvision.datasets import FashionMNIST
    dataset = FashionMNIST(str(prepare_fashion_mnist(root)), train=train, download=False)
    images = dataset.data.unsqueeze(1).float().div_(255)
    images = images.sub_(FMNIST_MEAN[0]).div_(FMNIST_STD[0])
    return images, dataset.targets.clone()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_pnnh.data',
        description='Lay out Fashion-MNIST for `train.py --dataset torch/fashion_mnist --data-dir ROOT`.')
    parser.add_argument('root', help='the --data-dir to give train.py')
    parser.add_argument('--source', default=str(DEBIAN_DIR), help='folder with the IDX files (plain or .gz)')
    args = parser.parse_args(argv)
    try:
        print(prepare_fashion_mnist(args.root, args.source) / 'FashionMNIST' / 'raw')
    except (FileNotFoundError, UsageError) as err:
        parser.error(str(err))
    return 0


if __name__ == '__main__':
    sys.exit(main())

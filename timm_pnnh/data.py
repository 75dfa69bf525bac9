"""Dataset layout helpers for timm's ``train.py`` / ``validate.py``.

``train.py --dataset torch/fashion_mnist --data-dir ROOT`` reads Fashion-MNIST through torchvision,
which expects the four *uncompressed* IDX files in ``ROOT/FashionMNIST/raw/`` (it looks for
``train-images-idx3-ubyte`` etc., not the ``.gz`` files, so symlinks to the archives do not work).
Debian's ``dataset-fashion-mnist`` package installs the gzipped files in
``/usr/share/datasets/fashion-mnist/``; ``prepare_fashion_mnist`` unpacks them into that layout.
Where the internet is reachable, ``--dataset-download`` lets torchvision fetch them instead.

    python -m timm_pnnh.data ROOT [--source DIR]
"""
import argparse
import gzip
import os
import shutil
import sys
import tempfile
from typing import List, Optional

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                       't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def prepare_fashion_mnist(root: str, source: str = DEBIAN_FASHION_MNIST) -> str:
    """Unpack ``source/*-ubyte.gz`` into ``root/FashionMNIST/raw/``; return that folder.

    Files already there are kept. Each file is written to a temporary name and renamed, so an
    interrupted run leaves no half-written file.
    """
    missing = [name for name in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(source, name + '.gz'))]
    if missing:
        raise ValueError(f'source={source!r} lacks {", ".join(n + ".gz" for n in missing)}; it must hold the '
                         f'four gzipped Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)')
    raw = os.path.join(root, 'FashionMNIST', 'raw')
    os.makedirs(raw, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        target = os.path.join(raw, name)
        if os.path.isfile(target):
            continue
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f'.{name}.')
        try:
            with os.fdopen(fd, 'wb') as out, gzip.open(os.path.join(source, name + '.gz'), 'rb') as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return raw


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m timm_pnnh.data',
        description='Lay out Fashion-MNIST for `train.py --dataset torch/fashion_mnist --data-dir ROOT`.')
    parser.add_argument('root', help='the --data-dir to give train.py')
    parser.add_argument('--source', default=DEBIAN_FASHION_MNIST, help='folder with the *-ubyte.gz files')
    args = parser.parse_args(argv)
    try:
        print(prepare_fashion_mnist(args.root, args.source))
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == '__main__':
    sys.exit(main())

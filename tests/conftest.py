"""Fixtures shared by the test modules."""
import gzip
import struct

import numpy as np
import pytest

from timm_pnnh import data


def write_idx(path, array: np.ndarray) -> None:
    """``array`` as a gzipped IDX file (uint8), the format of the Fashion-MNIST originals."""
    header = struct.pack('>HBB', 0, 0x08, array.ndim) + b''.join(struct.pack('>I', d) for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_mnist(tmp_path, monkeypatch):
    """A small dataset in Fashion-MNIST's IDX format, gzipped like Debian's package (which it stands
    in for); returns an empty data root. Class-dependent brightness makes it learnable."""
    debian = tmp_path / 'debian'
    debian.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (('train', 256), ('t10k', 64)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28)) + (labels[:, None, None] * 20)
        write_idx(debian / f'{split}-images-idx3-ubyte.gz', images)
        write_idx(debian / f'{split}-labels-idx1-ubyte.gz', labels)
    monkeypatch.setattr(data, 'DEBIAN_DIR', debian)
    return tmp_path / 'root'


@pytest.fixture
def usage_error(capsys):
    """``usage_error(argv)``: run ``timm-pnnh argv``, check it ends as a user error (exit code 2, one
    line ``timm-pnnh COMMAND: error: ...`` on stderr, no traceback) and return the message."""
    from timm_pnnh.cli import main

    def run(argv):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2, f'exit code {code}, stderr: {err}'
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f'timm-pnnh {argv[0]}: error: '), err
        return lines[0][len(f'timm-pnnh {argv[0]}: error: '):]
    return run

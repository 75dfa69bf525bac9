"""``timm_pnnh.data``: Fashion-MNIST laid out as timm's ``torch/fashion_mnist`` dataset reads it."""
import gzip
import os

import pytest
from timm.data import create_dataset

from timm_pnnh.data import DEBIAN_DIR, FILES, main, prepare_fashion_mnist, require_fashion_mnist
from timm_pnnh.errors import UsageError

DEBIAN_FASHION_MNIST = str(DEBIAN_DIR)
FASHION_MNIST_FILES = FILES


def _fake_source(folder, skip=()):
    folder.mkdir()
    for name in FASHION_MNIST_FILES:
        if name not in skip:
            with gzip.open(folder / (name + '.gz'), 'wb') as f:
                f.write(name.encode())
    return str(folder)


def test_unpacks_into_torchvision_layout_and_keeps_existing(tmp_path):
    source = _fake_source(tmp_path / 'src')
    raw = str(prepare_fashion_mnist(str(tmp_path / 'root'), source) / 'FashionMNIST' / 'raw')
    assert raw == str(tmp_path / 'root' / 'FashionMNIST' / 'raw')
    assert sorted(os.listdir(raw)) == sorted(FASHION_MNIST_FILES)  # no temporary files left
    assert all(open(os.path.join(raw, n), 'rb').read() == n.encode() for n in FASHION_MNIST_FILES)
    with open(os.path.join(raw, FASHION_MNIST_FILES[0]), 'wb') as f:
        f.write(b'kept')
    prepare_fashion_mnist(str(tmp_path / 'root'), source)
    assert open(os.path.join(raw, FASHION_MNIST_FILES[0]), 'rb').read() == b'kept'


def test_incomplete_source_is_an_error_and_writes_nothing(tmp_path, capsys):
    source = _fake_source(tmp_path / 'src', skip=('t10k-labels-idx1-ubyte',))
    with pytest.raises(FileNotFoundError, match=r"Missing: t10k-labels-idx1-ubyte \(looked in"):
        prepare_fashion_mnist(str(tmp_path / 'root'), source)
    assert not (tmp_path / 'root').exists()
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / 'root'), '--source', source])
    assert info.value.code == 2 and 'Missing: t10k-labels-idx1-ubyte' in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason=f'{DEBIAN_FASHION_MNIST} is absent (Debian package dataset-fashion-mnist)')
def test_truncated_gz_is_one_line_naming_the_file(tmp_path, capsys):
    # a temporary copy of the real archive, cut in half: the installed files are never touched
    name = FASHION_MNIST_FILES[1] + '.gz'
    whole = (DEBIAN_DIR / name).read_bytes()
    source = tmp_path / 'src'
    source.mkdir()
    for other in FASHION_MNIST_FILES:
        (source / (other + '.gz')).write_bytes(whole[:len(whole) // 2] if other + '.gz' == name else
                                               gzip.compress(other.encode()))
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / 'root'), '--source', str(source)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and 'Traceback' not in err and str(source / name) in err
    assert FASHION_MNIST_FILES[1] not in os.listdir(tmp_path / 'root' / 'FashionMNIST' / 'raw')
    raw = tmp_path / 'data' / 'FashionMNIST' / 'raw'  # --data-dir: the archive found in the layout itself
    raw.mkdir(parents=True)
    (raw / name).write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UsageError, match='is truncated or damaged') as info:
        require_fashion_mnist(tmp_path / 'data')
    assert str(raw / name) in str(info.value) and '\n' not in str(info.value)
    assert not [n for n in os.listdir(raw) if n.startswith('.')]  # no half-written file


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason=f'{DEBIAN_FASHION_MNIST} is absent (Debian package dataset-fashion-mnist)')
def test_timm_reads_the_layout(tmp_path):
    root = str(tmp_path / 'fashion-mnist')
    main([root])
    test_set = create_dataset('torch/fashion_mnist', root=root, split='validation', download=False)
    image, label = test_set[0]
    assert len(test_set) == 10000 and image.mode == 'L' and image.size == (28, 28) and 0 <= label < 10
    assert len(create_dataset('torch/fashion_mnist', root=root, split='train', download=False)) == 60000

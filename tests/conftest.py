"""Fixtures shared by the test modules."""
import gzip
import hashlib
import http.server
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from timm_pnnh import data

# CI runs the suite with pytest-xdist (`pytest -n auto`: one worker per core); each worker keeps to one
# torch thread, so that the workers share the cores instead of each running a thread on every core.
if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


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


class HubHandler(http.server.BaseHTTPRequestHandler):
    """``HEAD``/``GET /{org}/{repo}/resolve/{revision}/{filename}`` as the Hub answers them.

    Headers huggingface_hub's ``file_download`` needs: ``X-Repo-Commit`` (the commit the revision resolves
    to), ``ETag`` (the file's hash, the blob name in the cache) and ``Content-Length``; a missing file is a
    404 with ``X-Error-Code: EntryNotFound``, a missing repository ``RepoNotFound``.
    """
    repos = {}  # repo id -> folder
    requests = []

    def _answer(self, body: bool):
        self.requests.append((self.command, self.path))
        parts = self.path.split('?')[0].strip('/').split('/')
        if len(parts) < 5 or parts[2] != 'resolve':
            return self._error(404, 'RepoNotFound', b'')
        repo_id, filename = '/'.join(parts[:2]), '/'.join(parts[4:])
        folder = self.repos.get(repo_id)
        if folder is None:
            return self._error(404, 'RepoNotFound', b'')
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        path = folder / filename
        if not path.is_file():
            return self._error(404, 'EntryNotFound', commit.encode())
        data = path.read_bytes()
        self.send_response(200)
        self.send_header('X-Repo-Commit', commit)
        self.send_header('ETag', f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status, code, commit):
        self.send_response(status)
        self.send_header('X-Error-Code', code)
        if commit:
            self.send_header('X-Repo-Commit', commit.decode())
        self.send_header('Content-Length', '0')
        self.end_headers()

    def do_HEAD(self):  # noqa: N802
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args):
        pass


class LocalHub:
    """A ``HubHandler`` server on 127.0.0.1 and the environment that points huggingface_hub at it (and at a
    fresh cache). huggingface_hub reads these variables at import: load in a subprocess with ``env``."""

    def __init__(self, tmp_path: Path):
        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), HubHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.requests = HubHandler.requests = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
        env.update(HF_ENDPOINT=f'http://127.0.0.1:{self.server.server_address[1]}', HF_HOME=str(tmp_path / 'hf_home'),
                   HF_HUB_CACHE=str(tmp_path / 'hf_cache'), HF_HUB_DISABLE_TELEMETRY='1', HF_HUB_DISABLE_XET='1',
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')]), OMP_NUM_THREADS='1')
        self.env = env
        self.cache = tmp_path / 'hf_cache'

    def serve(self, repos) -> None:
        """Serve ``{repo id: folder}``."""
        HubHandler.repos = dict(repos)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def local_hub(tmp_path):
    """A local server that speaks the Hub's download protocol (see ``HubHandler``); stopped at the end."""
    hub = LocalHub(tmp_path)
    yield hub
    hub.stop()


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with non-trivial norm statistics and affine parameters, and no zero-initialised learner
    output, so that folds and reloads are checked on values that matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)) and m.weight is not None:
                m.weight.uniform_(0.2, 0.6, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
        for p in model.parameters():
            if p.dim() > 1 and not p.abs().sum():
                p.normal_(0, 0.5 / p[0].numel() ** 0.5, generator=g)
    return model

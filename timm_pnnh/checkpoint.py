"""Checkpoints: the one module that reads a weight file, takes the state dict out of it, compares it with
a model and writes one.

Reading (``read_checkpoint``): ``.safetensors`` files are read with safetensors; any other file with
``torch.load(weights_only=True)`` (tensors, plain containers and ``argparse.Namespace``, which timm's
``train.py`` stores), so a file cannot run code when it is read. A checkpoint that needs other Python
objects is refused unless the caller passes ``unsafe_pickle=True`` (``--unsafe-pickle``). Before loading,
``check_checkpoint_file`` looks at the bytes: a missing, empty, truncated or foreign file (a text file, a
zip archive or pickle that ``torch.save`` did not write, a cut-off safetensors file) is a ``UsageError``
naming the parameter and the file. ``timm-pnnh run`` uses that check alone on the checkpoint options of
timm's scripts.

Extracting (``state_dict_of``): the wrappers timm's ``train.py`` writes (``state_dict``,
``state_dict_ema``, ``model``, ``model_ema``) and DataParallel's ``module.`` prefixes, the latter by
timm's ``clean_state_dict``.

Comparing (``mismatches``): one phrase, the same in every caller's error, counting the missing keys,
unexpected keys and shape mismatches with the first few of each; callers put the file and the model
in front of it.

Writing: ``save_checkpoint`` writes a ``torch.save`` file through ``files.atomic_write``; folders of
weights are built aside and moved into place by ``files.build_folder``.
"""
import argparse
import json
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional

import torch

from timm_pnnh.errors import UsageError, check_input_file
from timm_pnnh.files import atomic_write

__all__ = ['CHECKPOINT_HINT', 'checkpoint_problem', 'check_checkpoint_file', 'read_checkpoint', 'state_dict_of',
           'mismatches', 'load_weights', 'save_checkpoint']

CHECKPOINT_HINT = ("give a checkpoint written by torch.save (train.py's .pth.tar, a state dict .pth) "
                   "or a .safetensors file")
# torch.save's legacy (non-zip) format: pickle protocol 2, then the long magic number torch writes first
TORCH_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
ZIP_MAGIC = b'PK\x03\x04'


def _size_text(size: int) -> str:
    return f'{size:,} bytes'


def _safetensors_problem(path: str, size: int) -> Optional[str]:
    """Why ``path`` is not a complete safetensors file (8-byte header length, JSON header, data), or None."""
    with open(path, 'rb') as f:
        head = f.read(8)
        length = int.from_bytes(head, 'little') if len(head) == 8 else 0
        if len(head) < 8 or not 0 < length <= 100_000_000:
            return 'is not a safetensors file (no safetensors header)'
        if 8 + length > size:
            if f.read(1) == b'{':
                return f'is truncated ({_size_text(size)}; its safetensors header alone needs {_size_text(8 + length)})'
            return 'is not a safetensors file (no safetensors header)'
        f.seek(8)
        try:
            header = json.loads(f.read(length))
            ends = [int(v['data_offsets'][1]) for k, v in header.items() if k != '__metadata__']
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return 'is not a safetensors file (its header is not safetensors JSON)'
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f'is truncated ({_size_text(size)} of the {_size_text(needed)} its header describes)'
    return None


def checkpoint_problem(path: str) -> Optional[str]:
    """What makes the file ``path`` no checkpoint (a phrase that follows its name), judged from its bytes
    without unpickling anything; None when it looks like a torch.save or safetensors file."""
    size = os.path.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    if str(path).endswith('.safetensors'):
        return _safetensors_problem(path, size)
    with open(path, 'rb') as f:
        head = f.read(512)
    is_zip = zipfile.is_zipfile(path)
    if head.startswith(ZIP_MAGIC) or is_zip:
        if not is_zip:
            return (f'is truncated ({_size_text(size)}; the end of its zip archive, which torch.save writes last, '
                    'is missing)')
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return f'is truncated or damaged ({_size_text(size)}; its zip archive cannot be read)'
        if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return 'is a zip archive that torch.save did not write (it holds no data.pkl)'
        return None
    if head.startswith(TORCH_LEGACY_MAGIC):
        return None
    if head.startswith(b'\x80'):
        return "is a Python pickle that torch.save did not write (no torch magic number)"
    try:
        decoded = head.decode('utf-8')
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and all(c.isprintable() or c.isspace() for c in decoded):
        return f'is a text file, not a checkpoint (it starts with {decoded[:20]!r})'
    return f'is not a checkpoint (an unknown format; it starts with {head[:8]!r})'


def check_checkpoint_file(arg: str, path: str) -> str:
    """``path`` if it is a readable file that looks like a checkpoint (``checkpoint_problem``), else the
    UsageError naming ``arg``: missing, empty, truncated or foreign. Reads no more than the file's framing."""
    check_input_file(arg, path)
    problem = checkpoint_problem(path)
    if problem:
        raise UsageError(f'{arg}={path!r} {problem}: {CHECKPOINT_HINT}')
    return path


def read_checkpoint(arg: str, path: str, unsafe_pickle: bool = False) -> Any:
    """The object stored in the weight file ``path`` (see the module docstring for how it is read); every
    way the file can fail to load is a one-line UsageError naming ``arg`` and ``path``."""
    check_checkpoint_file(arg, path)
    if str(path).endswith('.safetensors'):
        import safetensors.torch
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except Exception as e:  # a damaged file whose framing is intact
            raise UsageError(f'{arg}={path!r} is not a readable safetensors file ({type(e).__name__}: {e}): '
                             f'{CHECKPOINT_HINT}') from e
    try:
        if unsafe_pickle:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if unsafe_pickle or 'Weights only load failed' not in str(e):
            raise UsageError(f'{arg}={path!r} is truncated or damaged ({type(e).__name__}): {CHECKPOINT_HINT}') from e
        raise UsageError(f'{arg}={path!r} holds Python objects other than tensors, which unpickling would run as '
                         'code; give --unsafe-pickle to load it anyway, only if you trust the file') from None
    except EOFError as e:  # a legacy-format file cut short
        raise UsageError(f'{arg}={path!r} is truncated ({_size_text(os.path.getsize(path))}; the data ends early): '
                         f'{CHECKPOINT_HINT}') from e
    except Exception as e:  # torch.load of a damaged file raises many types
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise UsageError(f'{arg}={path!r} is truncated or damaged ({type(e).__name__}: {first_line}): '
                         f'{CHECKPOINT_HINT}') from e


def state_dict_of(checkpoint: Any, key: Optional[str] = None) -> Optional[Dict[str, torch.Tensor]]:
    """The weights in a checkpoint, ``module.`` prefixes removed. With ``key``: that entry of a dict
    (None when it has none). Without: as timm's ``load_checkpoint`` picks them, the EMA, ``state_dict``,
    ``model``, or the file itself."""
    from timm.models._helpers import clean_state_dict
    if key is not None:
        entry = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        return clean_state_dict(entry) if isinstance(entry, dict) else None
    if isinstance(checkpoint, dict):
        for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
            if isinstance(checkpoint.get(key), dict):
                return clean_state_dict(checkpoint[key])
    return clean_state_dict(checkpoint) if isinstance(checkpoint, dict) else checkpoint


def load_weights(model: torch.nn.Module, arg: str, path: str, unsafe_pickle: bool = False,
                 hint: str = '') -> torch.nn.Module:
    """Load the weights of ``path`` into ``model`` (strict); a file of another architecture is a UsageError."""
    state_dict = state_dict_of(read_checkpoint(arg, path, unsafe_pickle))
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UsageError(f'{arg}={path!r} holds no state dict (a mapping of names to tensors)')
    problem = mismatches(model.state_dict(), state_dict)
    if problem:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        raise UsageError(f'{arg}={path!r} is a checkpoint of another architecture than {name}: {problem}{hint}')
    model.load_state_dict(state_dict)
    return model


def mismatches(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], ignore: tuple = (),
               shapes: bool = True, first: int = 3) -> str:
    """'' when ``given`` has exactly ``expected``'s keys (and, with ``shapes``, their shapes); else
    'N missing keys [...], N unexpected keys [...], N shape mismatches [...]' with the ``first`` of each
    (a count of 0 is left out).
    Keys starting with ``ignore`` (a classifier timm adapts) are not compared."""
    missing = sorted(k for k in set(expected) - set(given) if not k.startswith(ignore))
    unexpected = sorted(k for k in set(given) - set(expected) if not k.startswith(ignore))
    wrong = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}' for k, v in given.items()
             if shapes and k in expected and not k.startswith(ignore) and v.shape != expected[k].shape]
    parts = (f'{len(found)} {what} {found[:first]}' for what, found in
             (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', wrong)) if found)
    return ', '.join(parts)


def save_checkpoint(obj: Any, path: os.PathLike) -> None:
    """``torch.save(obj)`` into ``path`` atomically: a reader sees the old file or the whole new one."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)

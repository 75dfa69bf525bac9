"""User errors, and the checks of command-line values that raise them.

A ``UsageError`` is a mistake in what the user asked for (an unknown model, a missing or unreadable
file, a bad value, a checkpoint of another architecture); its message names the argument, the value
and what is allowed. ``timm-pnnh`` (``cli.main``) prints it as one line in argparse's style,
``timm-pnnh COMMAND: error: MESSAGE``, and exits with 2. Any other exception is a bug and keeps its
traceback.

Loading weights (``read_checkpoint``, the one reader of every command that reads a checkpoint):
``.safetensors`` files are read with safetensors; any other file with ``torch.load(weights_only=True)``
(tensors, plain containers and ``argparse.Namespace``, which timm's ``train.py`` stores), so a file
cannot run code when it is read. A checkpoint that needs other Python objects is refused unless the
caller passes ``unsafe_pickle=True`` (``--unsafe-pickle``). Before loading, ``check_checkpoint_file``
looks at the bytes: a missing, empty, truncated or foreign file (a text file, a zip archive or pickle
that ``torch.save`` did not write, a cut-off safetensors file) is a ``UsageError`` naming the parameter
and the file. ``timm-pnnh run`` uses that check alone on the checkpoint options of timm's scripts.
"""
import argparse
import json
import math
import os
import pickle
import tempfile
import zipfile
from typing import Any, Dict, Optional

import timm
import torch

__all__ = ['UsageError', 'check_model', 'check_input_file', 'check_writable', 'check_output_dir', 'check_output_file',
           'check_output_folder', 'check_number', 'check_image_size', 'check_checkpoint_file', 'read_checkpoint', 'load_weights']


class UsageError(ValueError):
    """A user error: reported as one line, exit code 2, no traceback."""


def check_model(arg: str, name: str) -> str:
    """``name`` if timm can build it (a timm-pnnh or timm model name, optionally ``.tag``)."""
    if not timm.is_model(name):
        raise UsageError(f'{arg}={name!r} is not a timm model; see `timm-pnnh models --names-only` for the '
                         'timm-pnnh ones, timm.list_models() for all')
    return name


def check_input_file(arg: str, path: str) -> str:
    """``path`` if it is a readable file."""
    if not os.path.exists(path):
        raise UsageError(f'{arg}={path!r}: no such file')
    if not os.path.isfile(path):
        raise UsageError(f'{arg}={path!r} is not a file')
    if not os.access(path, os.R_OK):
        raise UsageError(f'{arg}={path!r}: the file is not readable (permission denied)')
    return path


def check_writable(arg: str, path: str, folder: str) -> None:
    """UsageError naming ``arg=path`` unless ``folder`` is a folder, or can become one, in which this process
    can create files: the nearest existing folder on its path takes a probe file (a unique name, so that
    processes writing beside each other never refuse each other), which is removed at once."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f'{arg}={path!r}: {probe!r} exists and is not a folder')
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix='.timm-pnnh-write-probe-')
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UsageError(f'{arg}={path!r}: {probe!r} is not writable ({err.strerror or err})') from None


def check_output_dir(arg: str, path: str) -> str:
    """``path`` if it is a folder or can become one (nothing in the way that is not a folder) that can take files."""
    check_writable(arg, path, path)
    return path


def check_output_file(arg: str, path: str) -> str:
    """``path`` if a file can be written there (not a folder; its folder exists or can be made, and takes files)."""
    if os.path.isdir(path):
        raise UsageError(f'{arg}={path!r} is a folder; give a file name')
    check_writable(arg, path, os.path.dirname(os.path.abspath(path)))
    return path


def check_output_folder(arg: str, path: str, overwrite: bool) -> str:
    """``path`` if a command can build a folder beside it and move it there: not a file, empty unless
    ``overwrite`` (``--overwrite``), and its parent folder exists or can be made, and takes files."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f'{arg}={path!r} exists and is not a folder')
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise UsageError(f'{arg}={path!r}: the folder is not empty (give --overwrite to replace it)')
    check_writable(arg, path, os.path.dirname(os.path.abspath(path)))
    return path


def check_number(arg: str, value: Any, minimum: float = None, above: float = None) -> Any:
    """``value`` if it is finite and ``>= minimum`` / ``> above`` (whichever is given)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f'{arg}={value!r} is not allowed: it must be a finite number')
    if minimum is not None and value < minimum:
        raise UsageError(f'{arg}={value!r} is not allowed: it must be >= {minimum}')
    if above is not None and value <= above:
        raise UsageError(f'{arg}={value!r} is not allowed: it must be > {above}')
    return value


def check_image_size(arg: str, name: str, model: torch.nn.Module, img_size: int) -> int:
    """``img_size`` if ``model`` (built as ``name``) sees every pixel of an ``img_size`` x ``img_size`` input: a
    model of patches (a ViT) needs its own input size unless it takes any, and a multiple of its patch size."""
    embed = getattr(model, 'patch_embed', None)
    if embed is None or getattr(embed, 'patch_size', None) is None:
        return img_size
    built, patch = tuple(embed.img_size or ()), tuple(embed.patch_size)
    if built and getattr(embed, 'strict_img_size', False) and not getattr(embed, 'dynamic_img_size', False) \
            and built != (img_size, img_size):
        raise UsageError(f'{arg}={img_size} is not allowed for {name}: it is built for {built[0]}x{built[1]} inputs only')
    if any(img_size % p for p in patch) and not getattr(embed, 'dynamic_img_pad', False):
        raise UsageError(f'{arg}={img_size} is not allowed for {name}: its {patch[0]}x{patch[1]} patches cover '
                         f'{img_size // patch[0] * patch[0]} of the {img_size} pixels per side, and it would not see the '
                         f'rest; give a multiple of {patch[0]}')
    return img_size


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


def state_dict_of(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The weights in a checkpoint as timm's ``load_checkpoint`` picks them: the EMA, ``state_dict``,
    ``model``, or the file itself."""
    from timm.models._helpers import clean_state_dict
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
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [f'{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}' for k, v in state_dict.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        name = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        raise UsageError(f'{arg}={path!r} is a checkpoint of another architecture than {name}: {len(missing)} missing '
                         f'keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, '
                         f'{len(shapes)} shape mismatches {shapes[:2]}{hint}')
    model.load_state_dict(state_dict)
    return model

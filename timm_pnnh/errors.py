"""User errors, and the checks of command-line values that raise them.

A ``UsageError`` is a mistake in what the user asked for (an unknown model, a missing or unreadable
file, a bad value, a checkpoint of another architecture); its message names the argument, the value
and what is allowed. ``timm-pnnh`` (``cli.main``) prints it as one line in argparse's style,
``timm-pnnh COMMAND: error: MESSAGE``, and exits with 2. Any other exception is a bug and keeps its
traceback.

Checkpoints are read and checked in ``timm_pnnh.checkpoint``.
"""
import math
import os
import tempfile
from typing import Any

import timm
import torch

__all__ = ['UsageError', 'check_model', 'check_input_file', 'check_writable', 'check_output_dir', 'check_output_file',
           'check_output_folder', 'check_number', 'check_image_size']


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

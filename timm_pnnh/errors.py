"""User errors, and the checks of command-line values that raise them.

A ``UsageError`` is a mistake in what the user asked for (an unknown model, a missing or unreadable
file, a bad value, a checkpoint of another architecture); its message names the argument, the value
and what is allowed. ``timm-pnnh`` (``cli.main``) prints it as one line in argparse's style,
``timm-pnnh COMMAND: error: MESSAGE``, and exits with 2. Any other exception is a bug and keeps its
traceback.

Loading weights (``read_checkpoint``): ``.safetensors`` files are read with safetensors; any other
file with ``torch.load(weights_only=True)`` (tensors, plain containers and ``argparse.Namespace``,
which timm's ``train.py`` stores), so a file cannot run code when it is read. A checkpoint that needs
other Python objects is refused unless the caller passes ``unsafe_pickle=True`` (``--unsafe-pickle``).
"""
import argparse
import math
import os
import pickle
from typing import Any, Dict

import timm
import torch

__all__ = ['UsageError', 'check_model', 'check_input_file', 'check_output_dir', 'check_output_file', 'check_number',
           'read_checkpoint', 'load_weights']


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


def check_output_dir(arg: str, path: str) -> str:
    """``path`` if it is a folder or can become one (nothing in the way that is not a folder)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f'{arg}={path!r}: {probe!r} exists and is not a folder')
    if not os.access(probe, os.W_OK):
        raise UsageError(f'{arg}={path!r}: {probe!r} is not writable (permission denied)')
    return path


def check_output_file(arg: str, path: str) -> str:
    """``path`` if a file can be written there (not a folder; its folder exists or can be made)."""
    if os.path.isdir(path):
        raise UsageError(f'{arg}={path!r} is a folder; give a file name')
    check_output_dir(arg, os.path.dirname(os.path.abspath(path)))
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


def read_checkpoint(arg: str, path: str, unsafe_pickle: bool = False) -> Any:
    """The object stored in the weight file ``path`` (see the module docstring for how it is read)."""
    check_input_file(arg, path)
    if str(path).endswith('.safetensors'):
        import safetensors.torch
        try:
            return safetensors.torch.load_file(path, device='cpu')
        except Exception as e:  # a damaged or foreign file
            raise UsageError(f'{arg}={path!r} is not a readable safetensors file ({type(e).__name__}: {e})') from e
    try:
        if unsafe_pickle:
            return torch.load(path, map_location='cpu', weights_only=False)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        if unsafe_pickle or 'Weights only load failed' not in str(e):
            raise UsageError(f'{arg}={path!r} is not a readable PyTorch checkpoint ({type(e).__name__})') from e
        raise UsageError(f'{arg}={path!r} holds Python objects other than tensors, which unpickling would run as '
                         'code; give --unsafe-pickle to load it anyway, only if you trust the file') from None
    except Exception as e:  # torch.load of a damaged or foreign file raises many types
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        raise UsageError(f'{arg}={path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {first_line})') from e


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

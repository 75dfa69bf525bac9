"""``timm-pnnh convert``: a timm residual checkpoint (``resnet*`` / ``vit_*_patch16_224``) -> a PNNH folder.

The PNNH net computes exactly what the residual net computes (``timm_pnnh/models/_converted.py`` says
why): the state dict gains the Dirac coder weights and nothing else changes. The input is a ``train.py``
checkpoint (``state_dict``, ``state_dict_ema``, ``arch``, ``args``), a bare state dict (``.pth``) or a
``.safetensors`` file; ``num_classes``, ``in_chans`` and (ViT) the image size are read from the weights.
Before anything is written, both nets run on one batch of random images (eval mode) and the PNNH logits,
as built and after ``reparameterize_model``, must equal the residual ones (relative error <= 1e-5, fp32).

The folder holds ``model.safetensors`` and ``config.json`` as timm's ``save_for_hf`` writes them (so
``pretrained_cfg_overlay=dict(file=...)``, ``local-dir:`` and, once uploaded, ``hf-hub:`` load it) and
``checkpoint.pth.tar`` in train.py's format (``arch`` is the PNNH ``model.tag``), which validate.py
``--checkpoint`` and ``timm-pnnh publish`` read. The PNNH name is the one registered in the exact form
(``pnnh_resnet50_identity.a1_in1k``, ``coder_ratio=1.0``): give that name to validate.py and train.py.
Refused, with nothing written: an architecture with no PNNH counterpart, weights that do not fit it, a
PNNH model that cannot carry it exactly, and outputs that differ.
"""
import argparse
import copy
from pathlib import Path
from typing import Dict, Optional, Tuple

import timm
import torch
from timm.models import split_model_name_tag
from timm.models._hub import save_for_hf
from timm.utils.model import reparameterize_model

from timm_pnnh.checkpoint import mismatches, read_checkpoint, state_dict_of
from timm_pnnh.errors import UsageError, check_output_folder
from timm_pnnh.files import build_folder, output_folder_kept
from timm_pnnh.models import arch_of
from timm_pnnh.models._converted import CONVERSIONS, ConversionError, add_coders
from timm_pnnh.models.pnnh_resnet import pnnh_resnet_coders
from timm_pnnh.models.pnnh_vit import pnnh_vit_coders

__all__ = ['SOURCES', 'MAX_RELATIVE_ERROR', 'convert_checkpoint', 'register']

# residual architecture -> the PNNH name.tag it converts into
SOURCES: Dict[str, str] = {c.source.split('.')[0]: c.name for c in CONVERSIONS.values()}
MAX_RELATIVE_ERROR = 1e-5


def _load(path: str, use_ema: bool) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """The state dict and the ``arch`` recorded in the checkpoint (train.py), if any; the file is read by
    ``checkpoint.read_checkpoint`` (a missing, empty, truncated or foreign file is a UsageError)."""
    checkpoint = read_checkpoint('--checkpoint', path)
    if not isinstance(checkpoint, dict):
        raise ConversionError(f'--checkpoint {path}: a {type(checkpoint).__name__}, not a state dict or checkpoint')
    if path.endswith('.safetensors'):
        return checkpoint, None
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if key in checkpoint:
        return state_dict_of(checkpoint, key), checkpoint.get('arch')
    if use_ema or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(f'--checkpoint {path}: no {key!r} entry; found: {", ".join(sorted(map(str, checkpoint)))}')
    return state_dict_of(checkpoint), None


def _model_args(arch: str, state_dict: Dict[str, torch.Tensor]) -> Dict[str, int]:
    """num_classes, in_chans (and img_size for a ViT) of the net the weights belong to."""
    vit = arch_of(SOURCES[arch]) == 'vit'
    first, head = ('patch_embed.proj.weight', 'head.weight') if vit else ('conv1.weight', 'fc.weight')
    if first not in state_dict:
        raise ConversionError(f'the weights are not a timm {arch}: no {first!r}')
    args = dict(num_classes=state_dict[head].shape[0] if head in state_dict else 0, in_chans=state_dict[first].shape[1])
    if vit and 'pos_embed' in state_dict:
        patches = state_dict['pos_embed'].shape[1] - 1  # timm's vit_*_patch16_224 have one class token
        side = round(patches ** 0.5)
        if side * side != patches:
            raise ConversionError(f'pos_embed has {patches} patch tokens, not a square grid')
        args['img_size'] = side * state_dict[first].shape[-1]
    return args


def _source_arch(name: str) -> str:
    """The timm residual architecture the PNNH ``name`` ('model.tag') converts from."""
    model = split_model_name_tag(name)[0]
    return next(arch for arch, pnnh in SOURCES.items() if split_model_name_tag(pnnh)[0] == model)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def convert_checkpoint(checkpoint: str, model: Optional[str] = None, pnnh_model: Optional[str] = None,
                       use_ema: bool = False, batch_size: int = 4, seed: int = 0):
    """Convert and check; returns ``(pnnh model with the weights, PNNH name.tag, model args, relative errors)``."""
    state_dict, recorded = _load(checkpoint, use_ema)
    arch = split_model_name_tag(model or recorded or '')[0]
    if arch not in SOURCES:
        raise ConversionError(f'--model {model or recorded!r}: not a timm residual architecture with a PNNH '
                              f'counterpart; allowed: {", ".join(SOURCES)}')
    name = pnnh_model or SOURCES[arch]
    if split_model_name_tag(name)[0] != split_model_name_tag(SOURCES[arch])[0]:
        raise ConversionError(f'--pnnh-model {name!r}: converts only into {split_model_name_tag(SOURCES[arch])[0]} '
                              f'(e.g. {SOURCES[arch]})')
    args = _model_args(arch, state_dict)
    residual = timm.create_model(arch, **args).eval()
    problem = mismatches(residual.state_dict(), state_dict, first=6)
    if problem:
        raise ConversionError(f'the weights do not fit timm {arch}: {problem}')
    residual.load_state_dict(state_dict)
    pnnh = timm.create_model(name, **args).eval()
    coders = (pnnh_vit_coders if arch_of(name) == 'vit' else pnnh_resnet_coders)(pnnh)
    pnnh.load_state_dict(add_coders(state_dict, pnnh, coders))

    cfg = pnnh.pretrained_cfg
    size = args.get('img_size', cfg['input_size'][-1])
    x = torch.randn(batch_size, args['in_chans'], size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = residual(x)
        errors = dict(converted=_relative_error(pnnh(x), expected),
                      reparameterized=_relative_error(reparameterize_model(copy.deepcopy(pnnh))(x), expected))
    bad = {k: v for k, v in errors.items() if not v <= MAX_RELATIVE_ERROR}
    if bad:
        raise ConversionError(f'{name} does not reproduce {arch}: relative logit error '
                              f'{", ".join(f"{k} {v:.2e}" for k, v in bad.items())} > {MAX_RELATIVE_ERROR:g}')
    return pnnh, name, args, errors


def write_folder(pnnh: torch.nn.Module, name: str, args: Dict[str, int], output: str, overwrite: bool = False) -> Path:
    """``model.safetensors``, ``config.json`` and ``checkpoint.pth.tar`` in ``output``, built aside and moved into place."""
    check_output_folder('--output', output, overwrite)

    def write(folder: Path) -> None:
        save_for_hf(pnnh, folder, model_args=args, safe_serialization=True)
        train_args = argparse.Namespace(model=name, model_kwargs={}, **{k: v for k, v in args.items()})
        # converted_from: the residual architecture, so that `timm-pnnh publish` says what these weights are
        torch.save({'arch': name, 'state_dict': pnnh.state_dict(), 'args': train_args, 'epoch': 0,
                    'converted_from': _source_arch(name)}, folder / 'checkpoint.pth.tar')
        check_output_folder('--output', output, overwrite)  # nothing appeared there meanwhile
    return build_folder(output, write)


def check_arguments(args) -> None:
    """``--output``: a folder that can be written, empty unless --overwrite (checked before converting)."""
    check_output_folder('--output', args.output, args.overwrite)


def run(args) -> int:
    check_arguments(args)
    try:
        pnnh, name, model_args, errors = convert_checkpoint(args.checkpoint, args.model, args.pnnh_model, args.use_ema)
        folder = write_folder(pnnh, name, model_args, args.output, args.overwrite)
    except ConversionError as e:
        raise UsageError(str(e)) from None
    extra = ''.join(f' --{k.replace("_", "-")} {v}' for k, v in model_args.items() if k != 'img_size')
    print(f'{name}: logits equal the residual net\'s (relative error {errors["converted"]:.1e}, '
          f'after reparameterize_model {errors["reparameterized"]:.1e})')
    print(f'wrote {folder} (checkpoint.pth.tar, config.json, model.safetensors); validate with validate.py '
          f'--model {name}{extra} --checkpoint {folder / "checkpoint.pth.tar"} [--reparam]')
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'convert', help='a timm resnet*/vit_* checkpoint -> the PNNH net with the same outputs (checked, then written)')
    parser.add_argument('--checkpoint', required=True,
                        help='train.py checkpoint (.pth.tar), state dict (.pth) or .safetensors of a timm residual net')
    parser.add_argument('--model', default=None,
                        help=f"the residual architecture ({', '.join(SOURCES)}; default: the checkpoint's arch)")
    parser.add_argument('--pnnh-model', default=None,
                        help="the PNNH 'model.tag' to write (default: the converted tag, e.g. pnnh_resnet50_identity.a1_in1k)")
    parser.add_argument('--use-ema', action='store_true', help='convert the EMA weights (state_dict_ema)')
    parser.add_argument('--output', required=True, help='folder to write')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --output folder')
    parser.set_defaults(func=run, kept=output_folder_kept)

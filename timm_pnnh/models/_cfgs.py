"""Pretrained cfgs on the Hugging Face Hub, shared by every model family.

Each weight tag (``pnnh_resnet20.fmnist``, ``pnnh_resnet34.in1k``, ...) lives in its own Hub repository
``{HUB_ORG}/{model}.{tag}`` holding ``model.safetensors`` and ``config.json`` as ``timm-pnnh publish``
writes them. Loading goes through timm's own ``load_pretrained`` and huggingface_hub's download cache;
this module adds only what timm cannot know:

* ``PUBLISHED`` -- which tags have weights on the Hub. A cfg describes where weights *would* live; until
  its tag is listed here, ``pretrained=True`` fails with :class:`WeightsNotPublishedError`, which names
  the model, the tag and the tags that are published. Add a tag here once ``timm-pnnh publish`` has
  uploaded it.
* safetensors only: Hub sources read ``model.safetensors`` (never a pickle), and a local
  ``pretrained_cfg_overlay=dict(file=...)`` must be a ``.safetensors`` file.
* a loading failure (missing, truncated or corrupted file, offline cache miss, wrong keys) is re-raised as
  :class:`PretrainedLoadError` naming the model, the tag and the source.

Families use :func:`hub_cfgs` on their ``generate_default_cfgs`` input and build through
:func:`build_model_with_hub` instead of timm's ``build_model_with_cfg`` (same arguments).
"""
import dataclasses
import os
from typing import Any, Callable, Dict, FrozenSet, Optional, Tuple

from safetensors import SafetensorError
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg
from timm.models._registry import get_arch_pretrained_cfgs

from timm_pnnh.checkpoint import checkpoint_problem

__all__ = [
    'HUB_ORG', 'WEIGHTS_FILE', 'PUBLISHED', 'PAPER_ID', 'PAPER_NAME', 'FMNIST_MEAN', 'FMNIST_STD', 'FMNIST_LABELS',
    'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR10_LABELS', 'WeightsNotPublishedError', 'PretrainedLoadError', 'hub_repo_id', 'hub_cfgs',
    'published_tags', 'check_pretrained_source', 'build_model_with_hub']

HUB_ORG = 'timm-pnnh'
WEIGHTS_FILE = 'model.safetensors'
# 'model.tag' names whose weights are on the Hub. None yet: add a name after `timm-pnnh publish` uploads it.
PUBLISHED: FrozenSet[str] = frozenset()

PAPER_ID = 'arXiv:2402.08645'
PAPER_NAME = 'Peeking Behind the Curtains of Residual Learning'
LICENSE = 'apache-2.0'

# Fashion-MNIST training-set statistics of the [0, 1] pixel values (measured: 0.28604, 0.35302)
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_LABELS = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                 'Ankle boot')
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


class WeightsNotPublishedError(RuntimeError):
    """``pretrained=True`` for a tag whose weights are not on the Hub (yet)."""


class PretrainedLoadError(RuntimeError):
    """Pretrained weights exist at a source but could not be read into the model."""


def hub_repo_id(model_tag: str) -> str:
    """The Hub repository of a ``model.tag`` name."""
    if model_tag.count('.') != 1:
        raise ValueError(f'model_tag={model_tag!r} is not allowed: it must be "model.tag"')
    return f'{HUB_ORG}/{model_tag}'


def hub_cfgs(cfgs: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Add the weights file, license and paper to each ``'model.tag': cfg`` entry, and the Hub
    repository (``hf_hub_id``) to the published ones only, so that timm's ``list_pretrained`` and its
    tests see exactly the tags that have weights. The first tag of a model stays its default tag
    while none is published.
    """
    return {name: {**({'hf_hub_id': hub_repo_id(name)} if name in PUBLISHED else {}), 'hf_hub_filename': WEIGHTS_FILE,
                   'license': LICENSE, 'paper_ids': PAPER_ID, 'paper_name': PAPER_NAME, **cfg}
            for name, cfg in cfgs.items()}


def published_tags(model_name: str) -> Tuple[str, ...]:
    """The tags of ``model_name`` whose weights are published (``PUBLISHED``), in registry order."""
    return tuple(name.split('.', 1)[1] for name in get_arch_pretrained_cfgs(model_name) if name in PUBLISHED)


def _where(cfg) -> str:
    if cfg.state_dict is not None:
        return 'an in-memory state dict'
    if cfg.source == 'local-dir' or cfg.file:
        return f'file {cfg.file}'
    return f'Hugging Face Hub repository {cfg.hf_hub_id} ({cfg.hf_hub_filename or WEIGHTS_FILE})'


def _check_local_file(name: str, path: str, where: str) -> None:
    """A local weight file is judged by ``checkpoint.checkpoint_problem`` (its framing, nothing loaded)
    before timm reads it, so an empty, cut-off or foreign file is named as such."""
    problem = checkpoint_problem(path)
    if problem:
        raise PretrainedLoadError(f'{name}: cannot read the pretrained weights from {where}: it {problem}')


def check_pretrained_source(
        variant: str,
        pretrained_cfg: Optional[Any] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, Any], str]:
    """Check where ``pretrained=True`` would load ``variant``'s weights from, before anything is built.

    Returns the ``pretrained_cfg_overlay`` to build with (Hub sources pinned to ``model.safetensors``)
    and a description of the source for error messages. Raises :class:`WeightsNotPublishedError` for a
    registry tag that is not in ``PUBLISHED``, ``FileNotFoundError`` for a missing local file and
    ``ValueError`` for a source that is not safetensors.
    """
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay)
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    overlay = dict(pretrained_cfg_overlay or {})
    if cfg.state_dict is not None:
        return overlay, _where(cfg)
    if cfg.source == 'local-dir':
        weights = os.path.join(cfg.file or '', WEIGHTS_FILE)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f'{name}: local-dir:{cfg.file} has no {WEIGHTS_FILE} (only safetensors weights are loaded)')
        _check_local_file(name, weights, _where(cfg))
        return overlay, _where(cfg)
    if cfg.file:
        if not str(cfg.file).endswith('.safetensors'):
            raise ValueError(f'{name}: pretrained_cfg_overlay file={cfg.file!r} is not allowed: '
                             f'only .safetensors weight files are loaded (no pickle)')
        if not os.path.isfile(cfg.file):
            raise FileNotFoundError(f'{name}: pretrained weight file {cfg.file} does not exist')
        _check_local_file(name, cfg.file, _where(cfg))
        return overlay, _where(cfg)
    if cfg.url and not cfg.hf_hub_id:
        raise ValueError(f'{name}: url={cfg.url!r} is not allowed: weights load from the Hugging Face Hub '
                         f'(hf_hub_id) or a local .safetensors file (file)')
    if not cfg.hf_hub_id:
        if not cfg.tag or name not in PUBLISHED:
            raise WeightsNotPublishedError(
                f'{variant}: the weights of tag {cfg.tag!r} ({name}) are not published yet '
                f'(they are to be at https://huggingface.co/{hub_repo_id(name) if cfg.tag else HUB_ORG}). '
                f'Published tags of {variant}: {", ".join(published_tags(variant)) or "none"}. Use pretrained=False, '
                f"a published tag, or a local file with pretrained_cfg_overlay=dict(file='.../{WEIGHTS_FILE}').")
        overlay['hf_hub_id'] = hub_repo_id(name)  # a tag marked published after the registry was built
        cfg = dataclasses.replace(cfg, hf_hub_id=overlay['hf_hub_id'])
    filename = cfg.hf_hub_filename or WEIGHTS_FILE
    if not filename.endswith('.safetensors'):
        raise ValueError(f'{name}: hf_hub_filename={filename!r} is not allowed: only .safetensors weights are loaded')
    overlay['hf_hub_filename'] = filename
    return overlay, _where(dataclasses.replace(cfg, hf_hub_filename=filename))


def build_model_with_hub(model_cls: Callable, variant: str, pretrained: bool, **kwargs):
    """timm's ``build_model_with_cfg`` with the source checked first and load failures made explicit."""
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    overlay, where = check_pretrained_source(
        variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    kwargs['pretrained_cfg_overlay'] = overlay
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), overlay)
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (OSError, SafetensorError) as e:
        raise PretrainedLoadError(f'{name}: cannot read the pretrained weights from {where}: {e}') from e
    except RuntimeError as e:
        if 'state_dict' not in str(e):  # only load_state_dict's key/shape errors are about the weights
            raise
        raise PretrainedLoadError(f'{name}: the pretrained weights from {where} do not fit the model: {e}') from e

"""``timm-pnnh publish``: a timm ``train.py`` checkpoint and a ``validate.py`` results file -> a Hub repository.

The folder holds what timm's own ``save_for_hf`` writes (``config.json`` with ``architecture``,
``num_classes``, ``model_args`` and ``pretrained_cfg``; ``model.safetensors``, no pickle) and a
``README.md`` rendered from the model card template ``MODEL_CARD.md`` (package data) with the numbers of
the results file, what the weights are (trained here, or converted by ``timm-pnnh convert``) and the coder of
the model's family. Without ``--dry-run`` the folder is then uploaded with huggingface_hub (``HfApi.upload_folder``).

Refused, with nothing written: a model that timm-pnnh does not register, a tag without a cfg, a checkpoint
whose keys or shapes differ from the model that ``create_model('<model>.<tag>')`` builds, a classifier
whose class count differs from the tag's ``num_classes``, non-finite weights, a results file for another
model or with non-finite accuracies, and a non-empty target folder without ``--overwrite``. The folder is
written to a temporary folder beside the target and renamed into place at the end.

The published weights must load with ``timm.create_model('<model>.<tag>', pretrained=True)``, i.e. with
the registered defaults: a checkpoint trained with ``--model-kwargs`` is refused.
"""
import argparse
import json
import os
import re
import string
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
from timm.models import get_arch_pretrained_cfgs, model_entrypoint, split_model_name_tag
from timm.models._hub import save_for_hf

import timm_pnnh
from timm_pnnh.checkpoint import mismatches, read_checkpoint, state_dict_of
from timm_pnnh.errors import UsageError, check_output_folder
from timm_pnnh.files import build_folder, output_folder_kept, markdown_table
from timm_pnnh.models import arch_of, family_of, registered_models
from timm_pnnh.models._cfgs import hub_repo_id
from timm_pnnh.models._converted import CONVERSIONS
from timm_pnnh.schema import VALIDATE_RESULT, anything, check_json, read_json

__all__ = ['DATASETS', 'PublishError', 'load_checkpoint_weights', 'load_results', 'render_card', 'write_folder',
           'push_folder', 'register']

# weight tag -> (Hugging Face dataset id, dataset name, the split validate.py reports on)
DATASETS: Dict[str, Tuple[str, str, str]] = {
    'fmnist': ('zalando-datasets/fashion_mnist', 'Fashion-MNIST', 'test'),
    'cifar10': ('uoft-cs/cifar10', 'CIFAR-10', 'test'),
    'in1k': ('ILSVRC/imagenet-1k', 'ImageNet-1k', 'validation'),
}


def dataset_key(architecture: str, tag: str) -> Optional[str]:
    """The ``DATASETS`` key of a tag: itself, or ``in1k`` for the tags of converted ImageNet-1k weights."""
    if tag in DATASETS:
        return tag
    return 'in1k' if f'{architecture}.{tag}' in CONVERSIONS else None


DEFAULT_TEMPLATE = Path(__file__).resolve().parent / 'MODEL_CARD.md'
TEMPLATE_NOTES = re.compile(r'<!-- template-notes:begin -->.*?<!-- template-notes:end -->\n?', re.S)
# train.py arguments shown in the card's recipe table, when the checkpoint records them
RECIPE_ARGS = ('dataset', 'epochs', 'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'sched', 'warmup_epochs',
               'smoothing', 'mixup', 'cutmix', 'aa', 'reprob', 'drop_path', 'model_ema', 'model_ema_decay', 'amp',
               'seed')


class PublishError(UsageError):
    """The checkpoint, results file or target folder cannot be published as asked."""


def _architecture_and_tag(name: str) -> Tuple[str, str]:
    architecture, tag = split_model_name_tag(name)
    if architecture not in registered_models():
        raise PublishError(f'model {name!r} is not a timm-pnnh model; registered: {", ".join(registered_models())}')
    cfgs = get_arch_pretrained_cfgs(architecture)
    tags = [n.split('.', 1)[1] for n in cfgs]
    if tag not in tags:
        raise PublishError(f'model {name!r}: tag {tag!r} has no pretrained cfg; tags of {architecture}: {", ".join(tags)} '
                           f'(give --model {architecture}.<tag>)')
    return architecture, tag


def load_checkpoint_weights(path: str, use_ema: bool, unsafe_pickle: bool = False
                            ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state dict (or its EMA) of a ``train.py`` checkpoint, and the checkpoint's other entries.

    timm's ``CheckpointSaver`` writes ``state_dict``, ``state_dict_ema`` (with ``--model-ema``), ``arch``
    (the ``--model`` name), ``args`` (the ``argparse.Namespace``), ``epoch``, ``metric``, ``optimizer``...
    Read with ``weights_only=True`` (``argparse.Namespace`` allowed, as timm does) unless ``unsafe_pickle``.
    """
    try:
        checkpoint = read_checkpoint('--checkpoint', path, unsafe_pickle)
    except UsageError as e:
        raise PublishError(str(e)) from None
    key = 'state_dict_ema' if use_ema else 'state_dict'
    state_dict = state_dict_of(checkpoint, key)
    if state_dict is None:
        found = ', '.join(sorted(checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        hint = ' (train.py writes it with --model-ema)' if use_ema else ''
        raise PublishError(f'--checkpoint {path}: no {key!r} entry{hint}; found: {found}')
    meta = {k: v for k, v in checkpoint.items() if k not in ('state_dict', 'state_dict_ema', 'optimizer')}
    return state_dict, meta


def _check_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], name: str) -> None:
    expected = model.state_dict()
    classifier = model.pretrained_cfg['classifier'] + '.weight'
    num_classes = model.pretrained_cfg['num_classes']
    if classifier in state_dict and state_dict[classifier].shape[0] != num_classes:
        raise PublishError(f'num_classes mismatch: the checkpoint classifier {classifier} has '
                           f'{state_dict[classifier].shape[0]} classes, {name} has num_classes={num_classes}')
    problem = mismatches(expected, state_dict, first=5)
    if problem:
        raise PublishError(f'the checkpoint does not match {name}: {problem}')
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise PublishError(f'the checkpoint has non-finite values (nan/inf) in {len(bad)} tensors: {bad[:5]}')


def load_results(path: str, architecture: str, tag: str, params: int) -> Dict[str, Any]:
    """The one ``validate.py --results-file X --results-format json`` entry for ``architecture``, checked
    (``schema.VALIDATE_RESULT``: accuracies in [0, 100], a finite parameter count...)."""
    what = 'a validate.py --results-file (--results-format json)'
    results = read_json('--results', path, anything, what)
    name = f'--results={path!r}'
    entries = results if isinstance(results, list) else [results]
    entries = [r for r in entries if isinstance(r, dict) and split_model_name_tag(str(r.get('model', '')))[0] == architecture]
    if len(entries) != 1:
        raise PublishError(f'{name}: expected one validate.py result for {architecture}, found {len(entries)}')
    result = entries[0]
    if 'error' in result:
        raise PublishError(f'{name}: validation of {architecture} failed: {result["error"]}')
    check_json(name, result, VALIDATE_RESULT, f'{what} entry')
    result_tag = split_model_name_tag(result['model'])[1]
    if result_tag and result_tag != tag:
        raise PublishError(f'{name}: results are for {result["model"]}, not {architecture}.{tag}')
    if 'param_count' in result and abs(result['param_count'] - params / 1e6) > 0.006:
        raise PublishError(f'{name}: param_count={result["param_count"]}M, but {architecture}.{tag} '
                           f'has {params / 1e6:.2f}M parameters: the results are for another model')
    return result


def _recipe_table(args: Any) -> str:
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    rows = [[f'`--{k.replace("_", "-")}`', f'`{args[k]}`'] for k in RECIPE_ARGS
            if args.get(k) is not None and args[k] is not False and args[k] != '']
    if not rows:
        return 'The checkpoint records no train.py arguments.'
    return markdown_table(['train.py argument', 'value'], rows, [False, False])


def render_card(template: str, values: Dict[str, Any]) -> str:
    """``template`` without its template notes, each ``${key}`` replaced by ``values[key]`` (``string.Template``)."""
    try:
        return string.Template(TEMPLATE_NOTES.sub('', template)).substitute(values)
    except (KeyError, ValueError) as e:
        raise PublishError(f'the model card template has a placeholder that publish does not fill: {e}') from e


CODERS = {
    ('pnnh', 'resnet'): 'each stride-1 block has a coder, a convolution E and its adjoint (the transposed convolution '
                        'with the same weight tensor) around the block\'s non-linearity, beside a learner, an ordinary '
                        'conv-norm-act-conv branch whose output starts at zero; at deployment the block folds its '
                        'BatchNorms and keeps learner and coder side by side, with no identity term. As in the '
                        'paper\'s Figure 2, the blocks that change stride or width keep the original residual block.',
    ('pnnh', 'vit'): 'each transformer block has a coder, a linear map E and its transpose (the same Parameter) '
                     'around a GELU, in place of the residual stream beside attention and MLP, whose last '
                     'projections start at zero; at deployment LayerScale folds into the projections and no term is '
                     'the block input.',
    'plain': 'this model is a plain baseline of the comparison: the residual architecture with every shortcut '
             'removed, and no coder.',
    'residual': 'this model is a residual baseline of the comparison, with no coder.',
    'sasp': 'this model is the skipless SAS-P ViT baseline of the comparison, with no coder.',
}


def coder_description(architecture: str) -> str:
    """What the coder of ``architecture``'s family is (``CODERS``), for the model card."""
    family = family_of(architecture)
    return CODERS[(family, arch_of(architecture)) if family == 'pnnh' else family]


def provenance(architecture: str, tag: str, meta: Dict[str, Any], train_config: str) -> Tuple[str, str]:
    """(what the weights are, the card's training section): converted by ``timm-pnnh convert`` (the checkpoint
    says ``converted_from``), fine-tuned from timm's converted weights (a converted tag), or trained here."""
    recipe = (f"Trained with timm's `train.py` and the recipe file `{train_config}` of the timm-pnnh repository. The "
              f"checkpoint records these train.py arguments:\n\n{_recipe_table(meta.get('args'))}")
    if meta.get('converted_from'):
        return (f"These weights were not trained by timm-pnnh: `timm-pnnh convert` converted them exactly from a timm "
                f"`{meta['converted_from']}` checkpoint (the PNNH net computes the same function as its residual "
                f"source), and the results below are measured on them.",
                f"None here: the weights are the residual `{meta['converted_from']}` checkpoint's, converted without "
                f"training. Its own training recipe applies.")
    conversion = CONVERSIONS.get(f'{architecture}.{tag}')
    if conversion is not None:
        return (f"These weights were fine-tuned by timm-pnnh as a PNNH net, starting from timm's "
                f"`{conversion.source}` converted exactly.", recipe)
    return 'These weights were trained by timm-pnnh, not by the paper\'s authors.', recipe


def _card_values(model, name: str, repo_id: str, result: Dict[str, Any], meta: Dict[str, Any], use_ema: bool,
                 train_config: str) -> Dict[str, Any]:
    architecture, tag = name.split('.')
    cfg = model.pretrained_cfg
    dataset_id, dataset_name, split = DATASETS[dataset_key(architecture, tag)]
    fmt = lambda xs: ', '.join(f'{x:g}' for x in xs)  # noqa: E731
    top5 = result['top5'] if cfg['num_classes'] > 5 else 'n/a'
    return dict(
        model=name, architecture=architecture, tag=tag, description=model_entrypoint(architecture).__doc__, repo_id=repo_id, dataset_id=dataset_id,
        dataset_name=dataset_name, eval_split=split, top1=result['top1'], top5=top5,
        params=f'{sum(p.numel() for p in model.parameters()) / 1e6:.3f}',
        eval_img_size=result.get('img_size', cfg['input_size'][-1]), eval_crop_pct=result.get('crop_pct', cfg['crop_pct']),
        eval_interpolation=result.get('interpolation', cfg['interpolation']),
        input_size='x'.join(str(s) for s in cfg['input_size']), num_classes=cfg['num_classes'],
        mean=fmt(cfg['mean']), std=fmt(cfg['std']), crop_pct=cfg['crop_pct'],
        weights='the EMA weights (`state_dict_ema`)' if use_ema else 'the trained weights (`state_dict`)',
        epoch=meta.get('epoch', 'not recorded'), coder=coder_description(architecture),
        **dict(zip(('provenance', 'training'), provenance(architecture, tag, meta, train_config))),
        timm_version=timm.__version__, timm_pnnh_version=timm_pnnh.__version__,
    )


def write_folder(checkpoint: str, results: str, output: str, model_name: Optional[str] = None, use_ema: bool = False,
                 train_config: str = '', template: Optional[str] = None, repo_id: Optional[str] = None,
                 overwrite: bool = False, unsafe_pickle: bool = False) -> Path:
    """Write the Hub-ready folder ``output``; every check passes before anything is written."""
    check_output_folder('--output', output, overwrite)
    state_dict, meta = load_checkpoint_weights(checkpoint, use_ema, unsafe_pickle)
    name = model_name or str(meta.get('arch') or '')
    if model_name and meta.get('arch') and split_model_name_tag(meta['arch'])[0] != split_model_name_tag(model_name)[0]:
        raise PublishError(f'--model {model_name}: the checkpoint was trained as {meta["arch"]}')
    architecture, tag = _architecture_and_tag(name)
    name = f'{architecture}.{tag}'
    if dataset_key(architecture, tag) is None:
        raise PublishError(f'tag {tag!r} has no dataset entry for the model card; known: {", ".join(DATASETS)}')
    args = vars(meta['args']) if isinstance(meta.get('args'), argparse.Namespace) else {}
    if args.get('model_kwargs'):
        raise PublishError(f'the checkpoint was trained with --model-kwargs {args["model_kwargs"]}; published weights '
                           f'must load with timm.create_model({name!r}, pretrained=True), i.e. registered defaults')
    if not train_config or not os.path.isfile(train_config):
        raise PublishError(f'--train-config {train_config!r}: give the train_configs file the weights were trained with')
    if Path(train_config).resolve().is_relative_to(Path.cwd().resolve()):  # as seen from a checkout's root
        train_config = Path(train_config).resolve().relative_to(Path.cwd().resolve()).as_posix()
    template_path = Path(template) if template else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise PublishError(f'--card-template={str(template_path)!r}: no such file (default: the MODEL_CARD.md in the package)')

    model = timm.create_model(name).eval()
    _check_weights(model, state_dict, name)
    model.load_state_dict(state_dict)
    result = load_results(results, architecture, tag, sum(p.numel() for p in model.parameters()))
    repo_id = repo_id or hub_repo_id(name)
    card = render_card(template_path.read_text(encoding='utf-8'),
                       _card_values(model, name, repo_id, result, meta, use_ema, train_config))

    def write(folder: Path) -> None:
        save_for_hf(model, folder, safe_serialization=True)
        (folder / 'README.md').write_text(card, encoding='utf-8')
        check_output_folder('--output', output, overwrite)  # nothing appeared there meanwhile
    return build_folder(output, write)


def push_folder(folder: Path, repo_id: str, private: bool = False, token: Optional[str] = None,
                commit_message: str = 'Add weights') -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(commit, 'commit_url', commit))


def check_arguments(args) -> None:
    """``--output``: a folder that can be written, empty unless --overwrite (checked before anything is read)."""
    check_output_folder('--output', args.output, args.overwrite)


def run(args) -> int:
    check_arguments(args)
    folder = write_folder(args.checkpoint, args.results, args.output, model_name=args.model, use_ema=args.use_ema,
                          train_config=args.train_config, template=args.card_template, repo_id=args.repo_id,
                          overwrite=args.overwrite, unsafe_pickle=args.unsafe_pickle)
    files = ', '.join(sorted(p.name for p in folder.iterdir()))
    print(f'wrote {folder} ({files})')
    if args.dry_run:
        return 0
    config = json.loads((folder / 'config.json').read_text())
    name = f'{config["architecture"]}.{config["pretrained_cfg"]["tag"]}'
    repo_id = args.repo_id or hub_repo_id(name)
    print(f'pushed to {push_folder(folder, repo_id, private=args.private, token=args.token)}')
    print(f"now add '{name}' to PUBLISHED in timm_pnnh/models/_cfgs.py")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'publish', help='turn a train.py checkpoint and validate.py results into a Hugging Face Hub repository')
    parser.add_argument('--checkpoint', required=True, help='train.py checkpoint, e.g. output/train/X/model_best.pth.tar')
    parser.add_argument('--results', required=True, help='validate.py --results-file (--results-format json)')
    parser.add_argument('--output', required=True, help='folder to write (model.safetensors, config.json, README.md)')
    parser.add_argument('--train-config', required=True, help='the train_configs file the weights were trained with')
    parser.add_argument('--model', default=None,
                        help="'<model>.<tag>' to publish as (default: the checkpoint's train.py --model)")
    parser.add_argument('--use-ema', action='store_true', help='publish the EMA weights (state_dict_ema)')
    parser.add_argument('--repo-id', default=None, help=f'Hub repository (default: the tag cfg hf_hub_id, {hub_repo_id("<model>.<tag>")})')
    parser.add_argument('--card-template', default=None, help=f'model card template (default: {DEFAULT_TEMPLATE})')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty --output folder')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='allow a checkpoint that needs unpickling of Python objects (runs code from the file: '
                             'only for files you trust); default: torch.load(weights_only=True)')
    parser.add_argument('--dry-run', action='store_true', help='write the folder only, push nothing')
    parser.add_argument('--private', action='store_true', help='create the Hub repository as private')
    parser.add_argument('--token', default=None, help='Hugging Face token (default: the logged-in one)')
    parser.set_defaults(func=run, kept=output_folder_kept)

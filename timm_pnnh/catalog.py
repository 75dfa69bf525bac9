"""``timm-pnnh models``: every registered model with its parameters and GFLOPs at its default input."""
import json
from typing import Dict, List

import timm
import torch

from timm_pnnh.bench import flops_per_image
from timm_pnnh.errors import UsageError
from timm_pnnh.files import check_markers, markdown_table, write_between_markers
from timm_pnnh.models import family_of, registered_models


def describe(name: str) -> Dict:
    """Parameters and forward GFLOPs (a multiply-add counts as 2 FLOPs) of ``name`` at batch 1."""
    model = timm.create_model(name).eval()
    input_size = tuple(model.pretrained_cfg['input_size'])
    return dict(model=name, family=family_of(name), input_size=list(input_size),
                params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                gflops=flops_per_image(model, torch.zeros(1, *input_size)))


def catalog_table(rows: List[Dict]) -> str:
    """One row per model: name, family, input size, parameters and GFLOPs."""
    return markdown_table(
        ['model', 'family', 'input', 'params (M)', 'GFLOPs'],
        [[f"`{r['model']}`", r['family'], 'x'.join(map(str, r['input_size'])), f"{r['params_m']:.3f}", f"{r['gflops']:.3f}"]
         for r in rows], [False, False, False, True, True])


TABLE_MARKERS = ('<!-- models-table:start -->', '<!-- models-table:end -->')


def run(args) -> int:
    names = registered_models(args.filter)
    if not names:
        raise UsageError(f'--filter={args.filter!r} matches no registered model; see `timm-pnnh models --names-only`')
    if args.write_readme:
        check_markers(args.write_readme, TABLE_MARKERS)
    if args.names_only:
        print('\n'.join(names))
        return 0
    rows = [describe(name) for name in names]
    print(json.dumps(rows, indent=1) if args.format == 'json' else catalog_table(rows))
    if args.write_readme:
        write_between_markers(args.write_readme, TABLE_MARKERS, catalog_table(rows))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser('models', help='list the registered models with params and GFLOPs')
    parser.add_argument('--filter', default='', help="timm wildcard pattern, e.g. 'pnnh_resnet*'")
    parser.add_argument('--format', choices=('markdown', 'json'), default='markdown')
    parser.add_argument('--names-only', action='store_true', help='print the names only (fast)')
    parser.add_argument('--write-readme', metavar='README', default=None,
                        help='also write the markdown table between the models-table markers of this file')
    parser.set_defaults(func=run)

"""``timm-pnnh diagnose``: how much of the input each block's output still holds ("dissipating inputs").

The paper (Zhang et al., arXiv:2402.08645, Figure 1) shows the input decaying with depth in plain CNNs
and kept in ResNets, measured with the DISTS dissimilarity score. We measure retention with three
linear, model-agnostic quantities instead (our choice), per block in depth order:

* ``r2`` -- **linear reconstruction**. At each position of a block's feature map, a ridge least-squares
  map from the C feature values to the input pixels that position covers (the image resized to a
  whole multiple ``r`` of the feature map and cut into r x r cells, "space to depth"; r = 1 for a
  stride-1 feature map, patch-sized cells for a ViT's token grid). Fitted on one batch, scored on
  another (the ridge penalty chosen by generalised cross-validation on the fit batch): R^2 = 1 - SSE /
  SST over all target values of the scoring batch (SST about that batch's mean). 1: the input is
  linearly recoverable; 0: no better than the mean image; it can be negative.
* ``cka`` -- **linear CKA** (Kornblith et al. 2019) between the flattened inputs and the flattened
  block outputs over the scoring batch. Invariant to orthogonal transforms and isotropic scaling of
  either side; 0 when the features do not vary across images (defined so, 0/0 otherwise).
* ``alive`` -- **surviving activations**: the fraction of the block output's entries that are > 0.
  For blocks that end in a ReLU (every CNN block here and timm's ResNet blocks) it is the fraction
  that survived the last non-linearity (paper, Proposition 3.1); for blocks that do not (a ViT's
  residual stream) it is the fraction a ReLU applied to the output would keep.

Blocks are found as: every module of the ``layerN`` Sequentials (ResNets), ``model.blocks`` (ViTs and
the like), ``model.stages[i].blocks`` (or the stages themselves); otherwise the model's
``forward_intermediates`` outputs. Token outputs (B, N, D) drop ``num_prefix_tokens`` and are laid
out on their square grid. Norm layers use batch statistics for a model at initialisation (its running
statistics are still 0/1; this is what the first training steps see) and running statistics for a
trained model or a checkpoint; nothing in the model is changed.
"""
import copy
import csv
import math
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from timm_pnnh.checkpoint import check_checkpoint_file, load_weights
from timm_pnnh.errors import UsageError, check_image_size, check_model, check_number, check_output_dir
from timm_pnnh.files import atomic_write, markdown_table, save_figure, write_json

MEASURES = ('r2', 'cka', 'alive')
MEASURE_TITLES = {'r2': 'linear reconstruction R^2', 'cka': 'linear CKA with the input', 'alive': 'fraction > 0'}
PLOT_MISSING = ('matplotlib is not installed: no PNG written (install it with '
                "`python3 -m pip install matplotlib` or the extra: `pip install -e '.[plot]'`)")


# ----------------------------------------------------------------------------------------------- measures

def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA between ``x`` (n, p) and ``y`` (n, q), rows paired; 0 if either side is constant."""
    if x.shape[0] != y.shape[0] or x.dim() != 2 or y.dim() != 2:
        raise ValueError(f'linear_cka needs two (n, features) matrices with the same n: got {tuple(x.shape)}, {tuple(y.shape)}')
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    kx, ky = x @ x.T, y @ y.T  # n x n Gram matrices: cheap when features outnumber samples
    denom = kx.norm() * ky.norm()
    scale = max(kx.abs().max().item(), 1e-300) * max(ky.abs().max().item(), 1e-300)
    if denom.item() <= 1e-12 * scale or denom.item() == 0:
        return 0.0
    return float((kx * ky).sum() / denom)


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def ridge_r2(fit_x: torch.Tensor, fit_y: torch.Tensor, score_x: torch.Tensor, score_y: torch.Tensor,
             alpha: Optional[float] = None) -> float:
    """Fit ``y ~ x W + b`` by ridge least squares on the fit rows; return R^2 on the scoring rows.

    The ridge penalty is ``alpha`` times the mean eigenvalue of the centred fit features' Gram matrix
    (scale-free); ``alpha=None`` picks it from ``RIDGE_GRID`` by generalised cross-validation on the
    fit rows alone (so few rows and many features do not overfit). R^2 = 1 - SSE / SST, SST about
    the scoring targets' mean; 0 when SST is 0.
    """
    fx, fy, sx, sy = (t.double() for t in (fit_x, fit_y, score_x, score_y))
    mx, my = fx.mean(0), fy.mean(0)
    fx, fy = fx - mx, fy - my
    u, sv, vt = torch.linalg.svd(fx, full_matrices=False)
    eig = sv ** 2
    scale = eig.sum() / fx.shape[1]
    if scale.item() <= 0:  # constant features: the best linear map predicts the mean
        pred = my.expand_as(sy)
    else:
        uy = u.T @ fy
        power = (uy ** 2).sum(1)
        total = (fy ** 2).sum()

        def gcv(a):
            shrink = eig / (eig + a * scale)
            dof = fx.shape[0] - shrink.sum()
            rss = total - (2 * shrink - shrink ** 2) @ power
            return (rss / dof ** 2).item() if dof.item() > 0.5 else float('inf')

        a = alpha if alpha is not None else min(RIDGE_GRID, key=gcv)
        weight = vt.T @ ((sv / (eig + a * scale))[:, None] * uy)
        pred = (sx - mx) @ weight + my
    sst = ((sy - sy.mean(0)) ** 2).sum()
    if sst.item() == 0:
        return 0.0
    return float(1 - ((sy - pred) ** 2).sum() / sst)


def input_targets(images: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The pixels each cell of a ``grid`` covers: (B * gh * gw, c * r * r), rows in (b, i, j) order.

    The image is resized (area/bilinear) to ``r * grid`` with ``r = ceil(image size / grid)`` unless
    it already has that size, then rearranged space-to-depth.
    """
    gh, gw = grid
    h, w = images.shape[-2:]
    r = max(1, math.ceil(h / gh), math.ceil(w / gw))
    if (h, w) != (r * gh, r * gw):
        mode = 'area' if h >= r * gh and w >= r * gw else 'bilinear'
        images = F.interpolate(images, size=(r * gh, r * gw), mode=mode, **({} if mode == 'area' else {'align_corners': False}))
    cells = F.pixel_unshuffle(images, r)  # B, c*r*r, gh, gw
    return cells.permute(0, 2, 3, 1).reshape(-1, cells.shape[1])


def _rows(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B * H * W, C), rows in (b, i, j) order."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def block_retention(fit_in: torch.Tensor, fit_feat: torch.Tensor, score_in: torch.Tensor,
                    score_feat: torch.Tensor, alpha: Optional[float] = None) -> Dict[str, float]:
    """``r2``, ``cka`` and ``alive`` of one block from its NCHW outputs on a fit and a scoring batch."""
    grid = tuple(fit_feat.shape[-2:])
    r2 = ridge_r2(_rows(fit_feat), input_targets(fit_in, grid), _rows(score_feat), input_targets(score_in, grid), alpha)
    cka = linear_cka(score_in.flatten(1), score_feat.flatten(1))
    alive = float((score_feat > 0).double().mean())
    return dict(r2=r2, cka=cka, alive=alive)


# ------------------------------------------------------------------------------------------------- blocks

def find_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The model's blocks in depth order (see the module docstring); [] when none are recognised."""
    layers = [(n, m) for n, m in model.named_children() if re.fullmatch(r'layer\d+', n) and isinstance(m, nn.Sequential)]
    if layers:
        return [(f'{n}.{i}', block) for n, seq in layers for i, block in seq.named_children()]
    blocks = getattr(model, 'blocks', None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
        return [(f'blocks.{i}', block) for i, block in blocks.named_children()]
    stages = getattr(model, 'stages', None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
        found = []
        for si, stage in stages.named_children():
            inner = getattr(stage, 'blocks', None)
            if isinstance(inner, (nn.Sequential, nn.ModuleList)) and len(inner):
                found += [(f'stages.{si}.blocks.{i}', block) for i, block in inner.named_children()]
            else:
                found.append((f'stages.{si}', stage))
        return found
    return []


def _as_grid(model: nn.Module, out) -> torch.Tensor:
    """A block output as NCHW: tuples give their first tensor, tokens (B, N, D) their square grid."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if out.dim() == 4:
        return out
    if out.dim() == 3:
        tokens = out[:, getattr(model, 'num_prefix_tokens', 0):]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f'a block output of {tokens.shape[1]} tokens is not a square grid')
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
    if out.dim() == 2:
        return out[:, :, None, None]
    raise ValueError(f'cannot read a block output of shape {tuple(out.shape)}')


@torch.no_grad()
def block_outputs(model: nn.Module, images: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """(name, NCHW output) of every block of ``model`` on ``images``, in depth order."""
    blocks = find_blocks(model)
    if not blocks:
        if not hasattr(model, 'forward_intermediates'):
            raise ValueError(f'{type(model).__name__}: no blocks found (layerN, blocks, stages) and no forward_intermediates')
        outs = model.forward_intermediates(images, intermediates_only=True)
        return [(f'intermediate.{i}', _as_grid(model, o)) for i, o in enumerate(outs)]
    captured: Dict[str, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, _as_grid(model, o).detach().clone()))
             for name, block in blocks]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return [(name, captured[name]) for name, _ in blocks if name in captured]


def _prepared(model: nn.Module, batch_stats: bool) -> nn.Module:
    """Eval mode; with ``batch_stats`` a copy whose norm layers use batch statistics."""
    if not batch_stats:
        return model.eval()
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.train()
    return model


def retention(model: nn.Module, fit_images: torch.Tensor, score_images: torch.Tensor, batch_stats: bool,
              alpha: Optional[float] = None) -> List[Dict]:
    """Per block, in depth order: index (1-based), name, output shape, r2, cka, alive."""
    if fit_images.shape[1:] != score_images.shape[1:]:
        raise ValueError(f'fit and scoring images differ in shape: {tuple(fit_images.shape)} vs {tuple(score_images.shape)}')
    was_training = model.training
    net = _prepared(model, batch_stats)
    try:
        fit = block_outputs(net, fit_images)
        score = dict(block_outputs(net, score_images))
    finally:
        model.train(was_training)
    rows = []
    for index, (name, fit_feat) in enumerate(fit, start=1):
        values = block_retention(fit_images, fit_feat, score_images, score[name], alpha)
        rows.append(dict(index=index, name=name, shape=list(fit_feat.shape[1:]), **values))
    return rows


# ---------------------------------------------------------------------------------------------- data, I/O

# The fewest images per batch that the measures mean something on. Linear CKA compares n x n centred Gram
# matrices, of rank n - 1 at most: it is 0 for one image and 1 for two, whatever the features, and near 1 for
# a few (for unrelated random features: 0.99 at 8 images, 0.84 at 256, the default). Compare blocks and nets
# measured on batches of one size.
MIN_BATCH = 8


def check_batch(arg: str, batch_size: int) -> int:
    """``batch_size`` (given as ``arg``) if the retention measures mean something on it (``MIN_BATCH``)."""
    if batch_size < MIN_BATCH:
        raise UsageError(f'{arg}={batch_size} is not allowed: it must be >= {MIN_BATCH}; on fewer images the '
                         'retention measures say nothing (linear CKA is 0 for one image and 1 for two, whatever the '
                         'features)')
    return batch_size


def diagnosis_images(batch_size: int, in_chans: int = 1, img_size: int = 28, data_dir=None,
                     seed: int = 0, arg: str = '--batch-size') -> Tuple[torch.Tensor, torch.Tensor, str]:
    """Two disjoint batches (fit, score) and where they come from.

    Fashion-MNIST test images (seeded draw; channels repeated to ``in_chans``, resized to ``img_size``)
    when the dataset is found, else seeded standard-normal images (said so in the returned source).
    ``batch_size`` is given as ``arg``: too few images to measure by (``MIN_BATCH``), or more than the
    dataset holds, is a UsageError naming it.
    """
    check_batch(arg, batch_size)
    from timm_pnnh.data import load_fashion_mnist
    generator = torch.Generator().manual_seed(seed)
    try:
        images, _ = load_fashion_mnist(data_dir, train=False)
    except FileNotFoundError:
        noise = torch.randn(2 * batch_size, in_chans, img_size, img_size, generator=generator)
        return noise[:batch_size], noise[batch_size:], f'synthetic: seeded N(0, 1) images (seed {seed}; Fashion-MNIST not found)'
    if 2 * batch_size > len(images):
        raise UsageError(f'{arg}={batch_size} is not allowed: two batches must fit in the {len(images)} test images')
    images = images[torch.randperm(len(images), generator=generator)[:2 * batch_size]]
    if img_size != images.shape[-1]:
        images = F.interpolate(images, size=(img_size, img_size), mode='bilinear', align_corners=False)
    images = images.expand(-1, in_chans, -1, -1).contiguous()
    return images[:batch_size], images[batch_size:], f'Fashion-MNIST test images (seed {seed}, {2 * batch_size} drawn)'


def write_csv(path: os.PathLike, results: Dict[str, List[Dict]]) -> None:
    """One row per (model, block): model, index, name, shape, r2, cka, alive."""
    def write(f):
        writer = csv.writer(f)
        writer.writerow(['model', 'index', 'name', 'shape', *MEASURES])
        for model, rows in results.items():
            for row in rows:
                writer.writerow([model, row['index'], row['name'], 'x'.join(map(str, row['shape'])),
                                 *(f'{row[m]:.6f}' for m in MEASURES)])
    atomic_write(path, write)


def plot_retention(path: os.PathLike, curves: Dict[str, List[Dict]], title: str = '') -> Optional[str]:
    """PNG: one panel per measure, one line per model (x = block index). Returns a message if skipped."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return PLOT_MISSING
    def base(label):  # 'pnnh-56 init' and 'pnnh-56 trained' share a colour
        return label.rsplit(' ', 1)[0] if label.endswith((' init', ' trained')) else label

    bases = list(dict.fromkeys(base(label) for label in curves))
    cmap = plt.get_cmap('tab10' if len(bases) <= 10 else 'tab20')
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 4), squeeze=False)
    for ax, measure in zip(axes[0], MEASURES):
        for label, rows in curves.items():
            ax.plot([r['index'] for r in rows], [r[measure] for r in rows], marker='.', markersize=3, label=label,
                    color=cmap(bases.index(base(label)) % cmap.N), linestyle='--' if label.endswith(' init') else '-')
        ax.set_xlabel('block (depth order)')
        ax.set_title(MEASURE_TITLES[measure])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc='best')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return None


def summary_table(results: Dict[str, List[Dict]]) -> str:
    """Markdown: per model, the first, middle and last block's r2 / cka / alive."""
    table = []
    for model, rows in results.items():
        for i in (sorted({0, len(rows) // 2, len(rows) - 1}) if rows else []):
            r = rows[i]
            table.append([model, len(rows), f"{r['index']} `{r['name']}`", f"{r['r2']:.3f}", f"{r['cka']:.3f}", f"{r['alive']:.3f}"])
    return markdown_table(['model', 'blocks', 'block', 'r2', 'cka', 'alive'], table, [False, True, False, True, True, True])


# ------------------------------------------------------------------------------------------------ command

def create_for_diagnosis(name: str, in_chans: int, img_size: int, num_classes: int,
                         checkpoint: Optional[str] = None, unsafe_pickle: bool = False) -> nn.Module:
    """``timm.create_model`` at ``in_chans``; ``img_size`` is passed to models that take one (ViTs).

    ``checkpoint`` is read with ``checkpoint.load_weights``: safetensors, or ``torch.load(weights_only=True)``
    unless ``unsafe_pickle``.
    """
    check_model('--model', name)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans)
    try:
        model = timm.create_model(name, img_size=img_size, **kwargs)
    except (TypeError, ValueError) as err:
        if 'img_size' not in str(err):
            raise
        model = timm.create_model(name, **kwargs)
    check_image_size('--img-size', name, model, img_size)
    if checkpoint:
        load_weights(model, '--checkpoint', checkpoint, unsafe_pickle,
                     hint=f' (is --model={name!r} with --num-classes={num_classes} the checkpoint\'s model?)')
    return model


def run(args) -> int:
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        raise UsageError(f'--checkpoint given {len(args.checkpoint)} times for {len(args.model)} --model: '
                         'give one checkpoint per model, in the same order, or none')
    for name in ('batch_size', 'img_size', 'in_chans', 'num_classes'):
        check_number(f'--{name.replace("_", "-")}', getattr(args, name), minimum=1)
    if args.alpha is not None:
        check_number('--alpha', args.alpha, above=0)
    for name in args.model:
        check_model('--model', name)
    for path in args.checkpoint or ():
        check_checkpoint_file('--checkpoint', path)
    check_output_dir('--out', args.out)
    fit_images, score_images, source = diagnosis_images(args.batch_size, args.in_chans, args.img_size, args.data_dir, args.seed)
    print(f'input: {source}; fit on {len(fit_images)}, scored on {len(score_images)} images of '
          f'{args.in_chans}x{args.img_size}x{args.img_size}')
    results, meta = {}, {}
    for i, name in enumerate(args.model):
        checkpoint = args.checkpoint[i] if args.checkpoint else None
        torch.manual_seed(args.seed)
        model = create_for_diagnosis(name, args.in_chans, args.img_size, args.num_classes, checkpoint, args.unsafe_pickle)
        label = name if checkpoint is None else f'{name} ({Path(checkpoint).name})'
        label = label if label not in results else f'{label} #{i}'
        results[label] = retention(model, fit_images, score_images, batch_stats=checkpoint is None, alpha=args.alpha)
        meta[label] = dict(model=name, checkpoint=checkpoint, state='checkpoint' if checkpoint else 'init',
                           norm_stats='running' if checkpoint else 'batch')
    out = Path(args.out)
    write_json(out / 'diagnose.json', dict(input=source, seed=args.seed, batch_size=args.batch_size, alpha=args.alpha,
                                           models=meta, blocks=results))
    write_csv(out / 'diagnose.csv', results)
    print(summary_table(results))
    message = plot_retention(out / 'diagnose.png', results, title=f'retention vs depth ({source.split(":")[0].split(" (")[0]})')
    print(f'wrote {out / "diagnose.json"}, {out / "diagnose.csv"}' + ('' if message else f', {out / "diagnose.png"}'))
    if message:
        print(message, file=sys.stderr)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'diagnose', help='per-block input retention (linear reconstruction R^2, CKA, surviving activations)',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', action='append', required=True, help='a timm model name; repeat for several')
    parser.add_argument('--checkpoint', action='append', default=None,
                        help='a checkpoint per --model, same order (default: the model at initialisation)')
    parser.add_argument('--unsafe-pickle', action='store_true',
                        help='allow checkpoints that need unpickling of Python objects (runs code from the file: '
                             'only for files you trust); default: safetensors or torch.load(weights_only=True)')
    parser.add_argument('--img-size', type=int, default=28)
    parser.add_argument('--in-chans', type=int, default=1)
    parser.add_argument('--num-classes', type=int, default=10, help='classifier size (must match a checkpoint)')
    parser.add_argument('--batch-size', type=int, default=256, help='images in each of the fit and scoring batches')
    parser.add_argument('--alpha', type=float, default=None,
                        help='relative ridge penalty (default: chosen by generalised cross-validation on the fit batch)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-dir', default=None, help='folder holding FashionMNIST/raw (Debian\'s package is found on its own)')
    parser.add_argument('--out', default='output/diagnose')
    parser.set_defaults(func=run)

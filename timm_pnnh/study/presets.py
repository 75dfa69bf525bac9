"""The study's models and schedules: ``Row`` (one model), ``Preset`` (rows, recipe, seeds, data sizes),
the named ``PRESETS`` and the command-line overrides (``resolve_preset``)."""
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple

import timm

from timm_pnnh.bench import check_device
from timm_pnnh.models.cifar_resnet import CIFAR_DEPTHS
from timm_pnnh.training import Recipe

FAMILIES = ('plain', 'residual', 'pnnh')
RESNET_NAMES = {'plain': 'plain_resnet{depth}', 'residual': 'cifar_resnet{depth}', 'pnnh': 'pnnh_resnet{depth}'}
# the small-image ViTs (registered by timm_pnnh), for the presets with ``vit_variants``; ``sasp`` is the
# skipless SAS-P ViT (models/sasp_vit.py), the published baseline a PNNH ViT is also compared with
VIT_NAMES = {'plain': 'plain_vit_tiny_patch4_32', 'residual': 'cifar_vit_tiny_patch4_32', 'pnnh': 'pnnh_vit_tiny_patch4_32',
             'sasp': 'sasp_vit_tiny_patch4_32'}
VIT_KWARGS = (('img_size', 28),)
# ViTs train with a recipe shaped after DeiT's (AdamW, weight decay 0.05, linear warm-up then cosine decay), not
# the ResNets' SGD at lr 0.1; peak lr 1e-3 for the short schedules, reached after a warm-up of 10% of the steps
# (without one the PNNH ViT trained more slowly than the residual ViT in a short probe: docs/study.md)
VIT_RECIPE = dict(opt='adamw', lr=1e-3, weight_decay=0.05, warmup_fraction=0.1)


def row_recipe(row: 'Row', preset: 'Preset') -> Recipe:
    """The preset's recipe, with the ViT optimiser for ViT rows."""
    return replace(preset.recipe, **VIT_RECIPE) if row.arch == 'vit' else preset.recipe


# one knob at a time from the registered defaults (models/pnnh_resnet.py PNNH_KNOBS), then the
# combination of the project notes' first reading (C/2 3x3 Kaiming coder with a norm)
ABLATION_KNOBS: Tuple[Tuple[Tuple[str, Any], ...], ...] = (
    (), (('coder_lr_scale', 1.0),), (('coder_lr_scale', 0.01),), (('coder_ratio', 0.5),), (('coder_ratio', 0.25),), (('coder_kernel', 3),), (('coder_init', 'kaiming'),),
    (('coder_init', 'orthogonal'),), (('coder_norm', True),), (('learner_ratio', 0.5),), (('learner_ratio', 0.25),),
    (('coder_ratio', 0.5), ('coder_kernel', 3), ('coder_init', 'kaiming'), ('coder_norm', True)),
)


@dataclass(frozen=True)
class Row:
    """One model of the sweep: ``label`` names it in tables and plots."""
    label: str
    family: str
    model: str
    arch: str  # 'resnet' or 'vit'
    depth: Optional[int] = None  # ResNet depth (6n+2); None for the ViTs
    kwargs: Tuple[Tuple[str, Any], ...] = ()  # the knobs this row changes from the registered defaults
    size: Tuple[Tuple[str, Any], ...] = ()  # input and width arguments every row of the preset's arch shares

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        """What ``timm.create_model`` takes for this row (without the data's classes and channels)."""
        return dict(self.size, **dict(self.kwargs))


# (family, model kwargs) per depth: the families at their registered defaults
FAMILY_VARIANTS: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = tuple((f, ()) for f in FAMILIES)
# the rows that decide the claims (issue: converged study): the PNNH width variants that could put it
# ahead, and residual nets whose branch is as narrow as the PNNH learner (timm's ``block_reduce_first``
# divides the first conv of every residual block, so the control has the same budget)
DECIDING_VARIANTS = FAMILY_VARIANTS + (
    ('pnnh', (('learner_ratio', 0.5),)),
    ('residual', (('block_reduce_first', 2),)),
)
# where the paper's claims would live: the block's hidden channels split between coder and learner
# (deployed exactly as wide as the residual net at 0.5/0.5), the same with one coder per stage (the
# other reading of "weight-sharing coder", PAPER.md), the quarter split, and the residual control of
# the quarter split's budget
SPLIT_VARIANTS = (
    ('pnnh', (('coder_ratio', 0.5), ('learner_ratio', 0.5))),
    ('pnnh', (('coder_ratio', 0.5), ('learner_ratio', 0.5), ('coder_sharing', 'stage'))),
    ('pnnh', (('coder_ratio', 0.25), ('learner_ratio', 0.25))),
    ('residual', (('block_reduce_first', 4),)),
)
# the quarter-width learner with the full coder: the quarter split's size with the whole coder
QUARTER_LEARNER_VARIANTS = (('pnnh', (('learner_ratio', 0.25),)),)
CONVERGED_VARIANTS = DECIDING_VARIANTS + SPLIT_VARIANTS + QUARTER_LEARNER_VARIANTS + (
    ('pnnh', (('coder_sharing', 'stage'),)),
)
# the rows that decide, on a longer schedule: the residual net, PNNH at its defaults, the split-width
# PNNH row (chosen before its 3-epoch result: it is the one deployed exactly as wide as the residual net),
# and the residual control of the split row's budget (without it, the split row is smaller but less
# accurate than every residual row, and the comparison at equal accuracy is undecided)
LONG_VARIANTS = (('residual', ()), ('pnnh', ()), SPLIT_VARIANTS[0], DECIDING_VARIANTS[-1])
# the ViT study: the residual ViT, the plain ViT, the PNNH ViT at its defaults, the PNNH ViT with the exact
# signed-Dirac coder (2C units: the block is the identity at initialisation, where the default C-wide coder
# is GELU and loses part of the input over 12 blocks), a PNNH ViT whose coder and MLP together are as wide
# as the ViT's MLP (C coder units + 3C MLP units = 4C), and the skipless SAS-P ViT
VIT_STUDY_VARIANTS = (('residual', ()), ('plain', ()), ('pnnh', ()), ('pnnh', (('coder_ratio', 2.0),)),
                      ('pnnh', (('mlp_ratio', 3.0),)), ('sasp', ()))
# depth 12 (the paper's ViT depth; the registered tiny size), patch 4 on 28x28 Fashion-MNIST (49 tokens and
# the class token), width 96 in 3 heads of 32: half ViT-Tiny's width, so that the ten runs of 10 epochs
# fit about 7 hours of 2 CPU cores in bf16 (ViT-Tiny's 192 would take about 12)
VIT_STUDY_SIZE = (('img_size', 28), ('embed_dim', 96))


@dataclass(frozen=True)
class Preset:
    """A study: rows (``variants`` at every depth, or the ablation), a recipe, seeds and data sizes.

    With ``epochs`` the recipe's steps are ``epochs`` passes over the training images (the last partial
    batch of each pass dropped) and the test set is scored after every epoch.
    """
    name: str
    recipe: Recipe
    depths: Tuple[int, ...]
    seeds: Tuple[int, ...]
    train_size: int
    test_size: Optional[int]  # None: the whole test set
    diag_batch: int
    ablation: bool = False
    epochs: Optional[int] = None
    variants: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = FAMILY_VARIANTS
    device: str = 'cpu'
    vit_variants: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()  # (family, knobs) of the ViT rows
    vit_size: Tuple[Tuple[str, Any], ...] = VIT_KWARGS  # the ViT rows' input size and width
    rows: Optional[Tuple[str, ...]] = None  # the labels of the rows kept (``--rows``); None: every row

    @property
    def steps_per_epoch(self) -> Optional[int]:
        return self.train_size // self.recipe.batch_size if self.epochs else None


def _epochs(preset: Preset) -> Preset:
    """``preset`` with its recipe's steps set from ``epochs`` (unchanged without epochs)."""
    if not preset.epochs:
        return preset
    if preset.train_size < preset.recipe.batch_size:
        raise ValueError(f'train_size={preset.train_size} is not allowed with epochs: it must be at least the batch '
                         f'size {preset.recipe.batch_size}')
    return replace(preset, recipe=replace(preset.recipe, steps=preset.epochs * preset.steps_per_epoch))


PRESETS = {
    'quick': Preset('quick', Recipe(steps=120, batch_size=64), depths=(20, 56), seeds=(0, 1, 2), train_size=7680,
                    test_size=2000, diag_batch=128),
    'full': Preset('full', Recipe(steps=3000, batch_size=128), depths=(20, 56, 110), seeds=(0, 1, 2), train_size=60000,
                   test_size=None, diag_batch=256, vit_variants=FAMILY_VARIANTS),
    'ablation': Preset('ablation', Recipe(steps=120, batch_size=64), depths=(56,), seeds=(0, 1, 2), train_size=7680,
                       test_size=2000, diag_batch=128, ablation=True),
    # the whole of Fashion-MNIST until the ranking stops changing: for a GPU (bf16, channels_last)
    'converged': Preset('converged', Recipe(batch_size=128, channels_last=True, amp='bf16'), depths=(20, 56, 110),
                        seeds=(0, 1, 2), train_size=60000, test_size=None, diag_batch=256, vit_variants=FAMILY_VARIANTS, epochs=30,
                        variants=CONVERGED_VARIANTS, device='cuda'),
    # the rows that decide the claims, at depth 56, on 2 CPU cores (fp32: the recipe its first rows ran with)
    'converged-cpu': Preset('converged-cpu', Recipe(batch_size=128, channels_last=True), depths=(56,), seeds=(0, 1),
                            train_size=60000, test_size=None, diag_batch=256, epochs=3,
                            variants=DECIDING_VARIANTS + SPLIT_VARIANTS + QUARTER_LEARNER_VARIANTS),
    # the deciding rows for 10 epochs on 2 CPU cores, with bf16 autocast (faster than fp32 on a CPU with
    # bf16 matrix units: docs/study.md has the measurement, and the paired check that it learns the same)
    'long-cpu': Preset('long-cpu', Recipe(batch_size=128, channels_last=True, amp='bf16'), depths=(56,), seeds=(0, 1),
                       train_size=60000, test_size=None, diag_batch=256, epochs=10, variants=LONG_VARIANTS),
    # the Transformer half of the paper on 2 CPU cores: five ViTs of depth 12 (VIT_STUDY_VARIANTS), 10 epochs
    'vit-cpu': Preset('vit-cpu', Recipe(batch_size=128, amp='bf16', **VIT_RECIPE), depths=(), seeds=(0, 1), train_size=60000,
                      test_size=None, diag_batch=256, epochs=10, variants=(), vit_variants=VIT_STUDY_VARIANTS,
                      vit_size=VIT_STUDY_SIZE),
    # the depth axis: plain, residual and PNNH at depths 20, 56 and 110 on the converged-cpu budget, in bf16
    'depth-cpu': Preset('depth-cpu', Recipe(batch_size=128, channels_last=True, amp='bf16'), depths=(20, 56, 110),
                        seeds=(0, 1), train_size=60000, test_size=None, diag_batch=256, epochs=3),
}


def knob_label(kwargs) -> str:
    return ' '.join(f'{k}={v}' for k, v in kwargs)


def preset_rows(preset: Preset) -> List[Row]:
    """The preset's models: ResNet rows per depth, then the ViT rows (``vit_variants``)."""
    rows = []
    if preset.ablation:
        for depth in preset.depths:
            rows.append(Row(f'residual-{depth}', 'residual', RESNET_NAMES['residual'].format(depth=depth), 'resnet', depth))
            for knobs in ABLATION_KNOBS:
                label = f'pnnh-{depth}' + (f' {knob_label(knobs)}' if knobs else '')
                rows.append(Row(label, 'pnnh', RESNET_NAMES['pnnh'].format(depth=depth), 'resnet', depth, knobs))
        return rows
    for depth in preset.depths:
        for family, knobs in preset.variants:
            label = f'{family}-{depth}' + (f' {knob_label(knobs)}' if knobs else '')
            rows.append(Row(label, family, RESNET_NAMES[family].format(depth=depth), 'resnet', depth, knobs))
    for family, knobs in preset.vit_variants:
        label = f'{family}-vit' + (f' {knob_label(knobs)}' if knobs else '')
        rows.append(Row(label, family, VIT_NAMES[family], 'vit', None, knobs, preset.vit_size))
    return rows if preset.rows is None else [row for row in rows if row.label in preset.rows]


def resolve_preset(args) -> Preset:
    """The named preset with the command-line overrides applied (ValueError on bad values)."""
    preset = PRESETS[args.preset]
    recipe = preset.recipe
    if args.steps is not None or args.batch_size is not None:
        recipe = replace(recipe, steps=args.steps if args.steps is not None else recipe.steps,
                         batch_size=args.batch_size if args.batch_size is not None else recipe.batch_size)
    if args.amp is not None:
        recipe = replace(recipe, amp=None if args.amp == 'fp32' else args.amp)
    changes = dict(recipe=recipe)
    for name in ('seeds', 'depths'):
        value = getattr(args, name)
        if value is not None:
            if not value or len(set(value)) != len(value):
                raise ValueError(f'--{name}={value} is not allowed: give distinct values')
            changes[name] = tuple(value)
    for depth in changes.get('depths', preset.depths):
        if not all(timm.is_model(name.format(depth=depth)) for name in RESNET_NAMES.values()):
            raise ValueError(f'--depths value {depth} is not allowed: the registered CIFAR-style ResNet depths are '
                             f'{", ".join(map(str, CIFAR_DEPTHS))}')
    for name in ('train_size', 'test_size', 'diag_batch', 'epochs'):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f'--{name.replace("_", "-")}={value} is not allowed: it must be >= 1')
            changes[name] = value
    if args.steps is not None and (changes.get('epochs') or preset.epochs):
        raise ValueError(f'--steps={args.steps} is not allowed with the {preset.name} preset, which counts epochs: '
                         'use --epochs')
    if args.device is not None:
        changes['device'] = str(check_device(args.device))
    if args.rows is not None:
        labels = [row.label for row in preset_rows(replace(preset, **changes))]
        if not args.rows or len(set(args.rows)) != len(args.rows):
            raise ValueError(f'--rows={args.rows} is not allowed: give distinct row labels')
        for label in args.rows:
            if label not in labels:
                raise ValueError(f'--rows value {label!r} is not allowed: the rows of this {preset.name} study are '
                                 f'{", ".join(map(repr, labels))}')
        changes['rows'] = tuple(args.rows)
    return _epochs(replace(preset, **changes))

"""The study's per-model summary (accuracy over seeds, per epoch, speed, retention), its tables, and
the quick preset's note: how its short-schedule numbers compare with the longest finished studies."""
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from timm_pnnh.diagnostics import MEASURES
from timm_pnnh.files import markdown_table
from timm_pnnh.study.presets import Row


def _mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _mean_curve(curves: List[List[Dict]]) -> List[Dict]:
    return [dict(curves[0][b], **{m: statistics.fmean(c[b][m] for c in curves) for m in MEASURES})
            for b in range(len(curves[0]))]


def _epoch_curve(records: Sequence[Dict]) -> List[Dict]:
    """Test accuracy per scored epoch, mean and std over the runs that reached it."""
    points: Dict[float, List[float]] = {}
    for r in records:
        for point in r.get('curve') or []:
            if 'epoch' in point:
                points.setdefault(point['epoch'], []).append(point['test_acc'])
    return [dict(epoch=e, acc_mean=_mean_std(v)[0], acc_std=_mean_std(v)[1], runs=len(v)) for e, v in sorted(points.items())]


SPEED_KEYS = ('train_img_s', 'infer_img_s', 'deploy_img_s', 'saved_mb', 'deploy_params_m')


def summarize(rows: Sequence[Row], records: Sequence[Dict], speed: Optional[Dict] = None) -> List[Dict]:
    """Per row: accuracy mean/std over seeds (std None for one seed), accuracy per epoch, params,
    diverged seeds, the bench figures (``speed``) and mean retention curves."""
    summary = []
    specs = speed['settings']['specs'] if speed else {}
    for row in rows:
        mine = [r for r in records if r['label'] == row.label]
        if not mine:
            continue
        accs = [r['test_acc'] for r in mine]
        measured = speed['results'].get(specs.get(row.label), {}) if speed else {}
        summary.append(dict(
            label=row.label, family=row.family, model=row.model, arch=row.arch, depth=row.depth,
            model_kwargs=dict(row.kwargs), blocks=mine[0]['blocks'], params=mine[0]['params'],
            seeds=[r['seed'] for r in mine], test_accs=accs, acc_mean=_mean_std(accs)[0], acc_std=_mean_std(accs)[1],
            diverged_seeds=[r['seed'] for r in mine if r.get('diverged_step') is not None],
            epochs=_epoch_curve(mine), **{key: measured.get(key) for key in SPEED_KEYS},
            retention_init=_mean_curve([r['retention_init'] for r in mine]),
            retention_trained=_mean_curve([r['retention_trained'] for r in mine])))
    return summary


def fmt_acc(row: Dict) -> str:
    std = row['acc_std']
    text = f"{row['acc_mean']:.2f} +- {std:.2f}" if std is not None else f"{row['acc_mean']:.2f} (one seed)"
    return text + (f" ({len(row['diverged_seeds'])} diverged)" if row.get('diverged_seeds') else '')


def _figure(value: Optional[float], fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def study_table(summary: Sequence[Dict]) -> str:
    """One row per model: parameters, accuracy over seeds, the bench figures, retention of the deepest block."""
    header = ['model', 'family', 'depth', 'params', 'deployed params', 'test acc % (mean +- std)', 'seeds',
              'train img/s', 'deployed img/s', 'saved activations MB', 'R^2 deepest block: init -> trained',
              'CKA deepest block: init -> trained']
    rows = [[f"{s['label']} (`{s['model']}`)", s['family'], s['depth'] if s['depth'] is not None else f"{s['blocks']} blocks",
             f"{s['params'] / 1e3:.0f}k", _figure(s['deploy_params_m'] and s['deploy_params_m'] * 1e3, '.0f') + 'k'
             if s['deploy_params_m'] else '-', fmt_acc(s), len(s['seeds']), _figure(s['train_img_s'], '.0f'),
             _figure(s['deploy_img_s'], '.0f'), _figure(s['saved_mb'], '.1f'),
             f"{s['retention_init'][-1]['r2']:.2f} -> {s['retention_trained'][-1]['r2']:.2f}",
             f"{s['retention_init'][-1]['cka']:.2f} -> {s['retention_trained'][-1]['cka']:.2f}"] for s in summary]
    return markdown_table(header, rows, [False, False] + [True] * (len(header) - 2))


def epochs_table(summary: Sequence[Dict]) -> str:
    """Test accuracy after each epoch (mean +- std over seeds), one row per model."""
    epochs = sorted({p['epoch'] for s in summary for p in s['epochs']})
    if not epochs:
        return ''
    rows = []
    for s in summary:
        by_epoch = {p['epoch']: p for p in s['epochs']}
        rows.append([s['label']] + [fmt_acc(dict(by_epoch[e], diverged_seeds=[])) if e in by_epoch else '-' for e in epochs])
    return markdown_table(['model'] + [f'epoch {e:g}' for e in epochs], rows)



RETENTION_MARGIN = 0.05  # R^2 gap counted as a difference in the retention verdicts


def shares_seed(a: Dict, b: Dict) -> bool:
    """Whether rows ``a`` and ``b`` ran a seed in common, so that ``paired`` can compare them."""
    return bool(set(a['seeds']) & set(b['seeds']))


def unpaired(a: Dict, b: Dict) -> str:
    """Why rows ``a`` and ``b`` are not compared (they share no seed), as a phrase for the report."""
    return (f"{a['label']} (seeds {', '.join(map(str, a['seeds']))}) and {b['label']} (seeds "
            f"{', '.join(map(str, b['seeds']))}) share no seed, so they are not compared (a paired difference "
            f"needs the same seeds; finishing the missing runs pairs them)")


def paired(a: Dict, b: Dict) -> Tuple[float, Optional[float], int]:
    """Mean and std of ``a - b`` test accuracy over the seeds both rows ran; std None below 2 seeds.
    Callers check ``shares_seed`` first: rows without a common seed are a ValueError here."""
    acc_b = dict(zip(b['seeds'], b['test_accs']))
    diffs = [acc - acc_b[seed] for seed, acc in zip(a['seeds'], a['test_accs']) if seed in acc_b]
    if not diffs:
        raise ValueError(f"rows {a['label']!r} and {b['label']!r} share no seed")
    return statistics.fmean(diffs), (statistics.stdev(diffs) if len(diffs) > 1 else None), len(diffs)


def fmt_paired(d: float, s: Optional[float]) -> str:
    return f'{d:+.1f} +- {s:.1f}' if s is not None else f'{d:+.1f} (one seed, no spread)'


# What the longest finished studies found at depth 56, per family at its defaults; the quick preset's note
# compares with these, and tests/test_quick_note.py checks them against the study.json files and that no
# finished results study is longer. LONGEST_STUDY (``--preset long-cpu``) has no plain rows: the plain
# net's figures come from the longest study that has them, CONVERGED_STUDY (``--preset converged-cpu``):
# test accuracy after the first and the last epoch (mean over seeds) and the deepest block's R^2 at
# initialisation.
LONGEST_STUDY = 'results/study-long-cpu'
LONGEST_EPOCHS = 10
# pnnh-56 minus residual-56 in LONGEST_STUDY, paired over the seeds: mean and std of the difference
LONGEST_PNNH_GAP = dict(mean=-0.31, std=0.26)
CONVERGED_STUDY = 'results/study-converged-cpu'
CONVERGED_EPOCHS = 3
CONVERGED = {
    'plain': dict(first=71.28, last=85.41, r2_init=0.10),
    'residual': dict(first=67.35, last=92.22, r2_init=0.70),
    'pnnh': dict(first=78.10, last=91.78, r2_init=0.70),
}
PAR_POINTS = 1.0  # PNNH within this many points (or 2 std) of the residual net counts as on par


def _beyond_noise(d: float, s: Optional[float]) -> bool:
    return s is None or abs(d) > 2 * s  # one seed: the sign alone


def quick_note(summary: Sequence[Dict], steps: int) -> str:
    """Which comparisons of a short-schedule study (the quick preset, ``steps`` SGD steps) agree with the
    longest finished studies, and where they disagree and why; computed from ``summary`` ('' without a pair)."""
    base = {(s['family'], s['depth']): s for s in summary if s['arch'] == 'resnet' and not s['model_kwargs']}
    depths = sorted({depth for _, depth in base})
    if not depths:
        return ''
    shallow, deep = depths[0], depths[-1]
    plain, residual, pnnh = (CONVERGED[f] for f in ('plain', 'residual', 'pnnh'))
    plain_behind = f"plain-56 {residual['last'] - plain['last']:.1f} points behind residual-56"
    plain_study, long_study = f'the {CONVERGED_EPOCHS}-epoch study', f'{LONGEST_EPOCHS} epochs'
    gap = LONGEST_PNNH_GAP  # said with its noise: a gap inside the par band can still be beyond 2 std
    long_gap = (f"{-gap['mean']:.1f} +- {gap['std']:.1f} points behind, "
                f"{'more' if _beyond_noise(gap['mean'], gap['std']) else 'less'} than 2 std")
    lines = []

    def compare(a, b, agrees, agreeing, disagreeing):
        if not shares_seed(a, b):
            lines.append(f'- not compared: {unpaired(a, b)}.')
            return
        d, s, _ = paired(a, b)
        ok = agrees(d, s)
        lines.append(f"- {'agrees' if ok else 'disagrees'}: {a['label']} vs {b['label']} {fmt_paired(d, s)} points: "
                     f"{agreeing(d, s) if ok else disagreeing(d, s)}.")

    if shallow != deep and ('plain', shallow) in base and ('plain', deep) in base:
        compare(base[('plain', deep)], base[('plain', shallow)], lambda d, s: d < 0 and _beyond_noise(d, s),
                lambda d, s: f'the plain net fails with depth ({CONVERGED_EPOCHS} epochs: {plain_behind})',
                lambda d, s: f'{steps} steps do not show the plain net failing with depth; {plain_study} does '
                             f'({plain_behind})')
    if ('pnnh', deep) in base and ('residual', deep) in base:
        compare(base[('pnnh', deep)], base[('residual', deep)], lambda d, s: abs(d) <= PAR_POINTS or not _beyond_noise(d, s),
                lambda d, s: f"on par, within {f'{PAR_POINTS:g} point' if _beyond_noise(d, s) else '2 std'} "
                             f"({long_study}: PNNH {long_gap})",
                lambda d, s: f"{steps} steps leave PNNH {'behind' if d < 0 else 'ahead'} by more than {PAR_POINTS:g} point "
                             f"and 2 std; at {long_study} PNNH is {long_gap}")
    if all((f, deep) in base for f in CONVERGED):
        r2 = {f: base[(f, deep)]['retention_init'][-1]['r2'] for f in CONVERGED}
        ok = r2['plain'] < min(r2['residual'], r2['pnnh']) - RETENTION_MARGIN
        lines.append(f"- {'agrees' if ok else 'disagrees'}: input retention at init, R^2 of the deepest block: "
                     + ', '.join(f'{f}-{deep} {r2[f]:.2f}' for f in CONVERGED)
                     + (': the plain net loses the input' if ok else f': the plain net is not {RETENTION_MARGIN:g} below both')
                     + f" ({plain_study}: {plain['r2_init']:.2f} / {residual['r2_init']:.2f} / {pnnh['r2_init']:.2f}).")
    if shallow != deep and ('plain', shallow) in base and ('residual', shallow) in base:
        leads = 'leads' if plain['first'] > residual['first'] else 'trails'
        compare(base[('plain', shallow)], base[('residual', shallow)], lambda d, s: not (d > 0 and _beyond_noise(d, s)),
                lambda d, s: f'the plain net is not ahead ({CONVERGED_EPOCHS} epochs: {plain_behind})',
                lambda d, s: f'{steps} steps favour the shallow plain net; in {plain_study} plain-56 {leads} '
                             f"residual-56 after the first epoch ({plain['first']:.1f} vs "
                             f"{residual['first']:.1f}) and ends {residual['last'] - plain['last']:.1f} points behind "
                             f"({plain['last']:.1f} vs {residual['last']:.1f})")
    if not lines:
        return ''
    return '\n'.join([f'Against the longest finished studies (depth 56, the whole training set: {LONGEST_STUDY}, '
                      f'{LONGEST_EPOCHS} epochs; for the plain net, which it does not train, {CONVERGED_STUDY}, '
                      f'{CONVERGED_EPOCHS} epochs), these {steps}-step numbers:', *lines])

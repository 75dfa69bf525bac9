"""The study's per-model summary (accuracy over seeds, per epoch, speed, retention) and its tables."""
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


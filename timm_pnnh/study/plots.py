"""The study's plots: accuracy against epochs and depth, the fronts of accuracy against parameters,
training and deployed images/s, and input retention per block."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from timm_pnnh.diagnostics import plot_retention
from timm_pnnh.files import save_figure

FAMILY_COLORS = {'plain': 'tab:red', 'residual': 'tab:blue', 'pnnh': 'tab:green', 'sasp': 'tab:purple'}
# (file, x key, x label, scale to the axis unit, lower x is better)
FRONTS = (
    ('accuracy_vs_params.png', 'params', 'parameters (thousands)', 1e-3, True),
    ('accuracy_vs_train_speed.png', 'train_img_s', 'training images/s (bench, side by side)', 1, False),
    ('accuracy_vs_deploy_speed.png', 'deploy_img_s', 'deployed images/s (bench, reparameterized)', 1, False),
)
PLOTS = ('accuracy_vs_epochs.png', 'accuracy_vs_depth.png', *(f[0] for f in FRONTS), 'retention_vs_depth.png')


def pareto_front(points: Sequence[Tuple[float, float]], lower_is_better: bool) -> List[Tuple[float, float]]:
    """The points no other point beats on both x (cheaper) and accuracy, sorted from cheap to costly."""
    ordered = sorted(points, key=lambda p: (p[0] if lower_is_better else -p[0], -p[1]))
    front, best = [], float('-inf')
    for x, acc in ordered:
        if acc > best:
            front.append((x, acc))
            best = acc
    return front


def write_plots(summary: Sequence[Dict], out: Path) -> Tuple[List[str], Optional[str]]:
    """The PNGs in ``out`` that the data allow; returns (written, message when matplotlib is missing)."""
    curves = {}
    for s in summary:
        curves[f"{s['label']} init"] = s['retention_init']
        curves[f"{s['label']} trained"] = s['retention_trained']
    message = plot_retention(out / PLOTS[-1], curves, title='input retention per block (dashed: init, solid: trained)')
    if message:
        return [], message
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter
    written = [PLOTS[-1]]
    if any(s['epochs'] for s in summary):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        cmap = plt.get_cmap('tab10' if len(summary) <= 10 else 'tab20')
        for i, s in enumerate(summary):
            e = s['epochs']
            ax.errorbar([p['epoch'] for p in e], [p['acc_mean'] for p in e], [p['acc_std'] or 0 for p in e], marker='o',
                        capsize=3, label=s['label'], color=cmap(i % cmap.N))
        ax.set_xlabel('epoch'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3), ax.legend(fontsize=7)
        ax.set_title('test accuracy after each epoch (mean +- std over seeds)', fontsize=9)
        fig.tight_layout()
        save_figure(fig, out / PLOTS[0])
        written.append(PLOTS[0])
    depths = {s['depth'] for s in summary if s['arch'] == 'resnet'}
    if len(depths) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for family in FAMILY_COLORS:
            pts = sorted((s['depth'], s['acc_mean'], s['acc_std'] or 0) for s in summary
                         if s['family'] == family and s['arch'] == 'resnet' and not s['model_kwargs'])
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker='o', capsize=3,
                            label=family, color=FAMILY_COLORS[family])
        ax.set_xlabel('depth (CIFAR-style ResNet)'), ax.set_ylabel('test accuracy (%)'), ax.grid(alpha=0.3), ax.legend()
        fig.tight_layout()
        save_figure(fig, out / PLOTS[1])
        written.append(PLOTS[1])
    for name, key, xlabel, scale, lower in FRONTS:
        measured = [s for s in summary if s[key] is not None]
        if not measured:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for family in FAMILY_COLORS:
            mine = [s for s in measured if s['family'] == family]
            if not mine:
                continue
            ax.errorbar([s[key] * scale for s in mine], [s['acc_mean'] for s in mine], [s['acc_std'] or 0 for s in mine],
                        fmt='o', capsize=3, color=FAMILY_COLORS[family], alpha=0.8)
            front = pareto_front([(s[key] * scale, s['acc_mean']) for s in mine], lower)
            ax.plot([p[0] for p in front], [p[1] for p in front], '-', color=FAMILY_COLORS[family], label=f'{family} front')
            for s in mine:
                ax.annotate(s['label'], (s[key] * scale, s['acc_mean']), fontsize=7, xytext=(4, -10),
                            textcoords='offset points')
        ax.set_xscale('log'), ax.set_xlabel(xlabel + (' (lower is cheaper)' if lower else ' (higher is faster)'))
        ax.xaxis.set_major_formatter(ScalarFormatter()), ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis='x', which='minor', labelsize=7)
        ax.set_ylabel('test accuracy (%), mean +- std'), ax.grid(alpha=0.3, which='both'), ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / name)
        written.append(name)
    return [p for p in PLOTS if p in written], None

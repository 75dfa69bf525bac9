"""``timm-pnnh report``: the "Results" section of a results page, generated from a study's ``study.json``;
with ``--write-index``, the index of the results pages (the README's Results, the model card's Evaluation).

Every verdict line is computed from the numbers (the paper's claims, arXiv:2402.08645): plain accuracy vs
depth, PNNH vs residual at equal depth, parameters at equal accuracy, training throughput ratio,
input retention. Two rows are compared on their paired per-seed differences (the runs share seeds):
``d +- s`` is the mean and the standard deviation of those differences; "within 2 std" means
``|d| <= 2 s``. With one seed there is no spread and the line says so.
"""
import json
import os
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from timm_pnnh.errors import UsageError, check_output_dir
from timm_pnnh.files import atomic_write, check_markers, markdown_table, write_between_markers
from timm_pnnh.schema import STUDY, read_json
from timm_pnnh.study.command import INDEX_COMMAND, RESULTS_PAGES, results_study
from timm_pnnh.study.summary import (RETENTION_MARGIN, epochs_table, fmt_acc, fmt_paired, paired, shares_seed, study_table,
                                     unpaired)

MARKERS = ('<!-- results:start -->', '<!-- results:end -->')
INDEX_MARKERS = ('<!-- results-index:start -->', '<!-- results-index:end -->')
PAPER_THROUGHPUT = 1.3  # "up to 0.3x higher training throughput"
PAPER_PARAM_EFFICIENCY = 2.0  # "up to 2x better parameter efficiency"
REPVGG_DEPLOY = 1.5  # RepVGG (arXiv:2101.03697) deploys 1.5-2x faster than the ResNet of its accuracy


def _judge(d: float, s: Optional[float], better: str, worse: str, same: str) -> str:
    if s is None:
        return 'no verdict on noise'  # the difference itself already says "(one seed, no spread)"
    if abs(d) <= 2 * s:
        return same
    return better if d > 0 else worse


def _base(summary: Sequence[Dict]) -> Dict[Tuple[str, str, Optional[int]], Dict]:
    """The rows with registered defaults, keyed by (family, arch, depth)."""
    return {(s['family'], s['arch'], s['depth']): s for s in summary if not s['model_kwargs']}


# (key, what, the bar: paper or anchor, factor)
FRONT_AXES = (
    ('params', 'Parameters at equal accuracy', ('paper: up to', PAPER_PARAM_EFFICIENCY)),
    ('train_img_s', 'Training throughput at equal accuracy', ('paper: up to', PAPER_THROUGHPUT)),
    ('deploy_img_s', 'Deployed throughput at equal accuracy', ('RepVGG over ResNet:', REPVGG_DEPLOY)),
)


def reaches(base: Dict, pnnh: Dict) -> bool:
    """The baseline row is at least as accurate as the PNNH row, or below it within 2 std of the paired difference."""
    d, sd, _ = paired(base, pnnh)
    return d >= 0 or (sd is not None and d >= -2 * sd)


def advantage(pnnh: Dict, base: Dict, key: str) -> float:
    """How many times better the PNNH row is than the baseline row on ``key``: fewer parameters, or more images/s."""
    return base[key] / pnnh[key] if key == 'params' else pnnh[key] / base[key]


def equal_accuracy(pnnh: Dict, summary: Sequence[Dict], key: str, baseline: str = 'residual') -> Optional[Tuple[Dict, bool]]:
    """The ``baseline`` row to compare ``pnnh`` with on ``key``: among the rows of that family that reach its
    accuracy, the best on ``key`` (True); when none does, the most accurate of them (False)."""
    candidates = [s for s in summary if s['family'] == baseline and s.get(key) is not None and s['arch'] == pnnh['arch']
                and shares_seed(s, pnnh)]  # accuracy is compared paired over common seeds
    if not candidates or pnnh.get(key) is None:
        return None
    reach = [r for r in candidates if reaches(r, pnnh)]
    if reach:
        return min(reach, key=lambda r: advantage(pnnh, r, key)), True
    return max(candidates, key=lambda r: r['acc_mean']), False


def front_rows(summary: Sequence[Dict], baseline: str = 'residual') -> List[Dict]:
    """Per PNNH row and axis: the ``baseline`` row (a row of the ``baseline`` family) of equal accuracy and
    the PNNH advantage on that axis.

    ``diff``: the paired accuracy difference, PNNH minus baseline, as (mean, std or None).
    ``traded``: the PNNH row is ahead on the axis only against a baseline row that is more accurate beyond
    2 std of the paired difference (no baseline row of its accuracy is cheaper): the baseline row spends the
    difference on accuracy, so this is a trade, not a comparison at equal accuracy, and it does not count
    as the PNNH row being ahead (a baseline row of the PNNH row's size would decide it)."""
    rows = []
    for p in (s for s in summary if s['family'] == 'pnnh'):
        for key, _, _ in FRONT_AXES:
            match = equal_accuracy(p, summary, key, baseline)
            if match:
                r, reached = match
                d, sd, _ = paired(p, r)
                ratio = advantage(p, r, key)
                traded = reached and ratio > 1 and sd is not None and d < -2 * sd
                rows.append(dict(pnnh=p, baseline=r, key=key, reached=reached, ratio=ratio, traded=traded, diff=(d, sd)))
    return rows


def front_table(summary: Sequence[Dict], baseline: str = 'residual') -> str:
    """Markdown: each PNNH row against the ``baseline`` row of equal accuracy that is best on each axis."""
    table = []
    for f in front_rows(summary, baseline):
        table.append([f"{f['pnnh']['label']} ({fmt_acc(f['pnnh'])})", dict((k, w) for k, w, _ in FRONT_AXES)[f['key']],
                      f"{f['baseline']['label']} ({fmt_acc(f['baseline'])})" + (
                          ', less accurate: none reaches it' if not f['reached'] else
                          ', more accurate beyond 2 std: a trade, not equal accuracy' if f['traded'] else ''),
                      fmt_paired(*f['diff']), f"{f['ratio']:.2f}x"])
    return markdown_table(['PNNH row', 'axis', f'{baseline} row of equal accuracy, best on the axis', 'accuracy difference',
                           'PNNH advantage'], table, [False, False, False, True, True]) if table else ''


def best_front(summary: Sequence[Dict], key: str, baseline: str = 'residual') -> Optional[Dict]:
    """The front row with the best PNNH advantage on ``key`` among those a ``baseline`` row reaches at equal
    accuracy (not ``traded``); None if none."""
    rows = [f for f in front_rows(summary, baseline) if f['key'] == key and f['reached'] and not f['traded']]
    return max(rows, key=lambda f: f['ratio']) if rows else None


def traded_rows(summary: Sequence[Dict], key: Optional[str] = None, baseline: str = 'residual') -> List[str]:
    """The labels of the PNNH rows that are ahead on ``key`` (any axis if None) only by a trade: smaller
    or faster than, but less accurate beyond 2 std than, every ``baseline`` row that reaches their accuracy."""
    labels = [f['pnnh']['label'] for f in front_rows(summary, baseline) if f['traded'] and (key is None or f['key'] == key)]
    return list(dict.fromkeys(labels))


def _undecided(labels: Sequence[str], baseline: str = 'residual') -> str:
    its = 'its' if len(labels) == 1 else 'their'
    return (f"{', '.join(labels)}: smaller or faster than every {baseline} row that reaches {its} accuracy, but less "
            f"accurate beyond 2 std, so undecided without a {baseline} row of {its} size")


def front_verdict(summary: Sequence[Dict], key: str, what: str, bar: Tuple[str, float], study: Dict,
                  baseline: str = 'residual') -> str:
    """One verdict: the best PNNH advantage on ``key`` over the ``baseline`` rows of equal accuracy. The
    paper's bar applies to the residual nets it compared with; against another baseline the verdict is
    only ahead or not."""
    best = best_front(summary, key, baseline)
    traded = traded_rows(summary, key, baseline)
    undecided = f'; {_undecided(traded, baseline)}' if traded else ''
    if baseline != 'residual':
        what = f'{what}, against {baseline}'
    if best is None:
        missing = 'no bench figures in this study' if key != 'params' and not study.get('speed') else \
            f'no {baseline} row reaches the accuracy of any PNNH row' if not traded else _undecided(traded, baseline)
        return f'**{what}**: {missing}.'
    ratio, factor = best['ratio'], bar[1]
    behind = f'no PNNH row is ahead of the {baseline} rows of its accuracy'
    if baseline != 'residual':
        verdict, bar_said = ('PNNH ahead' if ratio > 1 else behind), ''
    else:
        verdict = ('reproduced' if ratio >= factor else f'PNNH ahead, below the bar of {factor:g}x' if ratio > 1 else
                   f'not reproduced: {behind}')
        bar_said = f' ({bar[0]} {factor:g}x)'
    if best['pnnh']['acc_std'] is None:
        verdict = f'one seed, no noise estimate: {verdict}'
    where = ''
    if key != 'params':
        c = study['speed']['config']
        where = (f" (bench: {c['device']} {c['device_name']}, {c['threads']} threads, batch {c['batch_size']}, "
                 f"channels_last={c['channels_last']}, amp={c['amp']})")
    return (f"**{what}**{where}: best {best['pnnh']['label']} vs {best['baseline']['label']}, "
            f"{ratio:.2f}x; {verdict}{bar_said}{undecided}.")


AXIS_NAMES = {'params': 'parameters', 'train_img_s': 'training images/s', 'deploy_img_s': 'deployed images/s'}
# the rows a PNNH net at its defaults is compared with, per architecture: the residual net of its depth, and
# for the ViTs also the other nets without skips (the published SAS-P block and the plain ViT)
BASELINES = {'resnet': ('residual',), 'vit': ('residual', 'sasp', 'plain')}
# the rows each PNNH row is measured against on the fronts (parameters, speed at equal accuracy): the
# residual nets, and for the ViTs also the published skipless block, the other way to drop the skips
FRONT_BASELINES = {'resnet': ('residual',), 'vit': ('residual', 'sasp')}


def front_baselines(summary: Sequence[Dict]) -> List[str]:
    """The front baselines of the PNNH rows' architectures that have rows in ``summary``, residual first."""
    families = {s['family'] for s in summary}
    arches = [s['arch'] for s in summary if s['family'] == 'pnnh']
    wanted = [b for arch in dict.fromkeys(arches) for b in FRONT_BASELINES[arch]]
    return [b for b in dict.fromkeys(wanted) if b in families] or ['residual']


def front_clause(summary: Sequence[Dict], baseline: str) -> List[str]:
    """The headline's say on the fronts against ``baseline``: whether a PNNH row is ahead of the rows of
    its accuracy on an axis, with the best advantages, and the rows a trade leaves undecided."""
    said = []
    best = {key: f for key in AXIS_NAMES if (f := best_front(summary, key, baseline)) is not None}
    if best:
        ahead = [k for k in AXIS_NAMES if k in best and best[k]['ratio'] > 1]
        labels = {best[k]['pnnh']['label'] for k in best}
        figures = ', '.join(f"{best[k]['ratio']:.2f}x on {AXIS_NAMES[k]}" + ('' if len(labels) == 1 else
                                                                            f" ({best[k]['pnnh']['label']})")
                            for k in AXIS_NAMES if k in best)
        if len(labels) == 1:
            figures += f', all by {labels.pop()}'
        if ahead:
            said.append(f"a PNNH row is ahead of the {baseline} rows of its accuracy on "
                        f"{' and '.join(AXIS_NAMES[k] for k in ahead)} (best PNNH advantage: {figures})")
        else:
            said.append(f"no PNNH row is ahead of the {baseline} rows of its accuracy on any axis "
                        f"(best PNNH advantage: {figures})")
    traded = traded_rows(summary, baseline=baseline)
    if traded:
        said.append(_undecided(traded, baseline))
    return said


def headline(study: Dict) -> str:
    """The answer in two sentences, from the numbers: PNNH at its defaults against the residual net of
    the same depth (and for the ViTs the SAS-P and plain ViTs), and whether any PNNH row is ahead of the
    residual rows (for the ViTs also the SAS-P rows) of its accuracy on an axis."""
    summary = study['summary']
    base = _base(summary)
    said = []
    for (family, arch, depth), p in base.items():
        for r in (base.get((b, arch, depth)) for b in BASELINES[arch]):
            if family == 'pnnh' and r is not None and not shares_seed(p, r):
                said.append(unpaired(p, r))
            elif family == 'pnnh' and r is not None:
                d, sd, _ = paired(p, r)
                verdict = _judge(d, sd, 'better by more than 2 std', 'worse by more than 2 std', 'on par within 2 std')
                said.append(f"{p['label']} vs {r['label']}: {fmt_paired(d, sd)} points, {verdict}")
    for baseline in front_baselines(summary):
        said += front_clause(summary, baseline)
    if not said and study.get('pending'):
        said.append(f"no PNNH row has finished beside a row to compare it with yet ({len(study['pending'])} runs pending)")
    return f"**In short:** {'; '.join(said)}." if said else ''


def verdicts(study: Dict) -> List[str]:
    """One markdown bullet per claim, from the numbers."""
    summary = study['summary']
    base = _base(summary)
    depths = sorted({d for (_, arch, d) in base if arch == 'resnet'})
    lines = []

    # 1. deep plain nets fail to train
    plain = [base[('plain', 'resnet', d)] for d in depths if ('plain', 'resnet', d) in base]
    if len(plain) >= 2 and not shares_seed(plain[-1], plain[0]):
        lines.append(f'**Plain accuracy vs depth**: {unpaired(plain[-1], plain[0])}.')
    elif len(plain) >= 2:
        d, s, n = paired(plain[-1], plain[0])
        steps = ', '.join(f"{p['depth']}: {fmt_acc(p)}" for p in plain)
        verdict = _judge(d, s, 'not reproduced: the deeper plain net is better',
                         'reproduced: the deeper plain net is worse', 'not reproduced: no change beyond 2 std')
        lines.append(f"**Plain accuracy vs depth** ({steps}): plain-{plain[-1]['depth']} vs plain-{plain[0]['depth']}: "
                     f"{fmt_paired(d, s)} points over {n} seeds: {verdict}.")
    else:
        lines.append('**Plain accuracy vs depth**: this study has no plain ResNets at two depths.')
    deepest = [d for d in depths if ('plain', 'resnet', d) in base and ('residual', 'resnet', d) in base]
    if deepest and not shares_seed(base[('plain', 'resnet', deepest[-1])], base[('residual', 'resnet', deepest[-1])]):
        lines.append(f"**Plain vs residual at depth {deepest[-1]}**: "
                     f"{unpaired(base[('plain', 'resnet', deepest[-1])], base[('residual', 'resnet', deepest[-1])])}.")
    elif deepest:
        d, s, n = paired(base[('plain', 'resnet', deepest[-1])], base[('residual', 'resnet', deepest[-1])])
        verdict = _judge(d, s, 'the plain net is better', 'the plain net is worse by more than 2 std', 'on par within 2 std')
        lines.append(f'**Plain vs residual at depth {deepest[-1]}**: {fmt_paired(d, s)} points: {verdict}.')

    # 2. PNNH on par with residual at equal depth
    keys = [(arch, d) for (fam, arch, d) in base if fam == 'pnnh' and ('residual', arch, d) in base]
    for arch, depth in keys:
        p = base[('pnnh', arch, depth)]
        for family in (b for b in BASELINES[arch] if (b, arch, depth) in base):
            r = base[(family, arch, depth)]
            if not shares_seed(p, r):
                lines.append(f"**PNNH vs {family}**: {unpaired(p, r)}.")
                continue
            d, s, n = paired(p, r)
            verdict = _judge(d, s, 'PNNH better by more than 2 std', 'PNNH worse by more than 2 std', 'on par within 2 std')
            lines.append(f"**PNNH vs {family}, {p['label']} vs {r['label']}**: {fmt_paired(d, s)} points ({fmt_acc(p)} vs "
                         f"{fmt_acc(r)}): {verdict}.")
    for p in (s for s in summary if s['family'] == 'pnnh' and s['model_kwargs']):
        r = base.get(('residual', p['arch'], p['depth']))
        if r is not None and not shares_seed(p, r):
            lines.append(f"**{p['label']} vs {r['label']}**: {unpaired(p, r)}.")
        elif r is not None:
            d, s, n = paired(p, r)
            verdict = _judge(d, s, 'better by more than 2 std', 'worse by more than 2 std', 'on par within 2 std')
            lines.append(f"**{p['label']} vs {r['label']}** ({p['params'] / 1e3:.0f}k vs {r['params'] / 1e3:.0f}k "
                         f"params): {fmt_paired(d, s)} points: {verdict}.")
    if not keys:
        lines.append('**PNNH vs residual at equal depth**: no pair of rows in this study.')

    # 3-5. fronts: every PNNH row against the residual row of its accuracy that is best on each axis
    for baseline in front_baselines(summary):
        for key, what, paper in FRONT_AXES:
            lines.append(front_verdict(summary, key, what, paper, study, baseline))
    # 5. retention: the deepest block of the deepest net of each architecture with all three families
    families = ('plain', 'residual', 'pnnh')
    for arch, where in (('resnet', 'depth {}'), ('vit', 'ViT')):
        full = sorted((d for (f, a, d) in base if a == arch and f == 'pnnh' and all((g, arch, d) in base for g in families)),
                      key=lambda d: d or 0)
        if not full:
            continue
        depth = full[-1]
        for state in ('init', 'trained'):
            r2 = {f: base[(f, arch, depth)][f'retention_{state}'][-1]['r2'] for f in families}
            cka = {f: base[(f, arch, depth)][f'retention_{state}'][-1]['cka'] for f in families}
            kept = min(r2['residual'], r2['pnnh'])
            verdict = ('reproduced: the plain net holds less of the input than both residual and PNNH'
                       if r2['plain'] < kept - RETENTION_MARGIN else
                       f'not reproduced: the plain net is not {RETENTION_MARGIN} R^2 below both')
            lines.append(f"**Input retention at the deepest block, {where.format(depth)}, {state}**: R^2 plain "
                         f"{r2['plain']:.2f}, residual {r2['residual']:.2f}, PNNH {r2['pnnh']:.2f} (CKA "
                         f"{cka['plain']:.2f} / {cka['residual']:.2f} / {cka['pnnh']:.2f}): {verdict}.")
    return [f'- {line}' for line in lines]


def trained_on(study: Dict) -> str:
    """Where the runs trained, from the CPU each record names (records older than that field say nothing)
    and whether bf16's products ran in fp32 kernels there (``bf16_through_fp32``): empty when every run
    names the machine that wrote the study."""
    counts = Counter((r.get('cpu') or 'not recorded') + (', bf16 products in fp32 kernels' if r.get('bf16_through_fp32') else '')
                     for r in study.get('runs') or [])
    if not counts or set(counts) == {study['hardware'].get('cpu')}:
        return ''
    return '; runs trained on ' + ', '.join(f'{cpu} ({n} run{"s" * (n != 1)})' for cpu, n in sorted(counts.items()))


def results_markdown(study: Dict, plot_dir: Optional[str]) -> str:
    """The Results section body: settings, table, accuracy per epoch, plots (links under ``plot_dir``),
    the fronts at equal accuracy, verdicts."""
    hw = study['hardware']
    recipe = study['recipe']
    device = hw.get('gpu') or f"{hw['cpu'] or 'CPU'}, {hw['cpu_count']} cores, {hw['torch_threads']} torch threads"
    epochs = f" ({study['epochs']} epochs of {study['data'].split(':')[0]})" if study.get('epochs') else ''
    answer = headline(study)
    parts = [answer, ''] if answer else []
    parts += [
        f"Generated by `timm-pnnh report` from the JSON written by `{study['command']}` "
        f"on {study['date'][:10]} ({device}; torch {hw['torch']}, timm {hw['timm']}; "
        f"{study['train_seconds'] / 60:.0f} minutes of training in all{trained_on(study)}).",
        '',
        f"Seeds {', '.join(map(str, study['seeds']))}; {recipe['steps']} {recipe.get('opt', 'sgd').upper()} steps of "
        f"{recipe['batch_size']}{epochs} (lr {recipe['lr']:g}, cosine with {recipe['warmup_fraction']:.0%} warm-up, "
        f"weight decay {recipe['weight_decay']:g}, channels_last={recipe.get('channels_last', False)}, "
        f"amp={recipe.get('amp')}); {study['data']}. Speed: `timm-pnnh bench` figures, every model in one process "
        'taking turns, after training. Retention: ridge reconstruction R^2 of the input from the deepest block\'s '
        'features and linear CKA (`timm-pnnh diagnose`), at initialisation and after training.',
        '',
        study_table(study['summary']),
        '',
    ]
    if study.get('pending'):
        parts += [f"Not finished yet (`--finished-only`; the same study command trains them, resuming): "
                  f"{', '.join(study['pending'])}. Rows with one finished seed have no spread.", '']
    per_epoch = epochs_table(study['summary'])
    if per_epoch:
        parts += ['Test accuracy after each epoch (mean +- std over seeds):', '', per_epoch, '']
    if plot_dir is not None:
        parts += [' '.join(f'![{p[:-4].replace("_", " ")}]({plot_dir}/{p})' for p in study['plots']), '']
    for baseline in front_baselines(study['summary']):
        fronts = front_table(study['summary'], baseline)
        if fronts:
            parts += [f'Each PNNH row against the {baseline} row that reaches its accuracy (within 2 std of the paired '
                      f'difference, or better) and is best on the axis (PNNH advantage: {baseline} / PNNH parameters, '
                      f'PNNH / {baseline} images/s):', '', fronts, '']
    parts += ['What reproduced here (computed from the JSON by `timm-pnnh report`):', '', *verdicts(study)]
    return '\n'.join(parts)


def in_short(study: Dict) -> str:
    """The study's answer as its page's "In short" line says it, without the lead-in."""
    return headline(study).replace('**In short:** ', '', 1)


def schedule(study: Dict) -> str:
    """What a study trained, how long, with which seeds, where and when, in one clause."""
    recipe, hw = study['recipe'], study['hardware']
    length = (f"{study['epochs']} epochs of {study['data'].split(':')[0]}" if study.get('epochs') else
              f"{recipe['steps']} steps of {recipe['batch_size']}")
    n = len(study.get('pending') or [])
    pending = f", {n} run{'s' * (n != 1)} pending" if n else ''
    rows = len(study['summary'])
    return (f"`{study['preset']}`: {rows} row{'s' * (rows != 1)}, {length}, seeds {', '.join(map(str, study['seeds']))}, "
            f"{recipe.get('amp') or 'fp32'}{pending}; {hw.get('gpu') or hw.get('cpu') or 'CPU'}, {study['date'][:10]}")


def training_images(study: Dict) -> int:
    return study['recipe']['steps'] * study['recipe']['batch_size']


def results_index(target: Path) -> str:
    """The index of the results pages, for ``target`` (README.md, MODEL_CARD.md; the pages and the studies
    are found from its folder): one line per results page (``study.command.RESULTS_PAGES``) with its
    schedule and its "In short" line, or that it has not run yet (a page not written yet is left out); the
    longest finished study first (most training images seen; the first listed on a tie), then the others
    in their order."""
    root = target.parent
    studies = {preset: json.loads((root / results_study(preset)).read_text())
               for preset in RESULTS_PAGES if (root / results_study(preset)).is_file()}
    link = lambda preset: f'[{RESULTS_PAGES[preset]}]({RESULTS_PAGES[preset]})'  # noqa: E731
    finished = [preset for preset in studies if not studies[preset].get('pending')]
    lead = max(finished, key=lambda preset: training_images(studies[preset])) if finished else None
    lines = []
    if lead:
        lines += [f'**The longest schedule**, {link(lead)} ({schedule(studies[lead])}): {in_short(studies[lead])}', '',
                  'The other results pages:', '']
    for preset in (p for p in RESULTS_PAGES if p != lead and (root / RESULTS_PAGES[p]).is_file()):
        said = (f'({schedule(studies[preset])}): {in_short(studies[preset])}' if preset in studies else
                f'(`{preset}`): not run yet.')
        lines.append(f'- {link(preset)} {said}')
    lines += ['', f'Generated by `{INDEX_COMMAND}` from the `{results_study("PRESET")}` of each preset with a '
                  'results page.']
    return '\n'.join(lines)


def page_body(source: Path, page: Path) -> str:
    """The Results section of ``page`` from the study.json at ``source``, its plots linked where the study
    wrote them (those that exist)."""
    study = json.loads(source.read_text())
    plots = [p for p in study['plots'] if (source.parent / p).is_file()]
    plot_dir = Path(os.path.relpath(source.parent.resolve(), page.parent.resolve())).as_posix() if plots else None
    return results_markdown(dict(study, plots=plots), plot_dir)


def copy_plots(study_dir: Path, plots: Sequence[str], dest: Path) -> List[str]:
    """Copy the study's PNGs that exist into ``dest`` (each via a temporary file); return those copied."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in plots:
        src = study_dir / name
        if src.is_file():
            atomic_write(dest / name, lambda f, src=src: f.write(src.read_bytes()), binary=True)
            copied.append(name)
    return copied


def read_study(path: str) -> Dict:
    """The study.json given as ``--from``, checked (``schema.STUDY``): a UsageError naming the file, the field
    and the value when it is not one."""
    return read_json('--from', path, STUDY, 'a study.json of `timm-pnnh study`')


def check_arguments(args) -> None:
    """The ``report`` values: ``--from`` a study.json, ``--write-readme`` a file with the Results markers;
    or ``--write-index``, files with the index markers (and no ``--write-readme``)."""
    if args.write_index:
        if args.write_readme:
            raise UsageError('--write-index and --write-readme write different sections: give one of them')
        for path in args.write_index:
            check_markers(path, INDEX_MARKERS, '--write-index')
        return
    read_study(args.source)
    if args.write_readme:
        check_markers(args.write_readme, MARKERS)
        if args.plots_dir is not None:
            check_output_dir('--plots-dir', os.path.join(os.path.dirname(args.write_readme), args.plots_dir))


def run(args) -> int:
    check_arguments(args)
    if args.write_index:
        for path in map(Path, args.write_index):
            body = results_index(path)
            write_between_markers(path, INDEX_MARKERS, body)
            print(f'{body}\n\nwrote the results index of {path}')
        return 0
    source = Path(args.source)
    study = read_study(args.source)
    if args.write_readme:
        readme = Path(args.write_readme)
        if args.plots_dir is None:  # link the plots where the study wrote them (not part of the repository)
            copied = [p for p in study['plots'] if (source.parent / p).is_file()]
            dest = source.parent
            body = page_body(source, readme)
        else:
            dest = readme.parent / args.plots_dir
            copied = copy_plots(source.parent, study['plots'], dest)
            body = results_markdown(dict(study, plots=copied), Path(args.plots_dir).as_posix() if copied else None)
        write_between_markers(readme, MARKERS, body)
        print(body)
        print(f'\nwrote the Results section of {readme}' + (f' (plots: {dest})' if copied else ' (no plots found)'))
    else:
        print(results_markdown(study, str(source.parent)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser('report', help="the Results section of a results page from a study's study.json",
                                   description=__doc__.split('\n\n')[0])
    parser.add_argument('--from', dest='source', default='output/study-quick/study.json', help='a study.json')
    parser.add_argument('--write-readme', metavar='FILE', default=None,
                        help=f'write the section between the {MARKERS[0]} / {MARKERS[1]} markers of this file '
                             '(any file with them: a results page docs/results-PRESET.md, a README)')
    parser.add_argument('--write-index', metavar='FILE', action='append', default=[],
                        help=f'write the index of the results pages (each preset\'s "In short" line, the longest '
                             f'schedule first) between the {INDEX_MARKERS[0]} / {INDEX_MARKERS[1]} markers of this '
                             'file (README.md, MODEL_CARD.md; repeatable); the pages and the studies are found from its '
                             'folder, --from is not read')
    parser.add_argument('--plots-dir', default=None,
                        help='copy the PNGs here (relative to that file); default: link them where the study wrote them')
    parser.set_defaults(func=run)

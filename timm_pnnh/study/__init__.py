"""``timm-pnnh study``: the paper's claims measured side by side on Fashion-MNIST (the main job).

A depth sweep over the plain / residual / PNNH families (CIFAR-style ResNets, and small-image ViTs in the
``full`` and ``converged`` presets) and their width variants, every model trained with one shared schedule
(``training.Recipe``: timm's SGD and cosine scheduler; AdamW for the ViTs) and the same seeds. Each
run records test accuracy (after every epoch for the presets that count epochs), parameters and
per-block input retention (``diagnostics.retention``) at initialisation and after training. One JSON
record per finished run is written atomically to ``OUT/runs/``; a rerun reuses every record whose
settings match (``--no-resume`` redoes them), so a half-finished sweep resumes, and a record that is
empty, cut off or not JSON is run again. After training, every row is timed side by side in one
process by ``bench.benchmark`` (training, eval and deployed images/s, saved activations; written to
``OUT/speed.json``, reused likewise). ``OUT/study.json`` holds the settings, the runs, the speed
report and the per-model summary; ``OUT/*.png`` the plots (accuracy against epochs, and the fronts of
accuracy against parameters, training and deployed images/s).

Presets:

* ``quick`` -- depths 20 and 56, 3 seeds, 120 SGD steps of 64 images (one pass over 7,680 training
  images), 2,000 test images, retention on 2 x 128 images. A demonstration sized to finish within 15
  minutes on 2 idle CPU cores; its short schedule favours shallow nets. After its table it prints a
  note computed from its numbers (``summary.quick_note``): which comparisons agree with the longest
  finished studies (results/study-long-cpu; for the plain net results/study-converged-cpu) and where the
  short schedule disagrees, and why.
* ``converged-cpu`` -- the rows that decide the claims at depth 56 (plain, residual, PNNH, PNNH with
  a half-width learner, and a residual net whose branch is as narrow: timm's ``block_reduce_first=2``;
  the split-width PNNH rows, ``coder_ratio`` + ``learner_ratio`` 0.5 + 0.5 (also with
  ``coder_sharing='stage'``) and 0.25 + 0.25, with the residual control ``block_reduce_first=4``),
  2 seeds, 3 epochs of the whole training set, the whole test set, channels_last. The first five
  rows trained in 138 minutes on 2 CPU cores.
* ``long-cpu`` -- residual, PNNH and the 0.5 + 0.5 split PNNH at depth 56, 2 seeds, 10 epochs, bf16
  autocast and channels_last on 2 CPU cores.
* ``vit-cpu`` -- the Transformer half: the residual ViT, the plain ViT, the PNNH ViT, the PNNH ViT
  with the exact signed-Dirac coder (``coder_ratio=2``), a PNNH ViT whose coder and MLP together are as wide as the ViT's MLP (``mlp_ratio=3``) and the skipless SAS-P ViT
  (He & Hofmann 2024), all of depth 12 and width 96 on 28x28 Fashion-MNIST (patch 4), 2 seeds, 10 epochs,
  AdamW with a warm-up (``VIT_RECIPE``), bf16 autocast on 2 CPU cores.
* ``depth-cpu`` -- the depth axis: plain, residual and PNNH ResNets at depths 20, 56 and 110, 2 seeds,
  3 epochs (the converged-cpu budget), bf16 autocast and channels_last on 2 CPU cores.
* ``converged`` -- for a GPU: depths 20, 56 and 110, every width variant (``learner_ratio`` 0.5 and 0.25,
  ``coder_ratio`` 0.5 with ``learner_ratio`` 0.5 (deployed no wider than the residual net),
  ``coder_sharing='stage'``, residual ``block_reduce_first`` 2 and 4), the ViTs, 3 seeds, 30 epochs,
  bf16 autocast and channels_last on ``cuda``.
* ``full`` -- depths 20, 56, 110 and the ViTs, 3 seeds, 3,000 steps of 128 images (6.4 epochs).
* ``ablation`` -- the PNNH knobs the paper leaves open, one at a time from the registered defaults,
  plus the residual reference, at depth 56 on the quick schedule.

Only the presets with a results page (``command.RESULTS_PAGES``), run as defined, end by printing the
``timm-pnnh report`` command that writes their page (``docs/results-PRESET.md``); the README's Results
and the model card quote each page's first line (``timm-pnnh report --write-index``).

The package: ``presets`` (``Row``, ``Preset``, ``PRESETS``, the rows of a preset), ``runs`` (the data,
one run, the sweep and its records, the speed measurement), ``summary`` (the per-model summary, its
tables and the quick preset's note), ``plots`` and ``command`` (the ``timm-pnnh study`` command line).
"""
from timm_pnnh.study.presets import (
    ABLATION_KNOBS, FAMILIES, PRESETS, RESNET_NAMES, VIT_NAMES, Preset, Row, preset_rows, resolve_preset, row_recipe)
from timm_pnnh.study.runs import (
    RETENTION_METHOD, Data, check_output, hardware, load_data, measure_speed, read_record, run_key, run_one, run_settings,
    sweep)
from timm_pnnh.study.summary import epochs_table, fmt_acc, study_table, summarize
from timm_pnnh.study.plots import PLOTS, pareto_front, write_plots
from timm_pnnh.study.command import register, run

__all__ = [
    'ABLATION_KNOBS', 'FAMILIES', 'PRESETS', 'RESNET_NAMES', 'VIT_NAMES', 'Preset', 'Row', 'preset_rows', 'resolve_preset',
    'row_recipe', 'RETENTION_METHOD', 'Data', 'check_output', 'hardware', 'load_data', 'measure_speed', 'read_record',
    'run_key', 'run_one', 'run_settings', 'sweep', 'epochs_table', 'fmt_acc', 'study_table', 'summarize', 'PLOTS',
    'pareto_front', 'write_plots', 'register', 'run']

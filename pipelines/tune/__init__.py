"""Ablation sweeps: Ray Tune over training runs, ASHA early stopping, MLflow parent/child runs.

    python -m pipelines.tune --config experiments/ablations/X.yaml [key=value ...]
    python -m pipelines.tune --resume SWEEP_DIR              (salma tune … is the same)

A sweep YAML is an experiment (``base:`` an experiment YAML, relative to the sweep file, plus
inline experiment deltas at the top level) and a ``sweep:`` section (``SweepSettings``). The
configurations are the named ``variants`` times the ``search_space`` (a grid, or ``num_samples``
random draws in ``mode: random``), each repeated over ``seeds``. Every (configuration, seed) is
one Tune trial: a *function* trainable that calls ``pipelines.train.train`` — the code path of
``salma train`` — with Tune's ``TuneReportCallback`` on the Train ``RunConfig``, so every Train
report (one per checkpoint) is one Tune iteration. ASHA stops trials on ``sweep.metric``
(default ``val/mask_loss``, the held-out loss of ``pipelines.held_out``), with the optimizer step
as its time axis.

The driver opens one MLflow parent run per sweep; each trial's training run is a child
(``mlflow.parentRunId``) holding its params, curves and final metrics. When the sweep ends the
driver writes, into the sweep folder and onto the parent run: ``summary.md`` / ``summary.csv``
(metric mean ± std over seeds per configuration, with the compute accounting), ``trials.csv``,
``summary.png`` (metric per configuration, error bars over seeds) and ``best.yaml`` (the best
configuration as an experiment YAML for ``salma train``).

Restore: the sweep folder is Tune's own experiment folder (``tune.RunConfig(name,
storage_path)``), and holds ``sweep.yaml`` (the resolved sweep, base inlined) and ``sweep.json``
(the parent MLflow run). ``--resume`` calls ``Tuner.restore`` on it: finished trials are kept, not
rerun; an unfinished trial starts again and resumes its training run from its latest checkpoint.

The package, by layer: ``schema`` (the sweep file and its configurations), ``trials`` (the Tune
trainable and the scheduler), ``results`` (summary, statistics, closing runs), ``driver``
(``tune`` and ``main``, the CLI).
"""

from pipelines.tune.driver import main, tune, with_absolute_data_paths
from pipelines.tune.results import (
    TrialOutcome,
    TuneResult,
    close_stopped_children,
    summarize,
    write_results,
    write_statistics,
)
from pipelines.tune.schema import (
    BEST_YAML,
    EVAL_FILE,
    STATE_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    SUMMARY_MD,
    SUMMARY_PNG,
    SWEEP_FILE,
    TRIALS_CSV,
    TRIALS_DIR,
    Sweep,
    SweepSettings,
    build_sweep,
    load_sweep,
)
from pipelines.tune.trials import build_scheduler

__all__ = [
    "BEST_YAML", "EVAL_FILE", "STATE_FILE", "SUMMARY_CSV", "SUMMARY_JSON", "SUMMARY_MD", "SUMMARY_PNG",
    "SWEEP_FILE", "TRIALS_CSV", "TRIALS_DIR", "Sweep", "SweepSettings", "TrialOutcome", "TuneResult",
    "build_scheduler", "build_sweep", "close_stopped_children", "load_sweep", "main", "summarize", "tune",
    "with_absolute_data_paths", "write_results", "write_statistics",
]

"""Names of the files a training run writes into its output directory (one place, read by the
training loop that writes them and by :mod:`rap.reports.layout` that finds them).

- ``train_metrics.json``: metrics only (final loss terms, FLOPs per step, best validation
  score); a DVC metrics file, reproducible bit for bit on the CPU;
- ``train_run.json``: provenance (stage, steps, world size, precision, validation history,
  the checkpoint resumed from); not tracked by DVC;
- ``train_timings.json``: wall-clock measurements (wall time, clips/s, peak memory, the
  machine); different on every run, so never tracked by DVC; also logged to MLflow.
"""

TRAIN_METRICS = "train_metrics.json"
TRAIN_RUN = "train_run.json"
TRAIN_TIMINGS = "train_timings.json"

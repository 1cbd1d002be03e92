"""The run record: the files a finished (or failed) run leaves in its run dir and what identifies its
configuration. The trainer (:mod:`recarena.run`) writes through these names; the leaderboard, the benchmark and
the significance tests read through them. Imports nothing but the standard library, so every layer may use it.

    RUN_DIR/metrics.json               METRICS_FORMAT_VERSION, model, loss, data, split, seed, overrides,
                                       config_key, val/test metrics, timings (written last: the run is finished)
    RUN_DIR/error.json                 a failed job of a multirun: its one-line error and configuration
    RUN_DIR/per_user_metrics.parquet   each evaluated user's metrics (recarena.evaluation.per_user), for the
                                       paired significance tests
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

METRICS_FILE = "metrics.json"
#: Bump when metrics.json changes in a way an older reader would misread (the leaderboard skips other versions).
METRICS_FORMAT_VERSION = 1
#: A job of a multirun that failed: its one-line error, configuration and seed (recarena.run.train_job).
ERROR_FILE = "error.json"
PER_USER_FILE = "per_user_metrics.parquet"

#: What makes two runs "the same configuration" (one leaderboard row, seeds averaged).
KEYS = ["config_key", "model", "loss", "data", "split"]
#: Overrides that replicate a configuration rather than define one.
SEED_KEYS = {"seed", "split.seed"}


def config_key(overrides: Iterable[str]) -> str:
    """The overrides minus the seed ones, sorted: runs differing only by seed share it."""
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS]
    return " ".join(sorted(kept))


def is_finished(run_dir: Path) -> bool:
    """Whether a run dir holds a finished run: ``metrics.json`` is written last, atomically, once training, testing
    and the run data are done. The one check that resuming work (``recarena benchmark``) relies on."""
    return (Path(run_dir) / METRICS_FILE).is_file()

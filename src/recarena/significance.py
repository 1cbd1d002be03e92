"""Is a leaderboard row really worse than the best one? A paired test per user, Holm-corrected across rows.

Every run leaves its per-user test metrics in ``per_user_metrics.parquet``
(:mod:`recarena.evaluation.per_user`). For the leaderboard's primary metric (say ``test/ndcg@10``):

1. The *reference* row is the best configuration on the metric's **validation** twin (``val/ndcg@10``, mean over
   seeds), not on test: choosing the reference on the test set and then testing against it on the same test
   set would bias every comparison in its favour.
2. Each other row is paired with it **seed by seed** (the run of seed ``s`` of the row with the run of seed ``s`` of
   the reference: same split, same evaluated users, whenever the split follows the seed), and users are joined
   on their MovieLens id. A user's difference (row minus reference) is averaged over the seeds both rows share,
   so each user counts once: the user is the independent unit of the test. Pooling every (user, seed) pair as
   separate observations would count a user's same held-out items once per seed under a fixed (temporal)
   split, and shrink p-values about sqrt(n_seeds)-fold without any new evidence.
3. The per-user differences go to a two-sided **Wilcoxon signed-rank test** (``scipy.stats.wilcoxon``) with
   ``zero_method="pratt"``: ranking metrics are 0 for many users under both models, and Pratt (1959) keeps
   those ties at zero in the ranking (as the smallest ranks) and then leaves them out of the statistic, instead
   of discarding them before ranking (``"wilcox"``: the test then ignores how many users saw no difference) or
   counting half of each for either side (``"zsplit"``: users with no difference would vote for both models).
   Wilcoxon over a t-test because per-user metrics are bounded and heavily skewed (many zeros, a few ones).
4. The row p-values are adjusted for multiple comparisons with **Holm** (1979): it controls the family-wise
   error rate like Bonferroni, under any dependence between the tests, and is uniformly more powerful.

Pure numpy / pandas; scipy is imported when a test runs (Hydra imports the report module at start).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recarena.record import PER_USER_FILE

log = logging.getLogger(__name__)

#: Family-wise error rate of the ``significant`` column.
ALPHA = 0.05
#: Columns :func:`significance` adds to a leaderboard.
COLUMNS = ["is_reference", "diff_vs_best", "p_value", "significant", "paired_users"]


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are not tests: kept NaN and not counted in ``m``).

    With the ``m`` p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the ``i``-th
    (1-based) is ``max_{j <= i} min(1, (m - j + 1) p_(j))``: the smallest is multiplied by ``m``, the next by
    ``m - 1``, and so on; the running maximum keeps the order (a larger raw p-value never gets a smaller
    adjusted one). Rejecting where the adjusted value is ``< alpha`` is Holm's procedure at level ``alpha``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    order = tested[np.argsort(p[tested], kind="stable")]
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (Pratt's zeros; NaN when there are none).

    All differences zero: the two sides are identical, p = 1 (scipy would divide 0 by 0)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    if not d.any():
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(d, zero_method="pratt").pvalue)


def validation_twin(metric: str) -> str:
    """``test/ndcg@10`` -> ``val/ndcg@10``: the metric the reference row is chosen on."""
    split, _, name = metric.rpartition("/")
    return f"val/{name}" if split in ("test", "val") else metric


class PerUserReader:
    """Reads one metric column of runs' per-user files, each file once; ``None`` where a run has none."""

    def __init__(self, column: str) -> None:
        self.column = column
        self._cache: dict[str, pd.Series | None] = {}

    def __call__(self, run_dir: str) -> pd.Series | None:
        """The column indexed by user (MovieLens id where the file has one, else the user index)."""
        if run_dir not in self._cache:
            self._cache[run_dir] = self._read(Path(run_dir) / PER_USER_FILE)
        return self._cache[run_dir]

    def _read(self, path: Path) -> pd.Series | None:
        if not path.is_file():
            return None
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            key = "user_id" if "user_id" in names else "user"
            if self.column not in names or key not in names:
                return None
            frame = pd.read_parquet(path, columns=[key, self.column])
        except (OSError, ValueError) as e:  # a half-copied or foreign file: no test for that run
            log.warning("skipping unreadable %s: %s", path, e)
            return None
        return frame.set_index(key)[self.column].astype(np.float64)


def per_user_differences(row: pd.DataFrame, best: pd.DataFrame, read: Callable[[str], pd.Series | None]) -> pd.Series:
    """Per user: mean over the shared seeds of (row's value - reference's value).

    ``row`` and ``best`` are the runs of two configurations (columns ``seed``, ``run_dir`` and optionally
    ``split_fingerprint``). Runs pair on the seed; a pair whose split fingerprints differ (both known) is left
    out, since its users were tested on different held-out items. Users pair on their id (inner join).
    """
    best_by_seed = best.drop_duplicates("seed").set_index("seed")
    parts = []
    for r in row.drop_duplicates("seed").itertuples(index=False):
        if pd.isna(r.seed) or r.seed not in best_by_seed.index:
            continue
        b = best_by_seed.loc[r.seed]
        fp_r, fp_b = getattr(r, "split_fingerprint", None), b.get("split_fingerprint")
        if isinstance(fp_r, str) and isinstance(fp_b, str) and fp_r != fp_b:
            continue
        x, y = read(r.run_dir), read(b["run_dir"])
        if x is None or y is None:
            continue
        parts.append((x - y).dropna())  # index-aligned subtraction = inner join on the user
    if not parts:
        return pd.Series(dtype=np.float64)
    return pd.concat(parts).groupby(level=0).mean()


def runs_by_row(board: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> list[pd.DataFrame]:
    """The runs aggregated into each leaderboard row (same ``keys`` values), in board order."""
    groups = {k: g for k, g in runs.groupby(keys, sort=False, dropna=False)}
    return [groups.get(tuple(board.loc[i, keys]), runs.iloc[:0]) for i in board.index]


def significance(board: pd.DataFrame, runs: pd.DataFrame, keys: list[str], primary: str,
                 lower_is_better: bool) -> tuple[pd.DataFrame, str]:
    """The :data:`COLUMNS` for each row of ``board`` (same index), and a sentence on what was tested.

    ``is_reference``: the row the others are tested against; ``diff_vs_best``: mean over paired users of
    (row - reference) on ``primary``; ``p_value``: Holm-adjusted Wilcoxon p-value; ``significant``:
    ``p_value < ALPHA``; ``paired_users``: users in the test. The reference row itself, and rows that cannot be
    paired (no per-user files, no shared seed), get NaN / NA.
    """
    out = pd.DataFrame({"is_reference": False, "diff_vs_best": np.nan, "p_value": np.nan, "significant": pd.NA,
                        "paired_users": pd.NA}, index=board.index).astype({"significant": "boolean",
                                                                         "paired_users": "Int64"})
    out.attrs["reference"] = None
    val = f"{validation_twin(primary)}_mean"
    if not primary.startswith("test/") or val not in board or board[val].isna().all() or "run_dir" not in runs:
        return out, f"No significance test: needs a test primary metric with a validation twin ({primary})."
    ref = board[val].idxmin() if lower_is_better else board[val].idxmax()
    out.attrs["reference"] = ref
    out.loc[ref, "is_reference"] = True
    read = PerUserReader(primary.rpartition("/")[2])
    runs_of = dict(zip(board.index, runs_by_row(board, runs, keys), strict=True))
    raw = pd.Series(np.nan, index=board.index)
    for i in board.index.drop(ref):
        d = per_user_differences(runs_of[i], runs_of[ref], read)
        if len(d):
            out.at[i, "diff_vs_best"], out.at[i, "paired_users"] = d.mean(), len(d)
            raw[i] = wilcoxon_p(d.to_numpy())
    out["p_value"] = holm(raw.to_numpy())
    out["significant"] = pd.array(np.where(out["p_value"].isna(), None, out["p_value"] < ALPHA), dtype="boolean")
    tested = int(raw.notna().sum())
    note = (f"Significance: each row against the best row on `{validation_twin(primary)}` (marked ref), on "
            f"per-user `{primary}` paired by seed and user (differences averaged over the shared seeds), "
            f"two-sided Wilcoxon signed-rank test (Pratt's zeros), Holm-adjusted across the rows tested ({tested}); "
            f"significant = p < {ALPHA}. Δ = mean per-user difference (row − ref). Empty: no per-user files or "
            "no seed in common with the reference.")
    return out, note

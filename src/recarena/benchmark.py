"""``recarena benchmark``: tune every family the same way, on validation only, then test the chosen settings once.

    recarena benchmark --families popularity mf_bpr ease --trials 20 --report-seeds 42 43 44 -- data=ml-100k

For each family preset (``conf/family/<family>.yaml``, all of them by default):

1. **Tune** (validation only): an Optuna study (TPE with a fixed sampler seed, stored in SQLite inside the
   benchmark directory so an interrupted search resumes) over ``conf/search_space/<family>.yaml``, the same number
   of trials for every family, through Hydra's Optuna sweeper and so through whatever Hydra launcher is
   configured. Every trial runs with ``test=false``: no trial computes a test metric. The objective is
   ``--objective`` (``val/ndcg@10``, or ``val/rmse`` for the rating table), which is also what early stopping and
   the best checkpoint follow; ``trainer.max_epochs`` and the patience are fixed for every gradient family, not
   searched. A family with nothing to search (popularity) runs once. When the split does not change with the
   seed (temporal, time_cutoff, leave_one_out, or a fixed ``split.seed``) one search per family serves every
   report seed; otherwise each report seed gets its own search on its own split's validation set.
2. **Report**: the best trial's settings trained on each report seed and tested once.
3. **Leaderboard**: ``leaderboard.{md,csv,html}`` over the report runs (mean ± std over seeds, paired significance),
   and ``tuning.json`` (per family: search space, trials, best params, best validation value, wall time).

Rerunning the same command resumes: finished searches and finished report runs (:func:`recarena.record.is_finished`)
are skipped. ``--trials 0`` reports the presets as they are. The directory defaults to
``benchmarks/<objective>-<hash of the settings>``, so the same command finds its own work again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from recarena.atomic import write_json
from recarena.checks import check_config, family_presets, group_targets
from recarena.cli_errors import exit_on_user_error
from recarena.errors import ConfigError
from recarena.evaluation.registry import metric_of, monitor_mode
from recarena.hparams import optuna_direction
from recarena.launchers import check_launcher_plugin
from recarena.paths import CONF_DIR
from recarena.record import ERROR_FILE, METRICS_FILE, is_finished

log = logging.getLogger(__name__)

#: How each search and report run is started: ``recarena train`` in a fresh process (a wheel has no train.py).
TRAIN_COMMAND = [sys.executable, "-m", "recarena", "train"]
#: Split strategies whose rows do not depend on the seed (unless a curation step samples by it).
SEED_FREE_SPLITS = {"temporal", "time_cutoff", "leave_one_out"}
#: Curation options that sample by the seed, so that the curated corpus (and the split) changes with it.
SEEDED_CURATION = ("max_users", "fraction")


@dataclass
class Settings:
    """One benchmark: what it compares and how (everything that changes a result goes into its directory name)."""

    families: list[str]
    trials: int
    report_seeds: list[int]
    objective: str
    overrides: list[str]
    sampler_seed: int = 1234
    max_epochs: int = 200
    patience: int = 10
    jobs: int = 1
    out: Path = field(default_factory=Path)

    @property
    def mode(self) -> str:
        """``min`` or ``max``: the objective's direction (:mod:`recarena.evaluation.registry`)."""
        return monitor_mode(self.objective)

    def run_overrides(self) -> list[str]:
        """What every tuning and report run gets: the objective as the monitor, the fixed epoch budget, the user's."""
        return [f"eval.monitor={self.objective}", f"eval.monitor_mode={self.mode}",
                f"trainer.max_epochs={self.max_epochs}", f"callbacks.early_stopping.patience={self.patience}",
                "trainer.enable_progress_bar=false", *self.launcher_overrides(), *self.overrides]  # fmt: skip

    def launcher_overrides(self) -> list[str]:
        """``--jobs N``: N runs at once as local processes (conf/hydra/launcher/parallel.yaml), unless the
        overrides name a launcher of their own; each run's ``threads: auto`` is then its share of the cores."""
        if self.jobs == 1 or any(o.lstrip("+").startswith("hydra/launcher=") for o in self.overrides):
            return []
        return ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={self.jobs}"]

    def key(self) -> str:
        """Hash of every setting but the family list: adding a family to a finished benchmark reuses the others."""
        payload = [self.trials, self.report_seeds, self.objective, self.overrides, self.sampler_seed,
                   self.max_epochs, self.patience]  # fmt: skip
        if self.jobs != 1:  # TPE proposing `jobs` trials at once searches differently from one at a time
            payload.append(self.jobs)
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------- checks
def search_space(family: str) -> dict[str, str]:
    """``{override key: Hydra sweeper expression}`` of ``conf/search_space/<family>.yaml``."""
    path = CONF_DIR / "search_space" / f"{family}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"family {family} has no search space: write {path.relative_to(CONF_DIR.parent)} (params in Hydra's "
            "sweeper syntax, e.g. `optimizer.lr: tag(log, interval(0.001, 0.03))`), or use --trials 0."
        )
    space = OmegaConf.to_container(OmegaConf.load(path)) or {}
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in space.items()}


def check_settings(settings: Settings) -> None:
    """Every problem the command line alone shows, before any training (one line, exit code 2)."""
    known = family_presets()
    unknown = [f for f in settings.families if f not in known]
    if unknown:
        raise ConfigError(f"--families: unknown family {', '.join(unknown)}; known: {', '.join(known)}.")
    if settings.jobs < 1:
        raise ConfigError(f"--jobs must be 1 (one run at a time) or more, got {settings.jobs}.")
    check_launcher_plugin(settings.run_overrides())
    if settings.trials < 0:
        raise ConfigError(f"--trials must be 0 (the presets as they are) or more, got {settings.trials}.")
    if not settings.report_seeds:
        raise ConfigError("--report-seeds needs at least one seed.")
    if not settings.objective.startswith("val/"):
        raise ConfigError(f"--objective must be a validation metric (val/...), got {settings.objective!r}.")
    if settings.mode == "min" and (unrated := [f for f in settings.families if f not in rating_families()]):
        raise ConfigError(
            f"--objective {settings.objective} needs families that predict ratings; {', '.join(unrated)} do not. "
            f"Rating families: {', '.join(rating_families())}."
        )
    for family in settings.families:
        if settings.trials:
            search_space(family)
        check_config(compose_family(family, settings.run_overrides()))


def rating_families() -> list[str]:
    """Family presets whose loss fits ratings (``mse``): the rows of a rating table (``--objective val/rmse``)."""
    return [name for name, (_, loss) in family_presets().items() if "ratings" in get_class(group_targets("loss")[loss]).needs]


def compose_family(family: str, overrides: Sequence[str]) -> DictConfig:
    """The config ``python train.py family=<family> <overrides>`` would run (for start-up checks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[f"family={family}", *overrides])
    except (HydraException, OmegaConfBaseException) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"the overrides after -- do not compose with family={family}: {first}") from None


def seed_dependent_split(cfg: DictConfig) -> bool:
    """Whether the report seeds give different splits (so each needs its own search on its own validation)."""
    if cfg.split.get("seed") is not None:
        return False
    curation = cfg.data.get("curation") or {}
    sampled = any(curation.get(key) not in (None, 1, 1.0) for key in SEEDED_CURATION)
    return sampled or str(cfg.split.name) not in SEED_FREE_SPLITS


# ----------------------------------------------------------------------------------------------- tuning
@dataclass
class Search:
    """One Optuna study: a family tuned on the split of one seed."""

    family: str
    seed: int
    path: Path  # its directory: study.db and the trials' run dirs (batch-<k>/<job>)

    @property
    def storage(self) -> str:
        return f"sqlite:///{(self.path / 'study.db').resolve()}"


def searches(settings: Settings, family: str) -> dict[int, Search]:
    """The search each report seed's settings come from: one shared search when the split does not change with
    the seed (tuned on the first report seed's run), else one per seed, each on its own split."""
    per_seed = seed_dependent_split(compose_family(family, settings.run_overrides()))
    root = settings.out / "tuning" / family
    if not per_seed:
        shared = Search(family, settings.report_seeds[0], root)
        return dict.fromkeys(settings.report_seeds, shared)
    return {seed: Search(family, seed, root / f"seed-{seed}") for seed in settings.report_seeds}


def load_study(search: Search, direction: str) -> Any:
    """The search's Optuna study (created empty on first use), read as it is."""
    import optuna

    search.path.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=search.family, storage=search.storage, direction=direction,
                               load_if_exists=True)  # fmt: skip


def recover_interrupted(search: Search, study: Any) -> None:
    """Trials left running by an interrupted command are marked failed and listed in ``interrupted.json``: they
    do not count against the budget, so the resumed search runs as many trials as an uninterrupted one. Only the
    benchmark that owns the directory (:func:`owning`) may call this: a running trial of another would be lost."""
    import optuna

    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    if stale:
        write_json(search.path / "interrupted.json", {"trials": sorted(interrupted(search) | {t.number for t in stale})})


def interrupted(search: Search) -> set[int]:
    """Numbers of the trials an interrupted command left unfinished (marked failed by :func:`recover_interrupted`)."""
    path = search.path / "interrupted.json"
    return set(json.loads(path.read_text())["trials"]) if path.is_file() else set()


def trials_wanted(settings: Settings, family: str) -> int:
    """The trial budget, the same for every family; one run for a family with nothing to search."""
    return min(settings.trials, 1) if not search_space(family) else settings.trials


def run_search(settings: Settings, search: Search) -> None:
    """Run the search's missing trials through Hydra's Optuna sweeper (and the configured launcher)."""
    direction = optuna_direction(settings.mode)
    study = load_study(search, direction)
    recover_interrupted(search, study)
    done = sum(t.state.is_finished() for t in study.trials if t.number not in interrupted(search))
    missing = trials_wanted(settings, search.family) - done
    if missing <= 0:
        return
    space_file = search.path / "search_space.json"
    if not space_file.is_file():  # the space this search runs over, as tuning.json will report it
        write_json(space_file, search_space(search.family))
    batch = sum(p.is_dir() for p in search.path.glob("batch-*"))
    log.info("tuning %s (seed %d): %d of %d trials to run", search.family, search.seed, missing, done + missing)
    command = [
        "-m", "hparams_search=tune", f"+search_space@hydra.sweeper.params={search.family}",
        f"family={search.family}", f"seed={search.seed}", "test=false", "save_run_data=false",
        "export_embeddings=false", f"hydra.sweeper.n_trials={missing}", f"hydra.sweeper.storage={search.storage}",
        f"hydra.sweeper.study_name={search.family}", f"hydra.sweeper.sampler.seed={settings.sampler_seed}",
        f"hydra.sweep.dir={search.path / f'batch-{batch}'}", f"hydra.sweeper.n_jobs={settings.jobs}",
        *settings.run_overrides(),
    ]  # fmt: skip
    run_train(command, search.path / f"batch-{batch}.log", search.path / f"batch-{batch}")


def run_train(arguments: Sequence[str], log_file: Path, sweep_dir: Path | None = None) -> None:
    """``recarena train ARGUMENTS``, its output in ``log_file``; a failure names the log. A search whose failed
    trials left their error.json (``recarena.run.train_job``) counts them as failed trials, as Optuna does, and
    goes on."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w", encoding="utf-8") as out:
        done = subprocess.run([*TRAIN_COMMAND, *arguments], stdout=out, stderr=subprocess.STDOUT,
                              env=os.environ.copy(), check=False)  # fmt: skip
    failed_trials = sorted(sweep_dir.rglob(ERROR_FILE)) if sweep_dir is not None and sweep_dir.is_dir() else []
    if done.returncode == 1 and failed_trials:
        log.warning("%d trial(s) failed, e.g. %s", len(failed_trials), failed_trials[0])
        return
    if done.returncode:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise BenchmarkError(f"recarena train {' '.join(arguments)} failed ({tail[0]}); see {log_file}")


class BenchmarkError(RuntimeError):
    """A training command of the benchmark failed; the message names its log."""


def override_value(value: Any) -> str:
    """A parameter value as a Hydra override value (``true``, ``0.0123``, ``near_miss``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def best_overrides(settings: Settings, search: Search) -> list[str]:
    """The best trial's parameters as overrides (none for a family with nothing to search or ``--trials 0``)."""
    if not settings.trials:
        return []
    direction = optuna_direction(settings.mode)
    study = load_study(search, direction)
    completed = [t for t in study.trials if t.value is not None]
    if not completed:
        raise BenchmarkError(f"no trial of {search.family} finished; see the logs in {search.path}")
    return [f"{key}={override_value(value)}" for key, value in sorted(study.best_trial.params.items())]


# ----------------------------------------------------------------------------------------------- report
def report_dir(settings: Settings, family: str, seed: int) -> Path:
    return settings.out / "report" / family / f"seed-{seed}"


def run_reports(settings: Settings, family: str, by_seed: dict[int, Search]) -> None:
    """Train the chosen settings on every report seed not yet finished and test each once: one multirun per set
    of chosen settings (one for all seeds when they share a search), through the configured launcher."""
    pending: dict[tuple[str, ...], list[int]] = {}
    for seed in settings.report_seeds:
        if not is_finished(report_dir(settings, family, seed)):
            pending.setdefault(tuple(best_overrides(settings, by_seed[seed])), []).append(seed)
    for chosen, seeds in pending.items():
        log.info("report runs of %s: seeds %s", family, ", ".join(map(str, seeds)))
        command = ["-m", f"family={family}", f"seed={','.join(map(str, seeds))}", *chosen, "test=true",
                   f"hydra.sweep.dir={settings.out / 'report' / family}", "hydra.sweep.subdir=seed-${seed}",
                   *settings.run_overrides()]  # fmt: skip
        run_train(command, settings.out / "report" / family / f"seeds-{'-'.join(map(str, seeds))}.log")


# ----------------------------------------------------------------------------------------------- records
def trial_records(study: Any, path: Path) -> list[dict[str, Any]]:
    """Every trial of a study: number, state, params, validation value, seconds, and its run dir (the trial run
    whose overrides hold its params)."""
    runs = {run: set(json.loads((run / METRICS_FILE).read_text()).get("overrides", []))
            for run in (p.parent for p in path.glob("batch-*/*/metrics.json"))}  # fmt: skip
    records = []
    for trial in study.trials:
        # The sweeper writes a value as str(value) (True, 0.01); either spelling names the trial's run.
        wanted = [{f"{k}={v}", f"{k}={override_value(v)}"} for k, v in trial.params.items()]
        run_dir = next((str(run) for run, overrides in sorted(runs.items())
                        if all(spellings & overrides for spellings in wanted)), None)  # fmt: skip
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        records.append({"number": trial.number, "state": trial.state.name, "params": trial.params,
                        "value": trial.value, "seconds": seconds, "run_dir": run_dir})  # fmt: skip
    return records


def tuning_summary(settings: Settings, family: str, by_seed: dict[int, Search]) -> dict[str, Any]:
    """``tuning.json``'s entry of a family: its preset, search space and each search's trials and choice."""
    model, loss = family_presets()[family]
    entry: dict[str, Any] = {"model": model, "loss": loss, "search_space": search_space(family), "searches": []}
    spaces = [search.path / "search_space.json" for search in by_seed.values()]
    if settings.trials and spaces[0].is_file():  # what the searches ran over, even if the file changed since
        entry["search_space"] = json.loads(spaces[0].read_text())
    direction = optuna_direction(settings.mode)
    for search in {id(s): s for s in by_seed.values()}.values():
        if not settings.trials:
            entry["searches"].append({"seed": search.seed, "trials": [], "note": "--trials 0: the preset as it is"})
            continue
        study = load_study(search, direction)
        trials = trial_records(study, search.path)
        best = study.best_trial if any(t["value"] is not None for t in trials) else None
        entry["searches"].append({
            "seed": search.seed,
            "report_seeds": sorted(seed for seed, s in by_seed.items() if s is search),
            "trials": trials,
            "best_trial": best.number if best else None,
            "best_params": best.params if best else None,
            "best_value": best.value if best else None,
            "wall_seconds": round(sum(t["seconds"] or 0.0 for t in trials), 1),
        })  # fmt: skip
    return entry


def write_results(settings: Settings, tuning: dict[str, Any]) -> list[Path]:
    """``tuning.json`` and the leaderboard over the report runs, one row per family."""
    from recarena.report import leaderboard, leaderboard_table, load_runs, write_leaderboard

    write_json(settings.out / "tuning.json", {"settings": settings_record(settings), "families": tuning})
    runs = load_runs([report_dir(settings, f, s) for f in settings.families for s in settings.report_seeds])
    family_of = {str(report_dir(settings, f, s)): f for f in settings.families for s in settings.report_seeds}
    runs["config_key"] = [f"family={family_of.get(str(Path(d).resolve()), '?')}" for d in runs["run_dir"]]
    written = write_leaderboard(settings.out, runs, primary="test/" + settings.objective.split("/", 1)[1])
    from rich.console import Console

    Console().print(leaderboard_table(leaderboard(runs, "test/" + settings.objective.split("/", 1)[1])))
    return [settings.out / "tuning.json", *written]


def settings_record(settings: Settings) -> dict[str, Any]:
    return {"families": settings.families, "trials": settings.trials, "report_seeds": settings.report_seeds,
            "objective": settings.objective, "overrides": settings.overrides, "sampler_seed": settings.sampler_seed,
            "max_epochs": settings.max_epochs, "patience": settings.patience}  # fmt: skip


# ----------------------------------------------------------------------------------------------- command
def default_report_seeds() -> list[int]:
    """``report_seeds`` of conf/train.yaml: the seeds of the multi-seed experiments, the same here."""
    return [int(seed) for seed in OmegaConf.load(CONF_DIR / "train.yaml").report_seeds]


def parse_args(argv: Sequence[str]) -> Settings:
    """``recarena benchmark [options] [-- overrides]``: everything after ``--`` goes to every run."""
    argv = list(argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="recarena benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--families", nargs="+", help="family presets of conf/family/ (default: all of them)")
    parser.add_argument("--trials", type=int, default=20, help="Optuna trials per family (0: the presets as they are)")
    parser.add_argument("--report-seeds", type=int, nargs="+", default=default_report_seeds(),
                        help="seeds tested once (default: report_seeds of conf/train.yaml)")
    parser.add_argument("--objective", default="val/ndcg@10", help="validation metric tuned (val/rmse: rating table)")
    parser.add_argument("--sampler-seed", type=int, default=1234, help="seed of the TPE sampler")
    parser.add_argument("--max-epochs", type=int, default=200, help="trainer.max_epochs of every gradient family")
    parser.add_argument("--patience", type=int, default=10, help="early-stopping patience of every gradient family")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (trials and report runs; needs the launchers extra; 1: reproducible trials)")
    parser.add_argument("--out", type=Path, help="benchmark directory (default: benchmarks/<objective>-<hash>)")
    args = parser.parse_args(own)
    rating_table = (metric := metric_of(args.objective)) is not None and metric.needs == "ratings"
    families = args.families or (rating_families() if rating_table else list(family_presets()))
    settings = Settings(families, args.trials, args.report_seeds, args.objective, overrides, args.sampler_seed,
                        args.max_epochs, args.patience, args.jobs)  # fmt: skip
    name = f"{settings.objective.split('/', 1)[-1].replace('@', '')}-{settings.key()}"
    settings.out = (args.out or Path("benchmarks") / name).resolve()
    return settings


def require_optuna() -> None:
    try:
        import optuna  # noqa: F401
        from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper  # noqa: F401
    except ImportError:
        raise ConfigError("recarena benchmark tunes with Optuna: pip install 'recarena[optuna]'") from None


@contextlib.contextmanager
def owning(out: Path) -> Iterator[None]:
    """Hold ``out/benchmark.lock`` (this process's id) while a benchmark works in ``out``: a second benchmark on
    the same directory is refused rather than left to mix its trials with this one's."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / "benchmark.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = lock.read_text().strip()
        if owner.isdigit() and _alive(int(owner)):
            raise ConfigError(f"another benchmark (process {owner}) is working in {out}: wait for it, or use --out") from None
        lock.unlink(missing_ok=True)  # left by a killed benchmark
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def benchmark(settings: Settings) -> list[Path]:
    """Tune, report and write the leaderboard; returns the files written. Finished work is skipped."""
    tuning = {}
    for family in settings.families:
        started = time.perf_counter()
        by_seed = searches(settings, family)
        if settings.trials:
            for search in {id(s): s for s in by_seed.values()}.values():
                run_search(settings, search)
        run_reports(settings, family, by_seed)
        tuning[family] = tuning_summary(settings, family, by_seed)
        log.info("%s done in %.0f s", family, time.perf_counter() - started)
    return write_results(settings, tuning)


def main(argv: Sequence[str] | None = None) -> int:
    if not log.handlers:  # progress lines of this command only (not every library's INFO)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[benchmark] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    with exit_on_user_error():
        settings = parse_args(sys.argv[1:] if argv is None else argv)
        check_settings(settings)
        if settings.trials:
            require_optuna()
        print(f"benchmark directory: {settings.out}", flush=True)
        try:
            with owning(settings.out):
                written = benchmark(settings)
        except BenchmarkError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print("\n".join(f"wrote {path}" for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The run dir as a self-contained artefact: what ``train()`` saves beside the checkpoint so that
:func:`recarena.inference.load_run` can rebuild the model from the run dir alone (no data cache, no retraining).

Families derive tables from the data at ``attach(dm)`` (twotower's rating contexts, siamese's descriptors and
user profiles, popularity counts) and keep them as non-persistent buffers, so a checkpoint alone cannot rebuild
a model. The run dir therefore also holds the data they were derived from, written by the writers the data cache
already uses (no new format)::

    RUN_DIR/config.yaml            the resolved config (written by train())
    RUN_DIR/checkpoints/best.ckpt  Lightning's checkpoints (last.ckpt too); popularity has none
    RUN_DIR/run.json               RUN_FORMAT_VERSION, recarena version, family, schema, split fingerprint
    RUN_DIR/data/corpus/           the curated corpus the run trained on (Corpus.save, as the data cache)
    RUN_DIR/data/split.npz         its split: train/val/test/known row indices + fingerprint (the split cache's file)

Size (measured): ML-100K 2.5 MB (ratings.npz 2.0 MB, split.npz 0.4 MB, items and users tables 60 kB). The corpus
takes ~20 bytes per rating (a 2M-rating synthetic corpus: 39 MB) and the split 4, so ML-25M needs ~0.6 GB per run
dir, as much as its parsed corpus in the data cache; ``save_run_data=false`` skips it (the run cannot be loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recarena.atomic import staging_dir, write_json
from recarena.data.corpus import Corpus
from recarena.data.splits import Split, read_split, write_split
from recarena.errors import RunError, one_line
from recarena.record import ERROR_FILE, METRICS_FILE, PER_USER_FILE, is_finished
from recarena.version import __version__

#: Bump when the run dir's layout changes in a way an older reader would misread.
RUN_FORMAT_VERSION = 1
RUN_FILE = "run.json"
CORPUS_DIR = "data/corpus"
#: In a sweep dir: the corpus and split its jobs share, hard-linked into each run dir (save_run_data).
SHARED_RUN_DATA = ".run-data"
SPLIT_FILE = "data/split.npz"
CHECKPOINTS = ("checkpoints/best.ckpt", "checkpoints/last.ckpt")


def check_k(k: Any) -> int:
    """``k`` as an int; anything but a positive integer is a :class:`RunError`."""
    if not is_count(k):
        raise RunError(f"k must be a positive integer (how many movies to list), got {k!r}")
    return int(k)


def user_codes(user_table: Any, users: Any, where: str) -> np.ndarray:
    """User ids as the corpus's integer ids: a text id (a file with text ids keeps them as ``user_table.user_key``)
    through that map, an integer as it is."""
    values = np.asarray(users, dtype=object).reshape(-1)
    keys = None if user_table is None or "user_key" not in user_table else user_table
    if keys is None:
        try:
            return values.astype(np.int64)
        except (TypeError, ValueError):
            raise RunError(f"user ids of {where} are integers, got {values[0]!r}") from None
    lookup = dict(zip(keys["user_key"].astype(str), keys["user_id"].astype(np.int64), strict=True))
    codes = [lookup.get(str(v)) if isinstance(v, str) else int(v) for v in values]
    if None in codes:
        raise RunError(f"user {values[codes.index(None)]!r} is not in the training data of {where}")
    return np.asarray(codes, dtype=np.int64)


def user_code(run_dir: Path, user: str) -> int:
    """``--user TEXT`` of a command as the run's integer user id, read with pandas only (no torch): the text id of a
    file with text ids, else the integer itself."""
    path, table = Path(run_dir) / CORPUS_DIR / "users.parquet", None
    if path.is_file():
        with contextlib.suppress(*DAMAGED):
            table = pd.read_parquet(path)
    return int(user_codes(table, [str(user)], str(run_dir))[0])


def user_ids_of(run_dir: Path) -> np.ndarray | None:
    """The MovieLens ids of every user of the run's saved corpus (numpy only: no torch), None when unreadable (the
    model path then names what is wrong)."""
    try:
        with np.load(Path(run_dir) / CORPUS_DIR / "ratings.npz") as ratings:
            return ratings["user_ids"]
    except DAMAGED:
        return None


def is_count(value: Any, minimum: int = 1) -> bool:
    """Whether ``value`` is an integer >= ``minimum`` (a bool is not: ``k=True`` is a mistake, not 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


#: What a run writes into its run dir (Hydra's own .hydra/ and train.log excepted): removed before a fresh run
#: reuses the dir, so that nothing of an earlier run is mixed with the new one.
RUN_ARTEFACTS = (METRICS_FILE, RUN_FILE, "config.yaml", ERROR_FILE, PER_USER_FILE, "checkpoints",
                 "data", "export", "explain", "csv", "tensorboard", "wandb")  # fmt: skip


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's artefacts from ``run_dir`` (``metrics.json`` first: from then on the dir no longer
    reads as finished, even if this is interrupted)."""
    for name in RUN_ARTEFACTS:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def same_config(run_dir: Path, resolved: dict[str, Any]) -> bool:
    """Whether the run in ``run_dir`` was trained with this resolved config (its ``config.yaml``)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    return path.is_file() and OmegaConf.to_container(OmegaConf.load(path)) == resolved




def save_run_data(run_dir: Path, corpus: Corpus, split: Split, schema: Any, family: str, loss: str,
                  shared: Path | None = None) -> None:  # fmt: skip
    """Write the corpus, the split and ``run.json`` (last: its presence marks complete run data).

    ``shared`` (the jobs of a sweep): the corpus and split are stored once there per (corpus, split) and hard-linked
    into the run dir, copied where a link cannot be made (another filesystem); the run dir holds them either way
    and stays self-contained, so a 24-job sweep on ML-25M costs one copy of its ~0.6 GB, not 24.
    """
    run_dir = Path(run_dir)
    if shared is None:
        corpus.save(run_dir / CORPUS_DIR)
        write_split(run_dir / SPLIT_FILE, split)
    else:
        store = _shared_store(Path(shared), corpus, split)
        _link_copy(store / CORPUS_DIR, run_dir / CORPUS_DIR)
        _link_copy(store / SPLIT_FILE, run_dir / SPLIT_FILE)
    meta = {
        "format_version": RUN_FORMAT_VERSION,
        "recarena_version": __version__,
        "model": family,
        "loss": loss,
        "corpus": CORPUS_DIR,
        "split": SPLIT_FILE,
        "split_fingerprint": split.fingerprint,
        "schema": schema.to_dict(),
    }
    write_json(run_dir / RUN_FILE, meta)


def _shared_store(shared: Path, corpus: Corpus, split: Split) -> Path:
    """``shared/<key>``, holding the corpus and split once (written by the first job, atomically: a job that finds
    it complete reuses it; two jobs writing at once each stage their own and the second rename is dropped)."""
    blob = json.dumps([corpus.name, corpus.n_ratings, str(corpus.extra.get("cache_key")), split.fingerprint])
    store = shared / hashlib.sha256(blob.encode()).hexdigest()[:16]
    if (store / SPLIT_FILE).is_file():
        return store
    with staging_dir(store) as tmp:
        corpus.save(tmp / CORPUS_DIR)
        write_split(tmp / SPLIT_FILE, split)
        with contextlib.suppress(OSError):  # ENOTEMPTY: a concurrent job stored it first
            os.replace(tmp, store)
    return store


def _link_copy(source: Path, target: Path) -> None:
    """``target`` as hard links of ``source``'s files (a copy where linking fails), built beside it and renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    with staging_dir(target) as tmp:
        for path in files:
            dest = tmp / path.relative_to(source) if source.is_dir() else tmp / source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, dest)
            except OSError:  # another filesystem, no hard links there, or the link limit
                shutil.copy2(path, dest)
        built = tmp if source.is_dir() else tmp / source.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(built, target)


def read_run_meta(run_dir: Path) -> dict[str, Any]:
    """``run.json``, checked: a run dir of another format version is refused with what to do."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise RunError(f"{run_dir} is not a run dir (no config.yaml): pass the directory train.py wrote")
    path = run_dir / RUN_FILE
    try:
        meta = json.loads(path.read_text())
        version = meta.get("format_version")
    except FileNotFoundError:
        if not is_finished(run_dir):
            raise RunError(
                f"{run_dir} holds a run that did not finish (no run.json, no metrics.json): resume it with "
                f"python train.py <its overrides> hydra.run.dir={run_dir} ckpt_path={run_dir}/checkpoints/last.ckpt, "
                "or retrain it"
            ) from None
        version, meta = None, {}
    except (json.JSONDecodeError, AttributeError) as err:
        raise RunError(f"{path} is unreadable ({err}): retrain the run") from None
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION or version < 1:
        hint = " (no run.json: trained with save_run_data=false or before recarena saved run data)" if not meta else ""
        raise RunError(
            f"{run_dir} was written by an incompatible recarena (run format {version or 'none'}, this version reads "
            f"{RUN_FORMAT_VERSION}){hint}: retrain or install the matching version"
        )
    return meta


def read_run_data(run_dir: Path, meta: dict[str, Any]) -> tuple[Corpus, Split]:
    """The corpus and split the run trained on, from the run dir (never from the data cache)."""
    run_dir = Path(run_dir)
    corpus_dir, split_path = run_dir / meta["corpus"], run_dir / meta["split"]
    if not Corpus.is_cached(corpus_dir):
        raise RunError(f"{run_dir} lacks its saved corpus ({corpus_dir}): retrain the run")
    try:
        corpus = Corpus.load(corpus_dir)
    except DAMAGED as err:
        raise RunError(f"{corpus_dir} is damaged ({one_line(err)}): retrain the run, or copy the dir back") from None
    split = read_split(split_path, corpus)
    if split is None or split.fingerprint != meta["split_fingerprint"]:
        raise RunError(f"{split_path} is missing, damaged or not the run's split: retrain the run")
    return corpus, split


#: What reading a truncated or foreign file raises (numpy's npz and pickle, pyarrow, torch's zip reader, json).
DAMAGED = (OSError, ValueError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError)


def checkpoint_path(run_dir: Path) -> Path:
    """``checkpoints/best.ckpt``, else ``last.ckpt``; a clear error naming the dir when neither exists."""
    for name in CHECKPOINTS:
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    raise RunError(
        f"{run_dir} has no checkpoint ({' or '.join(CHECKPOINTS)}): the training did not finish; retrain the run "
        "or copy its checkpoints/ back"
    )

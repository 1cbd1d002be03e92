"""Registry, download (file:// URLs and mocks; never the network), safe extraction, PyPI fallback, caching."""

from __future__ import annotations

import dataclasses
import io
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recarena.data import sources
from recarena.data.corpus import CORPUS_FORMAT_VERSION, Corpus
from recarena.errors import DataError
from tests.conftest import ml100k_cache
from tests.data_factories import digest, make_recbole_wheel, write_release, zip_dir


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real URL fails as if GroupLens were unreachable; file:// URLs still work."""
    real = urllib.request.urlopen

    def urlopen(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            raise urllib.error.URLError("network disabled in tests")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def _serve(monkeypatch, tmp_path: Path, name: str, layout: str, checksum: str | None = "ok") -> sources.Release:
    """Point release ``name`` at a zip of a tiny ``layout`` release served from a file:// URL."""
    src = write_release(tmp_path / "src", layout)
    zip_path = zip_dir(src, tmp_path / f"{name}.zip", inner=name)
    rel = dataclasses.replace(
        sources.RELEASES[name], url=zip_path.as_uri(), checksum=f"md5:{digest(zip_path)}" if checksum == "ok" else checksum
    )
    monkeypatch.setitem(sources.RELEASES, name, rel)
    return rel


def _cfg(name: str, cache: Path, **kw) -> dict:
    return {"name": name, "cache_dir": str(cache), "root": None, "download": False, **kw}


# ---------------------------------------------------------------------------------------------- registry
def test_registry_has_every_release() -> None:
    assert set(sources.RELEASES) == {"ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-25m", "ml-32m"}
    for name, rel in sources.RELEASES.items():
        assert rel.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip" and rel.dirname == name
    assert sources.RELEASES["ml-100k"].checksum == "md5:0e33842e24a9c977be4e0107933c0723"
    assert sources.RELEASES["ml-latest"].checksum is None and sources.RELEASES["ml-latest-small"].checksum is None
    assert sources.RELEASES["ml-1m"].scale.step == 1.0 and sources.RELEASES["ml-25m"].scale.low == 0.5


def test_unknown_release_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Unknown dataset 'ml-2m'; known: ml-100k, ml-1m, .*ml-32m, synthetic, custom"):
        sources.load_corpus(_cfg("ml-2m", tmp_path))


def test_missing_files_without_download_say_how_to_get_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError) as err:
        sources.load_corpus(_cfg("ml-1m", "~/cache"))  # ~ is expanded
    msg = str(err.value)
    assert f"ratings.dat not found in {tmp_path}/cache/ml-1m" in msg
    assert "data.download=true" in msg and "data.root=" in msg and sources.RELEASES["ml-1m"].url in msg


def test_root_option_and_refusal_to_overwrite_it(tmp_path: Path) -> None:
    root = write_release(tmp_path, "ml-1m")
    corpus = sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", root=str(root)))
    assert corpus.n_ratings == 18 and corpus.name == "ml-1m"
    (root / "ratings.dat").unlink()
    with pytest.raises(DataError, match="lacks ratings.dat; not overwriting"):
        sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", root=str(root), download=True))


# ---------------------------------------------------------------------------------------------- cache
def test_corpus_cache_round_trip(tmp_path: Path, monkeypatch) -> None:
    root = write_release(tmp_path / "cache", "csv")
    root.rename(tmp_path / "cache" / "ml-latest-small")
    first = sources.load_corpus(_cfg("ml-latest-small", tmp_path / "cache"))
    [cached] = (tmp_path / "cache" / "corpus").iterdir()
    assert cached.name.startswith("ml-latest-small-") and cached.name.endswith(f"-v{CORPUS_FORMAT_VERSION}")
    assert first.extra["cache_key"] == cached.name

    def boom(*args):
        raise AssertionError("parsed again instead of reading the cache")

    rel = sources.RELEASES["ml-latest-small"]
    monkeypatch.setitem(sources.RELEASES, "ml-latest-small", dataclasses.replace(rel, parser=boom))
    start = time.perf_counter()
    second = sources.load_corpus(_cfg("ml-latest-small", tmp_path / "cache"))
    assert time.perf_counter() - start < 1.0
    for attr in ("users", "items", "ratings", "timestamps", "user_ids", "genres"):
        np.testing.assert_array_equal(getattr(first, attr), getattr(second, attr))
    assert second.tags is not None and second.genome is not None and second.genre_names == first.genre_names


def test_changed_or_incomplete_cache_is_rebuilt(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    write_release(cache, "ml-1m")
    calls = []
    rel = sources.RELEASES["ml-1m"]

    def counting(*args):
        calls.append(1)
        return rel.parser(*args)

    monkeypatch.setitem(sources.RELEASES, "ml-1m", dataclasses.replace(rel, parser=counting))
    sources.load_corpus(_cfg("ml-1m", cache))
    [path] = (cache / "corpus").iterdir()
    # A leftover temp dir from a killed save, even a complete-looking one, is never read back.
    leftover = cache / "corpus" / f".{path.name}.x1y2z3"
    path.rename(leftover)
    sources.load_corpus(_cfg("ml-1m", cache))
    assert len(calls) == 2 and Corpus.is_cached(path)
    (path / "meta.json").unlink()  # a cache without meta.json is incomplete
    sources.load_corpus(_cfg("ml-1m", cache))
    (path / "ratings.npz").write_bytes(b"garbage")  # a damaged cache is rebuilt, not trusted
    sources.load_corpus(_cfg("ml-1m", cache))
    with open(cache / "ml-1m" / "ratings.dat", "a") as f:  # a changed source gets a new key
        f.write("99::6::5::890000000\n")
    assert sources.load_corpus(_cfg("ml-1m", cache)).n_ratings == 19
    assert len(calls) == 5 and len([p for p in (cache / "corpus").iterdir() if not p.name.startswith(".")]) == 2


# ---------------------------------------------------------------------------------------------- download
def test_download_checksum_ok(tmp_path: Path, monkeypatch) -> None:
    _serve(monkeypatch, tmp_path, "ml-1m", "ml-1m")
    corpus = sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", download=True))
    assert corpus.n_ratings == 18
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["corpus", "ml-1m"]  # no temp left


def test_download_checksum_mismatch_deletes_and_names_both(tmp_path: Path, monkeypatch) -> None:
    rel = _serve(monkeypatch, tmp_path, "ml-1m", "ml-1m", checksum="md5:" + "0" * 32)
    with pytest.raises(sources.ChecksumError, match=r"expected md5 0{32}, got [0-9a-f]{32}") as err:
        sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", download=True))
    assert rel.url in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_refreshed_release_uses_published_md5(tmp_path: Path, monkeypatch) -> None:
    rel = _serve(monkeypatch, tmp_path, "ml-latest-small", "csv", checksum=None)
    zip_path = Path(urllib.request.url2pathname(rel.url[len("file://") :]))
    Path(f"{zip_path}.md5").write_text(f"MD5 (ml-latest-small.zip) = {digest(zip_path)}\n")
    corpus = sources.load_corpus(_cfg("ml-latest-small", tmp_path / "cache", download=True))
    assert corpus.genome is not None
    Path(f"{zip_path}.md5").write_text("0" * 32)
    with pytest.raises(sources.ChecksumError):
        sources.fetch_release(rel, tmp_path / "other")


def test_interrupted_download_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    _serve(monkeypatch, tmp_path, "ml-1m", "ml-1m")

    class Dropped(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection dropped")
            return super().read(10)

        def __enter__(self):
            return self

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Dropped(b"x" * 100))
    with pytest.raises(sources.DownloadError, match="connection dropped"):
        sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", download=True))
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_extraction_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    _serve(monkeypatch, tmp_path, "ml-1m", "ml-1m")

    def crash(self, path, *args, **kwargs):
        (Path(path) / "ml-1m").mkdir()
        (Path(path) / "ml-1m" / "ratings.dat").write_text("1::1::")
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "extractall", crash)
    with pytest.raises(KeyboardInterrupt):
        sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", download=True))
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    _serve(monkeypatch, tmp_path / "again", "ml-1m", "ml-1m")
    assert sources.load_corpus(_cfg("ml-1m", tmp_path / "cache", download=True)).n_ratings == 18


@pytest.mark.parametrize("member", ["../evil.txt", "/abs/evil.txt", "ml-1m/../../evil.txt", "C:/evil.txt", "link"])
def test_zip_slip_and_symlinks_are_refused(tmp_path: Path, member: str) -> None:
    zip_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::1::5::1\n")
        info = zipfile.ZipInfo(member)
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if member == "link" else "pwned")
    dest = tmp_path / "cache" / "ml-1m"
    with pytest.raises(DataError, match="refusing unsafe zip member"):
        sources.extract_release(zip_path, dest, "ml-1m", ["ratings.dat"], "bad.zip")
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------------------------------------- ML-100K
def _fake_pip(tmp_path: Path, calls: list):
    """A ``subprocess.run`` stand-in for ``pip download``: drops a fake recbole wheel into ``-d``."""
    wheel = make_recbole_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", write_release(tmp_path / "rb", "ml-100k-recbole"))

    def run(cmd, **kwargs):
        calls.append(cmd)
        out = Path(cmd[cmd.index("-d") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, digest(wheel, "sha256")


def test_ml100k_falls_back_to_pypi(tmp_path: Path, monkeypatch, no_network, caplog) -> None:
    calls: list = []
    run, sha = _fake_pip(tmp_path, calls)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(sources, "RECBOLE_WHEEL_SHA256", sha)
    caplog.set_level("INFO")
    corpus = sources.load_corpus(_cfg("ml-100k", tmp_path / "cache", download=True))
    assert calls == [[sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "recbole==1.2.1",
                      "-d", calls[0][-1]]]  # fmt: skip
    out = tmp_path / "cache" / "ml-100k-recbole"
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()
    assert corpus.n_ratings == 18 and corpus.extra["layout"] == "recbole"
    assert "GroupLens unreachable" in caplog.text and "ML-100K source: PyPI recbole==1.2.1" in caplog.text
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["corpus", "ml-100k-recbole"]


def test_pypi_wheel_checks(tmp_path: Path, monkeypatch) -> None:
    run, _ = _fake_pip(tmp_path, [])
    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(sources.ChecksumError, match="sha256 .* expected 9c99"):
        sources.fetch_ml100k_from_pypi(tmp_path / "cache" / "ml-100k-recbole")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"))
    with pytest.raises(sources.DownloadError, match="(?s)No matching distribution.*data.root="):
        sources.fetch_ml100k_from_pypi(tmp_path / "cache" / "ml-100k-recbole")
    assert list((tmp_path / "cache").iterdir()) == []


def test_ml100k_from_grouplens_when_reachable(tmp_path: Path, monkeypatch, caplog) -> None:
    _serve(monkeypatch, tmp_path, "ml-100k", "ml-100k")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("PyPI used although GroupLens answered"))
    caplog.set_level("INFO")
    corpus = sources.load_corpus(_cfg("ml-100k", tmp_path / "cache", download=True))
    assert corpus.extra["layout"] == "grouplens" and "ML-100K source: GroupLens" in caplog.text


def test_fetch_cli_pypi_only(tmp_path: Path, monkeypatch, capsys) -> None:
    run, sha = _fake_pip(tmp_path, [])
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(sources, "RECBOLE_WHEEL_SHA256", sha)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("GroupLens tried with --offline-only-pypi"))
    assert sources.main(["fetch", "ml-100k", "--cache-dir", str(tmp_path / "c"), "--offline-only-pypi"]) == 0
    assert f"files in {tmp_path / 'c' / 'ml-100k-recbole'}" in capsys.readouterr().out
    assert sources.main(["fetch", "ml-100k", "--cache-dir", str(tmp_path / "c")]) == 0  # already there: no fetch


@pytest.mark.ml100k
def test_real_ml100k_from_the_cache() -> None:
    """The real MovieLens-100K (``make data`` fills the cache); fails, not skips, when it is missing."""
    root = ml100k_cache()
    corpus = sources.load_corpus({"name": "ml-100k", "cache_dir": str(root), "download": False})
    assert (corpus.n_users, corpus.n_items, corpus.n_ratings) == (943, 1682, 100_000)
    assert corpus.scale.low == 1.0 and set(np.unique(corpus.ratings)) == {1, 2, 3, 4, 5}
    assert corpus.item_table.loc[0, "title"] == "Toy Story" and corpus.item_table.loc[0, "year"] == 1995
    assert len(corpus.genre_names) == 19
    start = time.perf_counter()
    sources.load_corpus({"name": "ml-100k", "cache_dir": str(root), "download": False})
    assert time.perf_counter() - start < 1.0


def test_a_complete_copy_from_a_concurrent_run_is_kept(tmp_path: Path) -> None:
    first = write_release(tmp_path / "a", "ml-1m")
    second = write_release(tmp_path / "b", "ml-1m", seed=1)
    text = (first / "ratings.dat").read_text()
    sources._replace_dir(first, tmp_path / "dest", ["ratings.dat"])
    sources._replace_dir(second, tmp_path / "dest", ["ratings.dat"])  # lost the race: keeps the first
    assert (tmp_path / "dest" / "ratings.dat").read_text() == text != (second / "ratings.dat").read_text()


def test_pypi_only_env_skips_grouplens(tmp_path: Path, monkeypatch) -> None:
    run, sha = _fake_pip(tmp_path, [])
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(sources, "RECBOLE_WHEEL_SHA256", sha)
    monkeypatch.setenv(sources.PYPI_ONLY_ENV, "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("GroupLens tried"))
    assert sources.load_corpus(_cfg("ml-100k", tmp_path / "c", download=True)).extra["layout"] == "recbole"

"""leaderboard.html opened in a real headless Chromium: the table's rows and cells, and every plot loaded.

Needs Debian's chromium (/usr/bin/chromium; `make install-test` installs it where apt-get can) and playwright
for Python (the `test` extra). Playwright drives the system browser: `playwright install` is never needed.
Set RECARENA_SCREENSHOT=/some/file.png to keep a full-page screenshot of the hand-built page (the real sweep's
goes beside it, as <name>-sweep.png).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recarena.report import write_leaderboard
from tests.conftest import TINY_DATA
from tests.test_report import _payload, _write, _write_csv_log, _write_per_user
from tests.test_train import _run_train

CHROMIUM = Path(os.environ.get("RECARENA_CHROMIUM", "/usr/bin/chromium"))
PLOT_FILES = {"leaderboard_metrics.png", "leaderboard_curves.png", "leaderboard_ndcg_at_k.png"}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium page; a missing browser fails the test with how to install it (never a skip)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: the HTML leaderboard test needs Debian's chromium. Install it with "
                    "`sudo apt-get install -y chromium` (or `make install-test`, which does it where apt-get is "
                    "available), or point RECARENA_CHROMIUM at a Chromium binary.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install -e '.[test]'` (no `playwright install`: "
                    "the test drives /usr/bin/chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _render(browser: object, html: Path, screenshot: Path | None) -> dict:
    """Open ``html`` and return its table cells and each image's natural width."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")  # every <img> settled: loaded or broken
        seen = page.evaluate("""() => ({
            headers: [...document.querySelectorAll('#leaderboard thead th')].map(th => th.textContent.trim()),
            rows: [...document.querySelectorAll('#leaderboard tbody tr')].map(
                tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim())),
            best: [...document.querySelectorAll('#leaderboard td.best')].map(td => td.textContent.trim()),
            reference: [...document.querySelectorAll('#leaderboard tr.reference td')].map(td => td.textContent.trim()),
            images: [...document.images].map(img => ({file: img.dataset.file, width: img.naturalWidth,
                                                       complete: img.complete, src: img.getAttribute('src')})),
            notes: [...document.querySelectorAll('p.note')].map(p => p.textContent.trim()),
        })""")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        return seen
    finally:
        page.close()


def _screenshot(suffix: str = "") -> Path | None:
    target = os.environ.get("RECARENA_SCREENSHOT")
    if not target:
        return None
    path = Path(target)
    return path.with_name(f"{path.stem}{suffix}{path.suffix}")


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Two mf configurations x 2 seeds with per-user files and CSV logs, + popularity without either."""
    rng = np.random.default_rng(5)
    users = 40
    for num, (lr, seed) in enumerate([("0.01", 1), ("0.01", 2), ("0.001", 1), ("0.001", 2)]):
        level = 0.10 if lr == "0.001" else 0.06
        ndcg = rng.uniform(0, 2 * level, users).round(3)
        ov = ["model=mf", f"optimizer.lr={lr}", f"seed={seed}"]
        test = {"test/ndcg@10": float(ndcg.mean()), "test/ndcg@20": float(ndcg.mean()) * 1.3}
        run = tmp_path / str(num)
        _write(run, _payload("mf", seed, ov, test, {"val/ndcg@10": level + 0.01 * seed}, True))
        _write_per_user(run, {"ndcg@10": list(ndcg)})
        _write_csv_log(run, losses=[1.2, 0.9, 0.8], val=[level - 0.02, level - 0.01, level])
    _write(tmp_path / "4", _payload("popularity", 1, ["model=popularity", "seed=1"],
                                    {"test/ndcg@10": 0.05, "test/ndcg@20": 0.07}, {"val/ndcg@10": 0.05}, True))
    return tmp_path


def test_html_table_and_images_render(browser: object, sweep: Path) -> None:
    written = write_leaderboard(sweep)
    html = sweep / "leaderboard.html"
    assert html in written and {p.name for p in written} >= PLOT_FILES
    seen = _render(browser, html, _screenshot())

    headers = seen["headers"]
    assert headers == ["#", "configuration", "model", "loss", "data", "split", "n_seeds", "test/ndcg@10",
                       "Δ vs ref", "p (Holm)", "significant", "test/ndcg@20", "wall_seconds"]
    rows = seen["rows"]
    assert [r[2] for r in rows] == ["mf", "mf", "popularity"] and len(rows) == 3
    col = {h: j for j, h in enumerate(headers)}
    by_config = {r[col["configuration"]]: r for r in rows}
    ref, other = by_config["model=mf optimizer.lr=0.001"], by_config["model=mf optimizer.lr=0.01"]
    pop = by_config["model=popularity"]
    assert ref[col["Δ vs ref"]] == "ref" and seen["reference"][col["configuration"]] == "model=mf optimizer.lr=0.001"
    assert other[col["Δ vs ref"]].startswith("-") and other[col["significant"]] in {"yes", "no"}
    assert float(other[col["p (Holm)"]]) < 0.05  # 40 users, 0.10 vs 0.06 on average
    assert pop[col["Δ vs ref"]] == pop[col["p (Holm)"]] == ""  # no per-user file: empty, no error
    assert pop[col["test/ndcg@10"]] == "0.050"  # one seed: the value alone
    assert " ± " in ref[col["test/ndcg@10"]] and ref[col["test/ndcg@10"]] in seen["best"]

    images = seen["images"]
    assert {i["file"] for i in images} == PLOT_FILES
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    assert seen["notes"][-1].startswith("Written ") and " on " in seen["notes"][-1]  # when, how, where, versions


def test_the_page_is_one_self_contained_file(browser: object, sweep: Path, tmp_path_factory) -> None:
    """Moved alone (mailed, attached), with no network and no PNG beside it, every image still renders."""
    write_leaderboard(sweep)
    alone = tmp_path_factory.mktemp("alone") / "leaderboard.html"
    alone.write_bytes((sweep / "leaderboard.html").read_bytes())
    seen = _render(browser, alone, None)
    assert len(seen["images"]) == 3 and all(i["src"].startswith("data:image/png;base64,") for i in seen["images"])
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    assert "runs: " in seen["notes"][-1]


def test_page_without_plots_or_tests_still_renders(browser: object, tmp_path: Path) -> None:
    """A single old run: no per-user file, no CSV log, no NDCG: a table, no test columns, no broken image."""
    _write(tmp_path / "0", _payload("mf", 1, ["model=mf"], {"test/rmse": 0.9}, {"val/rmse": 0.91}, True))
    (tmp_path / "leaderboard_curves.png").write_bytes(b"stale")  # from an earlier write: removed
    write_leaderboard(tmp_path, primary="test/rmse")
    seen = _render(browser, tmp_path / "leaderboard.html", None)
    assert len(seen["rows"]) == 1 and "0.900" in seen["rows"][0]
    assert [i["file"] for i in seen["images"]] == ["leaderboard_metrics.png"] and seen["images"][0]["width"] > 0
    assert not (tmp_path / "leaderboard_curves.png").exists()


@pytest.mark.slow
def test_multirun_leaves_html_plots_and_per_user_files(browser: object, tmp_path: Path, data_cache: Path) -> None:
    """`python train.py -m`: 2 configurations x 2 seeds; each run's per-user file, the page, its plots, a p-value."""
    sweep = tmp_path / "sweep"
    proc = _run_train(
        ["-m", "model=mf", "optimizer.lr=1e-3,2e-2", "seed=1,2", *TINY_DATA, "trainer=cpu", "trainer.max_epochs=3",
         "trainer.enable_progress_bar=false", "verbose=false", f"hydra.sweep.dir={sweep}"],
        tmp_path, {"RECARENA_DATA": str(data_cache), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 4
    for run in runs:
        per_user = pd.read_parquet(run / "per_user_metrics.parquet")
        assert {"user", "user_id", "ndcg@10", "recall@20", "rmse", "mae"} <= set(per_user.columns)
        assert per_user["user"].is_unique and len(per_user) > 50
    assert {"leaderboard.html", "leaderboard.md", "leaderboard.csv", *PLOT_FILES} <= {p.name for p in sweep.iterdir()}
    per_run = pd.read_csv(sweep / "leaderboard.csv")
    assert per_run["is_reference"].sum() == 2  # the two seeds of the row best on val/rmse
    tested = per_run[~per_run["is_reference"]]
    assert tested["p_value"].between(0, 1).all() and (tested["paired_users"] > 50).all()

    seen = _render(browser, sweep / "leaderboard.html", _screenshot("-sweep"))
    at = seen["headers"].index("Δ vs ref")
    assert len(seen["rows"]) == 2 and [r[at] for r in seen["rows"]].count("ref") == 1
    assert {i["file"] for i in seen["images"]} == PLOT_FILES
    assert all(i["width"] > 0 for i in seen["images"]), seen["images"]



def test_error_axes_zoom_to_the_bars_and_each_objective_has_its_own_loss_panel(tmp_path: Path) -> None:
    """RMSE 0.975 vs 0.992 must look different (no axis from 0), and a BPR loss must not share an axis with a
    squared error."""
    from recarena.report import leaderboard, load_runs
    from recarena.report_html import _bars, _curves

    for num, (loss, rmse, losses) in enumerate([("mse", 0.975, [1.2, 0.9]), ("mse", 0.992, [1.3, 1.0]),
                                                ("bpr", None, [0.69, 0.4])]):  # fmt: skip
        payload = _payload("mf", 1, ["model=mf", f"loss={loss}", f"optimizer.lr=0.0{num + 1}"],
                           {"test/ndcg@10": 0.1, **({"test/rmse": rmse} if rmse else {})}, {"val/ndcg@10": 0.1}, True)
        _write(tmp_path / str(num), payload | {"loss": loss})
        _write_csv_log(tmp_path / str(num), losses=losses, val=[0.05, 0.1])
    runs = load_runs([tmp_path])
    board = leaderboard(runs, primary="test/ndcg@10")
    labels = [str(i) for i in range(len(board))]
    bars = _bars(board, ["test/rmse", "test/ndcg@10"], labels)
    rmse_axis, ndcg_axis = bars.axes
    low, high = rmse_axis.get_xlim()
    assert 0.9 < low < 0.975 and 0.992 < high < 1.1  # zoomed in on the two bars
    assert ndcg_axis.get_xlim()[0] == 0  # scores keep their axis from 0
    curves = _curves(board, runs, labels)
    titles = [ax.get_title() for ax in curves.axes]
    assert sorted(titles[:2]) == ["train/loss (loss=bpr)", "train/loss (loss=mse)"] and titles[2] == "val/ndcg@10"
    bpr_panel = curves.axes[titles.index("train/loss (loss=bpr)")]
    assert len(bpr_panel.lines) == 1  # only the BPR row's curve

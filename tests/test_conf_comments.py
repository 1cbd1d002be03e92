"""Defaults are chosen on validation only: no comment in conf/ or in a family or loss module justifies a value
with a test figure (a test metric next to a number). Test metrics are reported, never tuned on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: "test NDCG@10 0.073", "test RMSE ~0.95", "test/ndcg@10 0.207": a test metric followed closely by a figure.
TEST_FIGURE = re.compile(r"\btest[ /](?:ndcg|rmse|recall|mae|hit_rate|mrr|precision)\S*[^.;\n]{0,30}?\d\.\d", re.I)
FILES = sorted([*ROOT.glob("conf/**/*.yaml"), *ROOT.glob("src/recarena/models/*.py"), *ROOT.glob("src/recarena/losses/*.py")])


def test_the_pattern_catches_a_test_figure() -> None:
    assert TEST_FIGURE.search("# lifts test NDCG@10 from 0.176 to 0.207 on seed 42")
    assert TEST_FIGURE.search("(ML-100K random split: test RMSE ~0.95 -> ~0.93)")
    assert not TEST_FIGURE.search("# validation NDCG@10 0.157 -> 0.180; the test set is reported, not tuned on")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_value_is_justified_by_a_test_figure(path: Path) -> None:
    hits = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if TEST_FIGURE.search(line)]  # fmt: skip
    assert not hits, "cite a validation figure instead:\n" + "\n".join(hits)

"""Pure-torch building blocks of full-catalog ranking, on whatever device the batch lives on.

A batch is one user chunk (see :mod:`recarena.data.heldout` for the contract). Everything here is
vectorised over the chunk. The hot path never builds a dense ``(B, n_items)`` mask: excluded items are written
as -inf straight into the score copy from the sparse (row, item) pairs, and relevance is looked up in the
sorted held-out pairs, so a chunk costs one copy and one ``topk`` over the scores (at ML-25M's catalogue the
two dense masks and their fills were 45% of the evaluator's time).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

#: Item index returned by :func:`topk_items` for a top-K position that holds no rankable item
#: (the user has fewer than K non-excluded items, or K exceeds the catalog). Never a hit.
NO_ITEM = -1

#: What a ranking must leave out: a dense ``(B, n_items)`` bool mask, or the sparse ``(rows, items)`` pairs of a
#: batch (``excl_row``, ``excl_item``), which the evaluator uses (no chunk-sized mask to fill).
Exclusion = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b``, written into ``out`` (and returned) when given, computed in ``out``'s dtype.

    The evaluator hands every chunk's ``score_all`` the same float32 block: a fresh ``(B, n_items)`` result is a
    new allocation of up to 256 MiB per chunk, which on CPU the allocator maps from the OS and faults in page by
    page (at ML-25M's 62,423 items, 2 threads: 39 s of matmul per 160k users fresh, 21 s into one reused block).
    An ``out=`` product is outside autocast, so this last product is float32 under ``bf16-mixed`` too. Evaluation
    only: an ``out=`` op takes no gradient (the evaluator runs under ``no_grad``).
    """
    if out is None:
        return a @ b
    return torch.matmul(a.to(out.dtype), b.to(out.dtype), out=out)


def dense_masks(
    batch: Mapping[str, torch.Tensor], n_items: int, relevance_threshold: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(exclude, relevant)`` bool masks of shape ``(B, n_items)`` for one chunk.

    ``exclude[r, i]`` is True when item ``i`` must not be ranked for chunk row ``r``. ``relevant[r, i]`` is
    True when ``i`` is a held-out item of row ``r`` with rating ``>= relevance_threshold``; with
    ``relevance_threshold=None`` every held-out item is relevant. Duplicate pairs collapse to one True.
    """
    exclude = exclusion_mask(batch, n_items)
    device, n_rows = exclude.device, exclude.shape[0]
    held_row, held_item = batch["held_row"], batch["held_item"]
    if relevance_threshold is not None:
        keep = batch["held_rating"] >= relevance_threshold
        held_row, held_item = held_row[keep], held_item[keep]
    relevant = torch.zeros((n_rows, n_items), dtype=torch.bool, device=device)
    relevant.index_put_((held_row, held_item), torch.ones((), dtype=torch.bool, device=device))
    return exclude, relevant


def exclusion_mask(batch: Mapping[str, torch.Tensor], n_items: int) -> torch.Tensor:
    """``(B, n_items)`` bool, True where item ``i`` must not be ranked for chunk row ``r`` (``excl_row/excl_item``)."""
    users = batch["users"]
    exclude = torch.zeros((users.shape[0], n_items), dtype=torch.bool, device=users.device)
    exclude.index_put_((batch["excl_row"], batch["excl_item"]), torch.ones((), dtype=torch.bool, device=users.device))
    return exclude


def exclusion_pairs(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's excluded (row, item) pairs, as :func:`topk_items` takes them."""
    return batch["excl_row"], batch["excl_item"]


def _fill(target: torch.Tensor, exclude: Exclusion, value: float | int) -> None:
    """Write ``value`` into ``target`` (B, n_items) where ``exclude`` says, in place."""
    if isinstance(exclude, tuple):
        target.index_put_(exclude, torch.tensor(value, dtype=target.dtype, device=target.device))
    else:
        target.masked_fill_(exclude, value)


def _exclusion_of_rows(exclude: Exclusion, rows: torch.Tensor, n_rows: int) -> Exclusion:
    """The exclusion of ``rows`` (ascending row indices of a ``n_rows``-row chunk), renumbered 0..len(rows)-1."""
    if not isinstance(exclude, tuple):
        return exclude[rows]
    pair_rows, pair_items = exclude
    new_row = torch.full((n_rows,), -1, dtype=torch.int64, device=rows.device)
    new_row[rows] = torch.arange(len(rows), device=rows.device)
    mapped = new_row[pair_rows]
    keep = mapped >= 0
    return mapped[keep], pair_items[keep]


def in_sorted(keys: torch.Tensor, sorted_keys: torch.Tensor) -> torch.Tensor:
    """Bool of ``keys``' shape: whether each key is in ``sorted_keys`` (1-D, ascending), by binary search."""
    if not len(sorted_keys):
        return torch.zeros_like(keys, dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, keys).clamp_(max=len(sorted_keys) - 1)
    return sorted_keys[at] == keys


def _ordered_int(scores: torch.Tensor) -> torch.Tensor:
    """Map scores to int64 keys that compare exactly like the scores do as float32.

    IEEE-754 bit patterns of non-negative floats already sort like integers; for negative floats (sign bit
    set, negative as int32) the magnitude bits run backwards, so flipping the 31 low bits restores the
    order (``bits ^ ((bits >> 31) & 0x7FFFFFFF)``: the arithmetic shift is -1 for negatives, 0 otherwise).
    Distinct float32 values get distinct keys in the same order. ``+ 0.0`` turns -0.0 into +0.0 first so
    the two zeros tie, as they compare equal; NaN is mapped to -inf (the lowest rankable score) so a broken
    model gives deterministic lists rather than NaN-first ones.
    """
    s = scores.to(torch.float32) + 0.0  # always a fresh tensor, safe to modify in place
    s.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    bits = s.view(torch.int32)
    bits.bitwise_xor_(bits.bitwise_right_shift(31).bitwise_and_(0x7FFFFFFF))
    return bits.to(torch.int64)


def seeded_tie_rank(n_items: int, seed: int) -> torch.Tensor:
    """``(n_items,)`` int64: a seeded random permutation giving each item its place among equal scores.

    Breaking ties by item index would favour whatever the catalogue's numbering happens to correlate with, and
    a family whose scores tie often (popularity, a sparse neighbourhood, an untrained model) would inherit it. A random order drawn from the run's seed
    is the same for every family of that seed, so paired comparisons stay paired. The generator is torch's
    CPU Mersenne Twister, so the order is the same on every machine and device.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(int(n_items), generator=generator)


def topk_items(
    scores: torch.Tensor, exclude: Exclusion, k: int, tie_rank: torch.Tensor | None = None, overwrite: bool = False
) -> torch.Tensor:
    """Top-``k`` items per row, best first, as a ``(B, k)`` int64 tensor of item indices.

    Order: higher score first; equal scores (as float32) by lower ``tie_rank`` (``(n_items,)``, a permutation of
    ``0..n_items-1``, e.g. :func:`seeded_tie_rank`; None: by lower item index) -- exact and deterministic on
    every device; see :func:`topk_items_exact`. Fast path: ``torch.topk`` on the float scores orders distinct
    values exactly and leaves only equal values in an unspecified order, so a row whose best ``k + 1`` values
    are all distinct and finite has exactly one correct answer and topk found it. The remaining rows (ties,
    excluded or non-finite values within reach of the top k) are recomputed with the exact integer keys. For a
    learned model that is a handful of rows, and the (B, n_items) int64 key tensor -- the cost of the exact
    method at ML-25M scale -- is built only for them.

    ``overwrite=True``: ``scores`` is float32 scratch the caller gives up (the evaluator's scores block, which
    ``score_all`` wrote); excluded items are written into it as -inf instead of into a copy, which saves a pass over the chunk
    (and, for a freshly allocated copy, its page faults).
    """
    _check_topk_args(scores, exclude, k)
    n_items = scores.shape[1]
    if k + 1 > n_items:
        return topk_items_exact(scores, exclude, k, tie_rank)
    masked = scores if overwrite and scores.dtype == torch.float32 else scores.to(torch.float32, copy=True)
    _fill(masked, exclude, float("-inf"))
    values, top = torch.topk(masked, k + 1, dim=1, largest=True, sorted=True)
    # NaN compares unequal to itself, so check finiteness too: NaN, +-inf and excluded items all go exact.
    ambiguous = (values[:, 1:] == values[:, :-1]).any(dim=1) | ~torch.isfinite(values).all(dim=1)
    top = top[:, :k].contiguous()
    rows = ambiguous.nonzero().squeeze(1)
    if rows.numel():
        top[rows] = topk_items_exact(scores[rows], _exclusion_of_rows(exclude, rows, len(scores)), k, tie_rank)
    return top


def _check_topk_args(scores: torch.Tensor, exclude: Exclusion, k: int) -> None:
    dense = not isinstance(exclude, tuple)
    if scores.ndim != 2 or (dense and exclude.shape != scores.shape):
        shape = tuple(exclude.shape) if dense else "(rows, items) pairs"
        raise ValueError(f"scores must be (B, n_items) and a dense exclude the same shape, got {tuple(scores.shape)} "
                         f"and {shape}")  # fmt: skip
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def topk_items_exact(
    scores: torch.Tensor, exclude: Exclusion, k: int, tie_rank: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`topk_items` by exact integer keys for every row. ``torch.topk`` gives no tie order, so each
    score is turned into the integer key
    ``ordered(score) * 2**b + (2**b - 1 - tie_rank[item])`` with ``b`` bits for item indices: the key order is
    the lexicographic order (score desc, tie rank asc), the keys are distinct (tie ranks are a permutation), and because ``ordered`` is strictly
    order-preserving on float32 values, distinct float32 scores can never be reordered (as adding a small
    epsilon to the floats could). ``topk`` on these int64 keys is therefore exact. Scores in another dtype are
    compared after conversion to float32.

    Excluded items get a key below every real key; positions that fall on one (the user has fewer than
    ``k`` rankable items), and positions past the catalog when ``k > n_items``, hold :data:`NO_ITEM` (-1).
    """
    _check_topk_args(scores, exclude, k)
    n_rows, n_items = scores.shape
    bits = max(1, (n_items - 1).bit_length())
    # |ordered| <= 2**31, so |key| < 2**(31 + bits) <= 2**62 for any catalog below 2**31 items: no overflow,
    # and the sentinel below stays strictly lower than every real key.
    if tie_rank is None:
        tie_rank = torch.arange(n_items, dtype=torch.int64)
    elif tie_rank.shape != (n_items,):
        raise ValueError(f"tie_rank must be ({n_items},), got {tuple(tie_rank.shape)}")
    tie_break = (2**bits - 1) - tie_rank.to(device=scores.device, dtype=torch.int64)
    # In place: a chunk holds up to ~64M cells, so each int64 temporary is ~0.5 GiB.
    keys = _ordered_int(scores).mul_(2**bits).add_(tie_break)
    sentinel = torch.iinfo(torch.int64).min
    _fill(keys, exclude, sentinel)
    k_eff = min(k, n_items)
    top_keys, top = torch.topk(keys, k_eff, dim=1, largest=True, sorted=True)
    top = top.masked_fill(top_keys == sentinel, NO_ITEM)
    if k_eff < k:
        pad = torch.full((n_rows, k - k_eff), NO_ITEM, dtype=torch.int64, device=scores.device)
        top = torch.cat([top, pad], dim=1)
    return top

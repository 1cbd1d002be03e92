"""Exact, vectorised triplet mining over descriptor overlaps and co-likes (the engine of recarena.data.triplets).

``overlap(a, j)`` = descriptors items a and j share = ``(X X^T)[a, j]``. Dense, that is n_items^2 cells per pass
(3.6e9 for 60k items); as one sparse product it costs the sum over descriptors of (items holding it)^2, which a few
very common descriptors dominate (a decade held by half the catalogue, Drama). So the descriptors are split:

- the F most common (F <= 62) become an int64 bit signature per item; items with equal signatures form a group,
  and two groups share ``tab[g, h] = popcount(sig_g & sig_h)`` common descriptors (a G x G table, G <= 8192);
- the other, rare, ones go through a sparse product that is cheap by construction: the items sharing a rare
  descriptor with the anchor are its *entries*, listed with their full overlap.

F is chosen to minimise the estimated work. Every other item j has overlap ``tab[group(a), group(j)]``, so per
anchor the number of candidates at each overlap value v is ``pool[group(a), v]`` (items whose group shares v common
descriptors with the anchor's) minus its entries, itself and its picked positives at that value: the largest or
smallest overlap under a bound and how many items reach it follow without touching the other items. A uniformly
random one is then drawn: a random tied entry, or a random member of the pool, redrawn while it is excluded.

Within a chunk of anchors, a dense (anchors x items) table says which item is which entry and which is still a
free pool candidate: it costs a fixed number of cells, where sorting the entries to search them cost more.
Chunks are independent (each draws from its own seeded generator) and are mined by two threads.

Co-likes ``C = B B^T`` (B: items x users, positive training ratings) are sparse; positives are per-row maxima over
its non-zeros, ties at random.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Anchors per chunk: bounds a chunk's sparse products (entries, co-likes) to about this many cells per anchor row.
CHUNK_CELLS = 1 << 24
#: Groups cap the (G, G) tables at ~11 bytes a cell (< 0.8 GB); more groups = more common bits = fewer entries.
MAX_GROUPS, MAX_BITS = 8192, 62
INF = 1 << 40
_BYTES = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _index_dtype(bound: int) -> type:
    """The smaller integer type that holds values up to ``bound`` (halves the group tables' memory)."""
    return np.int32 if bound < np.iinfo(np.int32).max else np.int64


def popcount(v: np.ndarray) -> np.ndarray:
    """Set bits of each int64 (numpy >= 2 has it built in)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(v).astype(np.int64)
    return _BYTES[v.view(np.uint8).reshape(*v.shape, 8)].sum(-1)


class Groups:
    """Descriptors ``x`` (n x V) split into common ones (signatures, groups, pools) and rare ones (CSR)."""

    def __init__(self, x: sp.csr_matrix) -> None:
        n = self.n = x.shape[0]
        held = np.bincount(x.indices, minlength=x.shape[1])  # items per descriptor
        order = np.argsort(-held, kind="stable")
        best = (np.inf, order[:0], np.zeros(n, np.int64))
        for f in sorted({min(f, x.shape[1]) for f in (1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 36, 40, 48, 56, MAX_BITS)}):
            sig = (x[:, order[:f]].toarray().astype(np.int64) << np.arange(f)).sum(1)
            n_groups = len(np.unique(sig))
            cost = 4.0 * n_groups**2 + 10.0 * float((held[order[f:]].astype(np.float64) ** 2).sum())
            if n_groups <= MAX_GROUPS and cost < best[0]:
                best = (cost, order[:f], sig)
        rare = np.ones(x.shape[1], dtype=bool)
        rare[best[1]] = False
        self.n_bits = len(best[1])
        self.rare = x[:, rare].tocsr()
        self.rare_t = self.rare.T.tocsr()
        sig_g, self.gid = np.unique(best[2], return_inverse=True)  # (G,), (n,)
        self.count = np.bincount(self.gid)  # (G,) members per group
        self.members = np.argsort(self.gid, kind="stable")  # items, group by group
        self.first = np.cumsum(self.count) - self.count  # (G,) where each group starts in members
        g, width = len(sig_g), self.n_bits + 1
        self.tab = popcount(sig_g[:, None] & sig_g[None, :]).astype(np.int8)  # (G, G) common descriptors shared
        # Per anchor group, the groups sorted by shared value with running member counts: the pool of a value is
        # one contiguous run, its size a difference and its p-th member a binary search.
        self.by_value = np.argsort(self.tab, axis=1, kind="stable").astype(np.int16)  # (G, G), G <= 2^15
        self.running = np.cumsum(self.count[self.by_value], axis=1, dtype=_index_dtype(n))  # (G, G) members so far
        per_value = np.bincount((np.arange(g)[:, None] * width + self.tab).ravel(), minlength=g * width)
        start = np.cumsum(per_value.reshape(g, width), axis=1) - per_value.reshape(g, width)  # (G, F+1)
        before = np.concatenate([np.zeros((g, 1), np.int64), self.running], axis=1)
        self.base = np.take_along_axis(before, start, axis=1)  # (G, F+1) members before each value's run
        self.pool = np.diff(np.c_[self.base, np.full(g, n)], axis=1)  # (G, F+1) items sharing each value
        offsets = (np.arange(g) * (n + 1)).astype(_index_dtype(g * (n + 1)))
        self.flat = (self.running + offsets[:, None]).ravel()  # rows stacked, increasing

    def member(self, group: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The p-th item in ``group``'s layout of the catalogue (groups by increasing shared value, so a value's
        pool is the run ``base[group, v] <= p < base[group, v] + pool[group, v]``); group, p: (m,)."""
        query = (group * (self.n + 1) + p).astype(self.flat.dtype)  # same dtype, or numpy casts all of flat per call
        at = np.searchsorted(self.flat, query, side="right")  # first position past p
        row, col = at // len(self.count), at % len(self.count)
        h = self.by_value[row, col]
        return self.members[self.first[h] + p - (self.running[row, col] - self.count[h])]


class Chunk:
    """Overlaps of anchors ``start:stop`` with every item: candidates per overlap value, plus the listed entries."""

    #: Random pool draws before the exact listing (each round keeps only the draws that hit a taken item).
    REJECTION_ROUNDS = 16

    def __init__(self, g: Groups, start: int, stop: int, rng: np.random.Generator) -> None:
        self.g, self.rng = g, rng
        self.anchors = np.arange(start, stop)
        self.rows, self.group = np.arange(stop - start), g.gid[self.anchors]
        c = stop - start
        shared = g.rare[start:stop] @ g.rare_t  # (c, n) rare descriptors shared; indices unsorted within rows
        r = np.repeat(self.rows.astype(np.int32), np.diff(shared.indptr))  # row-major: er stays sorted
        keep = shared.indices != self.anchors[r]
        self.er, self.ej = r[keep], shared.indices[keep]
        # Dense (c, n) lookups cost CHUNK_CELLS cells, far less than sorting the entries to binary-search them:
        # the entry of each (row, item) (-1: none), and whether a non-entry is still a pool candidate.
        self.entry = np.full((c, g.n), -1, dtype=np.int32)
        self.entry[self.er, self.ej] = np.arange(len(self.er), dtype=np.int32)
        self.free = self.entry < 0
        self.free[self.rows, self.anchors] = False
        common = g.tab[self.group[self.er], g.gid[self.ej]]
        self.ov = shared.data[keep].astype(np.int16) + common  # (E,) full overlap of each entry
        self.usable = np.ones(len(self.er), dtype=bool)
        self.width = max(g.n_bits + 1, int(self.ov.max(initial=0)) + 1)  # overlap values 0 .. width-1
        self.pooled = np.zeros((len(self.rows), self.width), dtype=np.int64)  # (c, W) non-entry candidates
        self.pooled[:, : g.n_bits + 1] = g.pool[self.group]
        listed = np.bincount(self.er * self.width + common, minlength=self.pooled.size)
        self.pooled -= listed.reshape(self.pooled.shape)  # entries are counted with their own overlap
        self.pooled[self.rows, g.tab[self.group, self.group]] -= 1  # never the anchor itself
        self._index()

    def _index(self) -> None:
        """Entries sorted by (row, overlap), and their count per (row, value)."""
        cell = self.er * self.width + self.ov
        # A stable sort of 16-bit keys is numpy's radix sort (linear); chunks are sized so the keys nearly always fit.
        small = self.pooled.size <= np.iinfo(np.uint16).max
        self.by_cell = np.argsort(cell.astype(np.uint16) if small else cell, kind="stable")
        self.cells = cell[self.by_cell]
        self.listed = np.bincount(cell, minlength=self.pooled.size).reshape(self.pooled.shape)  # (c, W)

    def overlap(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        at = self.entry[rows, items]
        listed = self.ov[np.maximum(at, 0)] if len(self.ov) else 0
        return np.where(at >= 0, listed, self.g.tab[self.group[rows], self.g.gid[items]]).astype(np.int64)

    def exclude(self, rows: np.ndarray, items: np.ndarray) -> None:
        """Picked positives stop being candidates of their row."""
        at = self.entry[rows, items]
        if (at >= 0).any():  # drop them from the sorted entries (one compaction; no new sort)
            self.usable[at[at >= 0]] = False
            keep = self.usable[self.by_cell]
            np.subtract.at(self.listed.reshape(-1), self.cells[~keep], 1)
            self.cells, self.by_cell = self.cells[keep], self.by_cell[keep]
        r, j = rows[at < 0], items[at < 0]
        np.subtract.at(self.pooled, (r, self.g.tab[self.group[r], self.g.gid[j]]), 1)
        self.free[r, j] = False

    def pick(self, rows: np.ndarray, bound: np.ndarray, largest: bool | np.ndarray):
        """For each (row, bound[, largest]) (m,): a uniformly random candidate of the row with the largest (or
        smallest) overlap below the bound. Returns items (m,), their overlap (m,), found (m,)."""
        count = self.pooled[rows] + self.listed[rows]  # (m, W) candidates per overlap value
        ok = (count > 0) & (np.arange(self.width) < bound[:, None])
        found = ok.any(axis=1)
        target = np.where(largest, self.width - 1 - ok[:, ::-1].argmax(axis=1), ok.argmax(axis=1))  # (m,)
        n_listed, n_pooled = self.listed[rows, target], self.pooled[rows, target]
        draw = (self.rng.random(len(rows)) * (n_listed + n_pooled)).astype(np.int64)
        items = np.full(len(rows), -1, dtype=np.int64)
        listed = found & (draw < n_listed)  # the draw-th usable entry of the row at that value...
        at = np.searchsorted(self.cells, rows[listed] * self.width + target[listed]) + draw[listed]
        items[listed] = self.ej[self.by_cell[at]]
        todo = np.flatnonzero(found & ~listed)  # ... else a random free pool member: by rejection,
        for _ in range(self.REJECTION_ROUNDS):  # a loop over rounds, not items
            if not len(todo):
                return items, target, found
            size = self.g.pool[self.group[rows[todo]], target[todo]]
            offset = self.g.base[self.group[rows[todo]], target[todo]]
            cand = self.g.member(self.group[rows[todo]], offset + (self.rng.random(len(todo)) * size).astype(np.int64))
            free = self._free(rows[todo], cand)
            items[todo[free]] = cand[free]
            todo = todo[~free]
        # ... and for pools still missing after that (nearly all taken), exactly: list them, draw a free one.
        grp, value = self.group[rows[todo]], target[todo]
        size = self.g.pool[grp, value]
        seg = np.repeat(np.arange(len(todo)), size)
        local = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        cand = self.g.member(grp[seg], self.g.base[grp, value][seg] + local)
        free = self._free(rows[todo][seg], cand)
        seen = np.cumsum(free)
        rank = seen - np.r_[0, seen][np.cumsum(size) - size][seg]
        t = (self.rng.random(len(todo)) * np.bincount(seg[free], minlength=len(todo))).astype(np.int64)
        hit = free & (rank == t[seg] + 1)
        items[todo[seg[hit]]] = cand[hit]
        return items, target, found

    def _free(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each item is a pool candidate of its row: not the anchor, an entry or a picked positive."""
        return self.free[rows, items]


def top_co_liked(likes: sp.csr_matrix, anchors: np.ndarray, k: int, rng: np.random.Generator):
    """The ``k`` items co-liked most often with each anchor (ties at random), from ``likes`` (c, n) co-like counts.

    Returns positives (c, k) and their counts (c, k) (0 where the anchor has fewer co-liked items), and the sorted
    keys ``row * n + item`` (S,) with counts (S,) of every pair co-liked at least as often as a row's k-th positive:
    any item co-liked as often as one of the positives is among them."""
    c, n = len(anchors), likes.shape[1]
    r = np.repeat(np.arange(c), np.diff(likes.indptr))
    keep = likes.indices != anchors[r]
    r, j, v = r[keep], likes.indices[keep].astype(np.int64), likes.data[keep].astype(np.int64)
    # Keep only what can make a row's top k: counts (capped at 255) >= the row's k-th largest, from a histogram.
    capped = np.minimum(v, 255)
    above = np.cumsum(np.bincount(r * 256 + capped, minlength=c * 256).reshape(c, 256)[:, ::-1], axis=1)[:, ::-1]
    cut = np.maximum((above >= k).sum(axis=1) - 1, 0)  # (c,) the largest count with >= k entries at or above it
    keep = capped >= cut[r]
    r, j, v = r[keep], j[keep], v[keep]
    order = np.lexsort((-(v + 0.5 * rng.random(len(v))), r))  # by row, most co-liked first, ties at random
    r, j, v = r[order], j[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r)  # position within its row
    top = rank < k
    items, counts = np.zeros((c, k), np.int64), np.zeros((c, k), np.int64)
    items[r[top], rank[top]], counts[r[top], rank[top]] = j[top], v[top]
    keys = r * n + j
    by_key = np.argsort(keys)
    return items, counts, keys[by_key], v[by_key]

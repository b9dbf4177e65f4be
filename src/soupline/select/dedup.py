"""Near-duplicates in the pool: the candidates left once every point that nearly copies an earlier pool point
(`select.dedup_threshold`) or a validation or test text (`select.heldout_dedup_threshold`) is dropped, by cosine
on the L2-normalised embeddings, and how to loosen such a threshold when it leaves too few."""

from __future__ import annotations

import numpy as np


DEDUP_MAX_PAIRS = 1 << 24
SLACK = 1e-6  # float32 inner products of two copies of one text can fall just below 1.0


def dedup_candidates(x: np.ndarray, threshold: float, max_pairs: int = DEDUP_MAX_PAIRS,
                     segments: int = 8) -> np.ndarray:
    """Indices kept after dropping every point with cosine >= threshold to an earlier kept point.

    A row only drops later rows, so each row is searched against the rows from its segment's start on (the pool
    cut into `segments` equal parts, one index per part): about 0.56 of the n^2 products of searching the whole
    pool for every row, with the same pairs (2x faster at 200k, where this search was most of the select stage).
    The neighbours are searched for a block of rows at a time (at most `max_pairs` / that index's size, and only
    the rows still kept), so memory stays bounded when a pool has many near-copies: searching every row at once
    held every pair within the threshold (a block of 10,000 copies of one text: 10^8 pairs, 1.2 GB; 23 GB at 56,000
    similar texts). An exact copy of an earlier row is always dropped (the earlier row is kept, or dropped by a
    kept row that the copy is as near), so the search runs on each distinct row's first occurrence alone: the same
    points kept, and (1 - copies)^2 of the products (a pool with 30 % copies: half)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    firsts = _first_occurrences(x, threshold)
    if firsts is None:
        return _greedy_dedup(x, threshold, max_pairs, segments)
    return firsts[_greedy_dedup(x[firsts], threshold, max_pairs, segments)]


def _first_occurrences(x: np.ndarray, threshold: float, chunk: int = 4096) -> np.ndarray | None:
    """The index of each distinct row's first occurrence, in order; None when no row repeats, or when a row is too
    short for a copy of it to reach `threshold` (the search then decides, as it did before: such a copy is kept).
    Rows are sorted by their bytes and compared with the row before, a chunk at a time (np.unique on 200k x 384 rows
    took 0.8 GB more)."""
    if len(x) < 2 or (np.einsum("ij,ij->i", x, x) < float(threshold) - SLACK).any():
        return None
    perm = np.argsort(x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel(), kind="stable")
    repeat = np.zeros(len(x), dtype=bool)  # in sorted order: the row equals the one before it
    for a in range(1, len(x), chunk):
        b = min(len(x), a + chunk)
        repeat[a:b] = (x[perm[a:b]].view(np.uint32) == x[perm[a - 1:b - 1]].view(np.uint32)).all(axis=1)
    return np.sort(perm[~repeat]) if repeat.any() else None


def _greedy_dedup(x: np.ndarray, threshold: float, max_pairs: int, segments: int) -> np.ndarray:
    """`dedup_candidates`' search on rows `x` (float32, contiguous)."""
    import faiss

    dropped = np.zeros(len(x), dtype=bool)
    bounds = np.unique(np.linspace(0, len(x), segments + 1).astype(int))
    for first, end in zip(bounds[:-1], bounds[1:]):
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[first:])
        step = max(1, int(max_pairs) // (len(x) - first))
        for start in range(first, end, step):
            rows = np.arange(start, min(end, start + step))
            rows = rows[~dropped[rows]]  # a dropped row's neighbours are never used
            if not len(rows):
                continue
            lims, _, nbrs = index.range_search(x[rows], float(threshold) - SLACK)
            nbrs += first
            for j, i in enumerate(rows):
                if not dropped[i]:
                    near = nbrs[lims[j]:lims[j + 1]]
                    dropped[near[near > i]] = True
    return np.flatnonzero(~dropped)


def nearest_cosine(x: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """Each pool point's cosine to its nearest held-out point (rows L2-normalised)."""
    import faiss

    index = faiss.IndexFlatIP(heldout.shape[1])
    index.add(np.ascontiguousarray(heldout, dtype=np.float32))
    sims, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return sims[:, 0]


def within(cosines: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the cosines at or above `threshold`, less `SLACK`: every cosine threshold of select's reads so."""
    return cosines >= float(threshold) - SLACK


def heldout_twins(x: np.ndarray, heldout: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the pool points with cosine >= threshold to some held-out point (a validation or test
    text): training on such a copy makes the held-out score measure memory, not generalisation."""
    return within(nearest_cosine(x, heldout), threshold)


def repeated_picks(texts: list[str], labels: np.ndarray, idx: np.ndarray) -> tuple[int, int]:
    """How many picks repeat the text of another pick (each text's picks beyond its first; the same text as prepare
    counts duplicates: whitespace, case and Unicode form ignored), and of those texts how many the picks carry under
    more than one label. A pool's exact copies share an embedding and so every score: a method can pick both, a
    budget spent twice on one text (a label-noise pair when the labels differ)."""
    from soupline.data import loose_key  # pandas' import, paid only when a selection is checked

    seen: dict[str, set] = {}
    for i in np.asarray(idx).tolist():
        seen.setdefault(loose_key(texts[i]), set()).add(int(labels[i]))
    return len(idx) - len(seen), sum(len(v) > 1 for v in seen.values())


def repeats_note(info: dict, dedup_threshold: float | None) -> str:
    """What a selection's `info.repeated_picks` (and `repeated_picks_conflicting_labels`) say, and the setting that
    stops them: the select stage's warning and the report's sentence."""
    repeats, conflicts = info["repeated_picks"], info["repeated_picks_conflicting_labels"]
    fix = "set select.dedup_threshold: 1.0 to keep one copy of each" if dedup_threshold is None else \
        "prepare.duplicates: drop removes the copies from the data"
    return (f"the selection holds {repeats} pick(s) that repeat another pick's text"
            + (f" ({conflicts} text(s) picked under different labels)" if conflicts else "")
            + f": the pool has exact copies, which tie on every score; {fix}")


def loosen(setting: str, value: float) -> str:
    """How to let more examples through the cosine threshold `setting` (a params path) set to `value`: raise it or
    turn it off, or, at 1.0, where it drops exact copies only and cannot be raised, turn it off."""
    return f"raise {setting} or set it to null" if value < 1 else \
        f"set {setting} to null (at 1.0 it drops exact copies only)"

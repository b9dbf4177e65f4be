"""k-means diversity: k = budget centroids (faiss), keep the nearest distinct pool point to each.

Covers the embedding space evenly instead of following its density, the simplest diversity
selector and the static half of Diversify-and-Conquer.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from soupline.select.base import MethodConfig, Selection, SelectionInput, register


# faiss stores its k-means counts as C ints: a larger one is this params line, not an OverflowError from faiss
FaissCount = Annotated[int, Field(ge=1, lt=2**31)]


class KMeansConfig(MethodConfig):
    niter: FaissCount = Field(25, description="k-means iterations")
    nredo: FaissCount = Field(1, description="k-means restarts; the best objective is kept")


def kmeans_centroids(x: np.ndarray, k: int, seed: int, niter: int, nredo: int) -> np.ndarray:
    """faiss k-means on float32 rows; deterministic for a given seed, whatever the thread count.

    Copies of one row (a text that occurs twice) train as one row weighted by its copies: the same objective,
    but faiss's float32 BLAS distances to two copies differ by an ulp with the thread count (`OMP_NUM_THREADS`),
    so copies split between centroids one way with 1 thread and another with 2 (bbcnews, 61 copied texts in a
    1,558-text pool: other centroids at k >= 600). Fewer distinct rows than k: trained on every row, as before."""
    import faiss  # here, not at the top: `soupline.config` imports every method for its params section

    x = np.ascontiguousarray(x, dtype=np.float32)
    weights = None
    _, first, counts = np.unique(x, axis=0, return_index=True, return_counts=True)
    if len(first) < len(x) and len(first) >= k:
        order = np.argsort(first)  # the distinct rows in pool order
        x, weights = x[first[order]], counts[order].astype(np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(x, weights=weights)
    return km.centroids


def exact_top(x: np.ndarray, index, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `m` pool rows of highest inner product, best first, ties to the lower index, and their
    products: (indices, similarities), both (len(queries), min(m, n)).

    faiss finds candidates in float32 BLAS, whose products move by an ulp or two with the thread count
    (`OMP_NUM_THREADS`) and a row's place in a block, so near-ties (and copies of one text) came back in another
    order: kmeans picked other points with 1 thread than with 2. Here the candidates are scored again in float64 (a
    float32 product is exact in float64, each pair summed in one fixed order) and ranked by that score, then the row
    index; a row's top `m` counts only once no row faiss left out can reach it (its m-th score clears faiss's last
    by more than float32's rounding bound), else that row searches deeper. The result is the same whatever the
    threads or the search depth."""
    n, d = x.shape
    q = np.ascontiguousarray(queries, dtype=np.float32)
    m = min(m, n)
    # float32 inner-product rounding bound: d * 2^-24 * |q| * |x| (twice, for safety)
    slack = 2 * d * 2.0 ** -24 * float(np.linalg.norm(q, axis=1).max(initial=0)) * \
        float(np.linalg.norm(x, axis=1).max(initial=0)) + 1e-12
    top_i = np.zeros((len(q), m), dtype=np.int64)
    top_s = np.zeros((len(q), m))
    rows, depth = np.arange(len(q)), min(n, 2 * m)
    while len(rows):
        d32, cand = index.search(q[rows], depth)
        cand = np.where(cand < 0, 0, cand)  # faiss pads with -1 only past n, which depth never exceeds
        flat, owner = cand.ravel(), np.repeat(rows, depth)
        scores = np.empty(len(flat))
        step = max(1, (1 << 22) // d)  # float64 products of at most 32 MB at a time
        for s in range(0, len(flat), step):
            e = slice(s, s + step)
            scores[e] = (q[owner[e]].astype(np.float64) * x[flat[e]]).sum(-1)
        scores = scores.reshape(cand.shape)
        order = np.lexsort((cand, -scores), axis=1)[:, :m]
        cand, scores = np.take_along_axis(cand, order, 1), np.take_along_axis(scores, order, 1)
        sure = np.full(len(rows), True) if depth >= n else scores[:, -1] > d32[:, -1] + slack
        top_i[rows[sure]], top_s[rows[sure]] = cand[sure], scores[sure]
        rows, depth = rows[~sure], min(n, depth * 4)
    return top_i, top_s


def nearest_distinct(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign each centroid a different pool point, nearest first; returns (indices, similarity).

    Similarities are `exact_top`'s, so the picks do not depend on the thread count."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k = len(centroids)
    chosen = np.full(k, -1, dtype=np.int64)
    sims = np.zeros(k)
    taken: set[int] = set()
    pending = np.arange(k)
    m = min(x.shape[0], 16)
    while len(pending):
        i, d = exact_top(x, index, centroids[pending], m)
        # Centroids closest to some point claim first, so well-placed centroids keep their point.
        for row in np.argsort(-d[:, 0], kind="stable"):
            for sim, cand in zip(d[row], i[row]):
                if int(cand) not in taken:
                    taken.add(int(cand))
                    chosen[pending[row]], sims[pending[row]] = cand, sim
                    break
        pending = np.flatnonzero(chosen < 0)
        m = min(x.shape[0], m * 4)
    return chosen, sims


@register("kmeans", KMeansConfig)
def select(pool: SelectionInput, budget: int, seed: int, cfg: KMeansConfig) -> Selection:
    centroids = kmeans_centroids(pool.embeddings, budget, seed, cfg.niter, cfg.nredo)
    idx, sims = nearest_distinct(pool.embeddings, centroids)
    return Selection(idx, sims, {"k": budget})

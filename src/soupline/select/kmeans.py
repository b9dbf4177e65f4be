"""k-means diversity: k = budget centroids (faiss), keep the nearest distinct pool point to each.

Covers the embedding space evenly instead of following its density, the simplest diversity
selector and the static half of Diversify-and-Conquer.
"""

from __future__ import annotations

import faiss
import numpy as np
from pydantic import Field

from soupline.select.base import MethodConfig, Selection, SelectionInput, register


class KMeansConfig(MethodConfig):
    niter: int = Field(25, ge=1, description="k-means iterations")
    nredo: int = Field(1, ge=1, description="k-means restarts; the best objective is kept")


def kmeans_centroids(x: np.ndarray, k: int, seed: int, niter: int, nredo: int) -> np.ndarray:
    """faiss k-means on float32 rows; deterministic for a given seed."""
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1 << 30)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def nearest_distinct(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign each centroid a different pool point, nearest first; returns (indices, similarity)."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    k = len(centroids)
    chosen = np.full(k, -1, dtype=np.int64)
    sims = np.zeros(k)
    taken: set[int] = set()
    pending = np.arange(k)
    m = min(x.shape[0], 16)
    while len(pending):
        d, i = index.search(np.ascontiguousarray(centroids[pending]), m)
        # Centroids closest to some point claim first, so well-placed centroids keep their point.
        for row in np.argsort(-d[:, 0], kind="stable"):
            for sim, cand in zip(d[row], i[row]):
                if cand >= 0 and int(cand) not in taken:
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

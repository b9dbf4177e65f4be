"""Sentence embeddings: mean-pooled, L2-normalised, batched, cached by content.

Texts are encoded longest-first in batches padded to the batch's own longest text (the same
trick as sentence-transformers, which keeps padding waste low) and put back in input order.
The cache key is the hash of (model files, max_length, texts), so the same texts through the
same model are never encoded twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soupline.artifacts import sha256_obj, sha256_tree, write_npy


def model_fingerprint(model_path: str) -> str:
    path = Path(model_path)
    return sha256_tree(path) if path.exists() else model_path


def encode(texts: list[str], model_path: str, batch_size: int = 64, max_length: int = 128,
           device: str = "cpu", progress: bool = True) -> np.ndarray:
    """(len(texts), hidden) float32 array of mean-pooled, unit-norm embeddings."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="embed", unit="batch", disable=not progress):
            idx = order[start:start + batch_size]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
    return out


def encode_cached(texts: list[str], model_path: str, cache_dir: str | Path | None, batch_size: int = 64,
                  max_length: int = 128, device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, bool]:
    """`encode` behind a content-keyed cache; returns (embeddings, was_cache_hit)."""
    if cache_dir is None:
        return encode(texts, model_path, batch_size, max_length, device, progress), False
    key = sha256_obj({"model": model_fingerprint(model_path), "max_length": max_length, "texts": texts,
                      "pooling": "mean-l2"})
    path = Path(cache_dir) / f"{key}.npy"
    if path.exists():
        return np.load(path), True
    emb = encode(texts, model_path, batch_size, max_length, device, progress)
    write_npy(path, emb)
    return emb, False

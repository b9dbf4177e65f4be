"""Sentence embeddings: mean-pooled, L2-normalised, batched, cached by content.

Texts are encoded longest-first in batches padded to the batch's own longest text (the same
trick as sentence-transformers, which keeps padding waste low) and put back in input order.
The cache key is the hash of (model files, max_length, code, texts), so the same texts through the
same model are never encoded twice.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import cached_property
from pathlib import Path

import numpy as np

from soupline import interrupt, models
from soupline.artifacts import read_json, sha256_file, sha256_obj, sha256_tree, write_json, write_npy
from soupline.errors import SouplineError
from soupline.models import load_tokenizer


class Encoder:
    """A base model as a sentence encoder; the model loads on first use and stays loaded."""

    def __init__(self, model_path: str, batch_size: int = 64, max_length: int = 128, device: str = "cpu"):
        self.model_path, self.batch_size, self.max_length, self.device = model_path, batch_size, max_length, device

    @cached_property
    def tokenizer(self):
        """The model's tokenizer (loaded without the model: counting tokens needs no forward pass)."""
        return load_tokenizer(self.model_path)

    @cached_property
    def model(self):
        from soupline.models import load_encoder

        # in fp32 whatever dtype the checkpoint was saved in (transformers 5 keeps a bf16 checkpoint in bf16)
        return load_encoder(self.model_path).to(self.device).eval()

    @cached_property
    def fingerprint(self) -> str:
        """Identity of (model files, max_length, the code that encodes: this module and `soupline.models`, which
        loads the model): the cache key's model part. Without the code, an edit that encodes otherwise re-ran the
        embed stage (a dvc.yaml dep), and the cache served it the vectors of the code before."""
        path = Path(self.model_path)
        model = sha256_tree(path) if path.exists() else self.model_path
        code = [sha256_file(Path(module.__file__)) for module in (sys.modules[__name__], models)]
        return sha256_obj({"model": model, "max_length": self.max_length, "code": code})

    def __call__(self, texts: list[str], progress: bool = True) -> np.ndarray:
        """(len(texts), hidden) float32 array of mean-pooled, unit-norm embeddings."""
        return self.encode(texts, progress)[0]

    def encode(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, int | None]:
        """The embeddings of `texts` and how many of them are over max_length, as `count_longer` counts them (a fast
        tokenizer's truncation keeps what it cut, `overflowing`, so the count needs no second pass over the texts;
        None from a slow tokenizer, which keeps nothing). A NaN or inf vector is one line naming the model: written,
        the embed stage recorded them and select said "re-run the embed stage", which gave the same."""
        import torch
        from tqdm.auto import tqdm

        tok, model = self.tokenizer, self.model
        order = np.argsort([-len(t) for t in texts], kind="stable")
        truncated = 0
        out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="embed", unit="batch",
                              disable=not progress):
                interrupt.check()
                idx = order[start:start + self.batch_size]
                batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                            return_tensors="pt").to(self.device)
                if truncated is not None:
                    truncated = (truncated + sum(bool(e.overflowing) for e in batch.encodings)
                                 if batch.encodings is not None else None)
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        if bad := int((~np.isfinite(out).all(1)).sum()):
            raise SouplineError(f"model {self.model_path} gives NaN or inf embeddings for {bad} of {len(texts)} texts: "
                                "its weights hold NaN or inf, or its activations overflow; set model to another "
                                "checkpoint (one saved before a training run diverged)")
        return out, truncated


def count_longer(tok, texts: list[str], max_length: int, chunk: int = 1024) -> int:
    """How many of `texts` have more than `max_length` tokens of tokenizer `tok` (special tokens included),
    i.e. are truncated."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "Token indices sequence length is longer than ...": what is being counted
    try:
        return sum(int(n > max_length) for start in range(0, len(texts), chunk)
                   for n in tok(texts[start:start + chunk], truncation=False, return_length=True)["length"])
    finally:
        hf_logging.set_verbosity(verbosity)


def cache_files(texts: list[str], encoder: Encoder, cache_dir: str | Path, chunk: int = 4096) -> list[Path]:
    """The cache's two files for what `encoder` makes of `texts`: its embeddings and its count of truncated texts
    (what `soupline cache --gc` keeps for the texts a run of the current params embeds). Each is named by the sha256
    of `sha256_obj`'s JSON of the encoder and the texts, and for the embeddings the batch size too: texts are batched
    by length, and what shares a batch moves a vector's last bits (1.3e-7 on bbcnews texts of mixed lengths), so an
    entry written at another `embed.batch_size` made a split's embeddings, and kmeans' picks, depend on what this
    workspace embedded before; the count does not depend on it. The texts' JSON is made `chunk` texts at a time and
    fed to both hashes: the same names as hashing the whole JSON, which took 4 serialisations of every split on a
    run the cache served (1.7 s each for 50,000 texts of 1,700 characters) and held its string and bytes at once."""
    heads = [{"batch_size": encoder.batch_size, "encoder": encoder.fingerprint}, {"encoder": encoder.fingerprint}]
    hashes = [hashlib.sha256((json.dumps(head, sort_keys=True)[:-1] + ', "texts": [').encode()) for head in heads]
    for start in range(0, len(texts), chunk):  # "texts" sorts last: its list closes each key's JSON
        piece = ((", " if start else "") + json.dumps(texts[start:start + chunk])[1:-1]).encode()
        for h in hashes:
            h.update(piece)
    for h in hashes:
        h.update(b"]}")
    return [Path(cache_dir) / f"{h.hexdigest()}{suffix}" for h, suffix in zip(hashes, (".npy", ".truncated.json"))]


def _cached_embeddings(path: Path, n: int) -> np.ndarray | None:
    """The cache's embeddings of `n` texts at `path` (memory-mapped); None when it has none, or its entry is damaged
    (cut short, not an .npy, not one float32 row per text, a NaN or inf: on disk or by hand), which is no evidence:
    embedded again (a NaN served from here made select say "re-run the embed stage", which served it again)."""
    try:
        emb = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    ok = emb.dtype == np.float32 and emb.ndim == 2 and len(emb) == n and bool(np.isfinite(emb).all())
    return emb if ok else None


def _cached_count(path: Path) -> int | None:
    """The cache's count of truncated texts at `path`; None when it has none, or its record is damaged."""
    try:
        count = read_json(path)["truncated"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return count if type(count) is int else None


def is_cached(texts: list[str], encoder: Encoder, cache_dir: str | Path, files: list[Path] | None = None) -> bool:
    """Whether the cache holds what `encode_cached` and `count_longer_cached` make of `texts` (no model needed).
    `files`: `cache_files(texts, encoder, cache_dir)`, when the caller has them (here and below)."""
    npy, count = files or cache_files(texts, encoder, cache_dir)
    return _cached_embeddings(npy, len(texts)) is not None and _cached_count(count) is not None


def encode_cached(texts: list[str], encoder: Encoder, cache_dir: str | Path, progress: bool = True,
                  files: list[Path] | None = None) -> tuple[np.ndarray, bool]:
    """`encoder(texts)` behind a content-keyed cache; returns (embeddings, was_cache_hit). Encoding also counts the
    truncated texts, kept for `count_longer_cached`."""
    npy, count = files or cache_files(texts, encoder, cache_dir)
    if (emb := _cached_embeddings(npy, len(texts))) is not None:
        return np.array(emb), True
    emb, truncated = encoder.encode(texts, progress)
    write_npy(npy, emb)
    if truncated is not None:
        write_json(count, {"truncated": truncated})
    return emb, False


def count_longer_cached(texts: list[str], encoder: Encoder, cache_dir: str | Path,
                        files: list[Path] | None = None) -> int:
    """`count_longer` at the encoder's max_length, cached beside the embeddings (`encode_cached` writes the count
    its encoding pass made): counting re-tokenises every text whole, 70 % of an embed run the cache served on
    long texts (20,000 of 400 words: 13.6 of 19.4 s)."""
    path = (files or cache_files(texts, encoder, cache_dir))[1]
    if (count := _cached_count(path)) is not None:
        return count
    count = count_longer(encoder.tokenizer, texts, encoder.max_length)
    write_json(path, {"truncated": count})
    return count

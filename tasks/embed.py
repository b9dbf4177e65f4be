"""embed: sentence embeddings of every split (float32 .npy, rows aligned with the Parquet rows)."""

from __future__ import annotations

from soupline import embed
from soupline.artifacts import write_json, write_npy
from soupline.config import Params
from soupline.models import pick_device, resolve_model
from tasks.common import base_model, main, read_split
from tasks.layout import Layout


def run(params: Params, layout: Layout, progress: bool = True) -> dict:
    from soupline.data import SPLITS  # here: importing tasks.embed (tasks.pipeline does) imports no pandas

    texts = {name: read_split(layout, name)["text"].tolist() for name in SPLITS}
    encoder = embed.Encoder(resolve_model(params.model), params.embed.batch_size, params.embed.max_length)
    files = {name: embed.cache_files(t, encoder, layout.embed_cache) for name, t in texts.items()}  # hashed once
    # Texts to encode: the model's checks, before any work, and the device. A run the cache serves whole loads no
    # model: without them it imports neither torch nor transformers' model classes (most of such a run's time).
    if not all(embed.is_cached(t, encoder, layout.embed_cache, files[name]) for name, t in texts.items()):
        base_model(params)
        encoder.device = pick_device(params.device)
    # info.json holds only what the embeddings are (not whether the cache served them), so an embed
    # re-run that yields the same vectors leaves the stage's outputs byte-identical for DVC and the study.
    info = {"model": params.model, "max_length": params.embed.max_length, "shapes": {}, "truncated": {}}
    hits = {}
    for name in SPLITS:
        emb, hits[name] = embed.encode_cached(texts[name], encoder, layout.embed_cache, progress, files[name])
        info["truncated"][name] = embed.count_longer_cached(texts[name], encoder, layout.embed_cache, files[name])
        write_npy(layout.embedding(name), emb)
        info["shapes"][name] = list(emb.shape)
    write_json(layout.embeddings / "info.json", info)
    print(f"embed: {info['shapes']} (cache hits: {hits})")
    if any(info["truncated"].values()):
        print(f"embed: texts longer than embed.max_length={params.embed.max_length} tokens, read up to there: "
              + ", ".join(f"{k} {v} of {info['shapes'][k][0]}" for k, v in info["truncated"].items()))
    return info


if __name__ == "__main__":
    main("embed", run)

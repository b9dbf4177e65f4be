"""Embedding throughput: soupline's `embed.encode` vs `SentenceTransformer.encode`, same model/texts/batch.

    python benchmarks/embed_throughput.py [--n 512] [--batch-size 64] [--max-length 128] [--repeats 3]

Prints texts/s of both and the ratio (soupline / sentence-transformers), each the best of
`--repeats` runs measured in this process, so the machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for flag in ("n", "batch_size", "max_length", "repeats"):
        if (value := getattr(args, flag)) < 1:
            parser.error(f"--{flag.replace('_', '-')} {value}: at least 1")

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from soupline.corpora import load_builtin
    from soupline.embed import Encoder
    from soupline.models import resolve_model

    path = resolve_model("all-MiniLM-L6-v2")
    texts = load_builtin("bbcnews")["text"].tolist()[: args.n]
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = args.max_length

    def run_st():
        return st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)

    encoder = Encoder(path, args.batch_size, args.max_length, "cpu")

    def run_ours():
        return encoder(texts, progress=False)

    ours, ref = run_ours(), run_st()  # warm-up, and the outputs must agree
    cos = float(np.min(np.sum(ours * ref, axis=1)))
    t_ours, t_st = best_time(run_ours, args.repeats), best_time(run_st, args.repeats)
    print(f"texts={len(texts)} batch={args.batch_size} max_length={args.max_length}")
    print(f"sentence-transformers: {len(texts) / t_st:8.1f} texts/s")
    print(f"soupline embed:        {len(texts) / t_ours:8.1f} texts/s")
    print(f"ratio soupline/sentence-transformers: {t_st / t_ours:.3f}  (min cosine between outputs {cos:.6f})")


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)

"""Each file hashed once per process while its stat holds; the embed stage's truncation count from its encoding
pass."""

from __future__ import annotations

import os
import time

from soupline import artifacts


def test_sha256_file_reads_a_settled_file_once_and_an_edited_one_again(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    old = time.time() - 60
    os.utime(path, (old, old))
    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)  # utime moved the ctime to now: take it as settled
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(str(p)), real_open(p, *a, **k))[1])
    first = artifacts.sha256_file(path)
    assert artifacts.sha256_file(path) == first
    assert reads.count(str(path)) == 1  # the second call trusted the unchanged stat
    monkeypatch.setattr("builtins.open", real_open)
    path.write_bytes(b"b" * 1000)  # damaged in place at its size, mtime set back: ctime still moves
    os.utime(path, (old, old))
    assert artifacts.sha256_file(path) == artifacts.sha256_bytes(b"b" * 1000) != first


def test_sha256_file_rereads_a_file_changed_just_now(tmp_path):
    """A file written in the last SETTLED_NS is not trusted by its stat (coarse timestamps)."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    artifacts.sha256_file(path)
    assert os.path.abspath(path) not in artifacts._DIGESTS


def test_encoder_counts_truncated_texts_as_count_longer(tiny_model):
    from soupline.embed import Encoder, count_longer

    texts = ["word " * n for n in (3, 29, 30, 31, 200)] + ["héllo wörld " * 20, "x"]
    enc = Encoder(tiny_model, batch_size=3, max_length=32)
    emb, truncated = enc.encode(texts, progress=False)
    assert truncated == count_longer(enc.tokenizer, texts, 32) == 3
    assert emb.shape == (len(texts), 32)


def test_embed_stage_does_not_tokenize_twice(tmp_path, tiny_model, monkeypatch):
    from soupline import embed
    from tasks import embed as embed_task
    from tasks import prepare
    from tasks.layout import Layout
    from tests.conftest import make_frame, one_ingredient_params

    corpus = tmp_path / "corpus.jsonl"
    make_frame(10).to_json(corpus, orient="records", lines=True)
    params = one_ingredient_params(corpus, tiny_model)
    layout = Layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    prepare.run(params, layout)
    expected = {}
    real = embed.count_longer
    expected_calls = []
    monkeypatch.setattr(embed, "count_longer", lambda *a, **k: expected_calls.append(1) or real(*a, **k))
    info = embed_task.run(params, layout, progress=False)
    assert expected_calls == []  # counted in the encoding pass
    enc = embed.Encoder(tiny_model, 32, 32)
    for name in info["truncated"]:
        texts = embed_task.read_split(layout, name)["text"].tolist()
        expected[name] = real(enc.tokenizer, texts, 32)
    assert info["truncated"] == expected


def test_a_base_model_folder_rewritten_at_its_size_and_mtime_gets_a_new_content_hash(tmp_path, monkeypatch):
    """tasks.keys.model_content kept its own cache keyed on names, sizes and mtimes (no ctime, no inode), in front of
    sha256_file's: weights written again in place with the mtime put back (cp -p, rsync -t, touch -r) kept the old
    hash in a long-lived process (the Prefect flow, `soupline study`), and every stage after it stayed up to date."""
    from tasks.keys import model_content

    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)  # utime moved the ctime to now: take it as settled
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    before = model_content(str(tmp_path))
    st = weights.stat()
    weights.write_bytes(b"b" * 1000)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model_content(str(tmp_path)) != before

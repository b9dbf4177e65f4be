"""Each file hashed once per process while its stat holds, and once per run across processes (`shared_digests`);
the embed stage's truncation count from its encoding pass."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import pytest

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


def hashed_in(store, path, monkeypatch) -> tuple[str, int]:
    """`path`'s digest from a fresh process's view under the shared file `store`, and how often it was read."""
    monkeypatch.setattr(artifacts, "_DIGESTS", {})
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (reads.append(str(p)), real_open(p, *a, **k))[1])
    try:
        with artifacts.shared_digests(store):
            digest = artifacts.sha256_file(path)
    finally:
        monkeypatch.setattr("builtins.open", real_open)
    return digest, reads.count(str(path))


def test_shared_digests_read_a_settled_file_once_per_run_and_a_rewritten_one_again(tmp_path, monkeypatch):
    """`dvc repro`'s stages are processes of their own: each read every model the one before it had read. A file
    written again in place at its size with its mtime put back (cp -p, rsync -t), or replaced by a rename, has
    another ctime or inode: read again, its new digest shared."""
    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)  # utime moved the ctime to now: take it as settled
    store, path = tmp_path / "cache" / "sha256.txt", tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"a" * 1000), 1)
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"a" * 1000), 0)  # the file vouched
    st = path.stat()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"b" * 1000), 1)
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"b" * 1000), 0)
    (tmp_path / "new").write_bytes(b"c" * 1000)
    os.replace(tmp_path / "new", path)
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"c" * 1000), 1)


def test_shared_digests_trust_no_file_changed_within_settled_ns(tmp_path, monkeypatch):
    """On a file system whose timestamps tick coarsely (here: whole seconds), a write in the same tick leaves the
    stat as it was: a digest taken within SETTLED_NS of the last change is never shared, so a file written again
    at its size in that tick is read again."""
    real_stat = artifacts._stat_key

    def coarse(path):
        ino, dev, size, mtime, ctime = real_stat(path)
        return ino, dev, size, mtime // 10**9 * 10**9, ctime // 10**9 * 10**9

    monkeypatch.setattr(artifacts, "_stat_key", coarse)
    store, path = tmp_path / "sha256.txt", tmp_path / "weights.bin"
    while time.time_ns() % 10**9 > 5 * 10**8:  # both writes and the reads in one second
        time.sleep(0.05)
    path.write_bytes(b"a" * 1000)
    assert hashed_in(store, path, monkeypatch)[0] == artifacts.sha256_bytes(b"a" * 1000)
    before = coarse(path)
    with path.open("r+b") as f:
        f.write(b"b" * 1000)
    assert coarse(path) == before  # the same stat, other bytes
    assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"b" * 1000), 1)
    assert not store.exists()  # nothing settled: nothing shared


@pytest.mark.parametrize("damage", ["bit", "garbage", "cut", "folder"])
def test_a_damaged_shared_digests_file_is_one_warning_and_no_wrong_digest(tmp_path, monkeypatch, damage, capsys):
    from soupline.errors import one_line_warnings

    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)
    store, path = tmp_path / "sha256.txt", tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    hashed_in(store, path, monkeypatch)
    data = store.read_bytes()
    if damage == "folder":
        store.unlink()
        store.mkdir()  # unreadable as a file
    else:
        good = artifacts.sha256_bytes(b"a" * 1000).encode()
        store.write_bytes({"bit": data.replace(good, good[:-1] + (b"0" if good[-1:] != b"0" else b"1")),
                           "garbage": b"\x00\xff" * 50, "cut": data[:-20]}[damage])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    one_line_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"a" * 1000), 1)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {store}: ") and "Traceback" not in err
    if damage != "folder":  # written anew, whole
        assert hashed_in(store, path, monkeypatch) == (artifacts.sha256_bytes(b"a" * 1000), 0)


def test_shared_digests_drop_files_gone_and_the_oldest(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)
    monkeypatch.setattr(artifacts, "SHARED_KEPT", 3)
    store = tmp_path / "sha256.txt"
    files = [tmp_path / f"f{i}" for i in range(5)]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
        hashed_in(store, path, monkeypatch)
    assert list(artifacts._read_digests(store, warn=True)) == [str(p) for p in files[2:]]  # the newest 3
    files[3].unlink()
    hashed_in(store, files[0], monkeypatch)
    assert list(artifacts._read_digests(store, warn=True)) == [str(files[i]) for i in (2, 4, 0)]


WRITER = """
import sys
from pathlib import Path
from soupline import artifacts
artifacts.SETTLED_NS = 0
store, names = Path(sys.argv[1]), sys.argv[2:]
for round in range(30):
    artifacts._DIGESTS.clear()
    with artifacts.shared_digests(store):
        for name in names[round::7]:  # some new each round
            artifacts.sha256_file(name)
"""


def test_two_processes_writing_the_shared_digests_at_once_leave_it_whole_and_right(tmp_path):
    """`soupline status` beside a run writes the file as the run does: an entry may be lost (a read more), never
    wrong, and the file never half-written (a reader warned of damage: -W error)."""
    store = tmp_path / "sha256.txt"
    names = [[], []]
    for i in range(2000):  # a file of 300 kB, written in more than one block
        (path := tmp_path / f"f{i}").write_bytes(str(i).encode() * 1000)
        names[i % 2].append(str(path))
    procs = [subprocess.Popen([sys.executable, "-W", "error", "-c", WRITER, str(store), *n]) for n in names]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    entries = artifacts._read_digests(store, warn=True)
    assert entries and set(entries) <= set(names[0] + names[1])
    for name, (stat, digest) in entries.items():
        assert digest == artifacts.sha256_bytes(open(name, "rb").read()) and stat == artifacts._stat_key(name)
    assert not [p for p in tmp_path.iterdir() if artifacts.TEMP_NAME.fullmatch(p.name)]


def test_the_workspace_lock_shares_what_its_holder_hashed(tmp_path, monkeypatch):
    """Every driver (`soupline run`, a stage `dvc repro` starts, the flows) holds the lock: the file is written
    before the next can take it."""
    from tasks.common import workspace_lock
    from tasks.layout import Layout

    monkeypatch.setattr(artifacts, "SETTLED_NS", 0)
    layout = Layout(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"a" * 1000)
    with workspace_lock(layout, "soupline run"):
        artifacts.sha256_file(tmp_path / "weights.bin")
    assert list(artifacts._read_digests(layout.digests, warn=True)) == [str(tmp_path / "weights.bin")]


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

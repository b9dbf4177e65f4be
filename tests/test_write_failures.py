"""Writes that fail: a run stopped between an ingredient's two writes (curves, weights) leaves no ingredient a
later run trusts next to another run's curves; a file system that refuses a write is one line."""

import os

import pytest

import soupline.train as train_mod
from tests.test_train_soup import _train


def test_a_run_killed_while_writing_curves_leaves_no_ingredient(tiny_model, tmp_path, monkeypatch):
    def die(*args, **kwargs):
        raise KeyboardInterrupt  # stands for a SIGKILL / Ctrl-C between the two writes

    monkeypatch.setattr(train_mod, "write_curves", die)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model, tmp_path, "ing")
    assert not (tmp_path / "ing").exists()  # not built: the next run trains it and writes its curves
    monkeypatch.undo()
    _train(tiny_model, tmp_path, "ing")
    assert (tmp_path / "ing" / "train_info.json").exists() and (tmp_path / "curves-ing").is_dir()


def test_a_file_in_the_way_or_a_full_disk_is_one_line_and_other_os_errors_stay_bugs(tmp_path):
    import errno

    from soupline.artifacts import atomic_path, write_json
    from soupline.errors import SouplineError
    from tasks.common import workspace_lock
    from tasks.layout import Layout

    (tmp_path / "selections").write_text("x")  # a file where the output folder should be
    with pytest.raises(SouplineError, match="cannot write .*selection.json: File exists.*in the way"):
        write_json(tmp_path / "selections" / "selection.json", {})
    (tmp_path / "data").write_text("x")
    with pytest.raises(SouplineError, match="cannot write .*soupline.lock"):
        with workspace_lock(Layout(tmp_path), "test"):
            pass
    with pytest.raises(SouplineError, match="No space left"):
        with atomic_path(tmp_path / "out.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    if os.path.isdir("/proc/self"):  # a folder that takes no new files: mkstemp's ENOENT was a traceback
        with pytest.raises(SouplineError, match=r"^cannot write /proc/out.csv: its folder takes no new files$"):
            write_json("/proc/out.csv", {})
        with pytest.raises(SouplineError, match=r"^cannot write /proc/new/out.csv: folder /proc/new cannot be made"):
            write_json("/proc/new/out.csv", {})  # mkdir's ENOENT there was a traceback
    with pytest.raises(FileNotFoundError):  # not a write the user can fix: a bug keeps its traceback
        with atomic_path(tmp_path / "out.json"):
            raise FileNotFoundError(errno.ENOENT, "gone", "somewhere")
    assert not list(tmp_path.glob(".out.json.*"))


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    """A disk that fills up mid-write: the file keeps what it held (the bytes went to a temporary sibling, which is
    removed), so no later run reads half a JSON file."""
    import errno
    from pathlib import Path

    from soupline.artifacts import read_json, write_json
    from soupline.errors import SouplineError

    write_json(tmp_path / "metrics.json", {"accuracy": 0.9})
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[:len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(SouplineError, match="No space left"):
        write_json(tmp_path / "metrics.json", {"accuracy": 0.5, "macro_f1": 0.4})
    monkeypatch.undo()
    assert read_json(tmp_path / "metrics.json") == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_under_safetensors_or_torch_save_is_one_line_and_leaves_nothing(tmp_path):
    """The libraries that write models do not raise the OSError: safetensors names its errno in a SafetensorError's
    message, torch.save into an open file raises a RuntimeError while handling it. Both are a full disk, one line."""
    import errno
    import io

    import torch
    from safetensors import SafetensorError

    from soupline.artifacts import atomic_dir, atomic_path
    from soupline.errors import SouplineError

    with pytest.raises(SouplineError, match=r"cannot write .*ingredient: No space left on device$"):
        with atomic_dir(tmp_path / "ingredient"):  # the message safetensors' writer gives on a full tmpfs
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    class Full(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SouplineError, match=r"cannot write .*ckpt.pt: No space left on device"):
        with atomic_path(tmp_path / "ckpt.pt"):
            torch.save({"w": torch.zeros(1000)}, Full())
    with pytest.raises(RuntimeError, match="a bug"):  # no file system error behind it: a bug keeps its traceback
        with atomic_path(tmp_path / "ckpt.pt"):
            raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_on_a_full_disk_the_workspace_lock_holds_so_cache_clear_can_free_space(tmp_path):
    """The workspace lock writes its holder's name into data/.soupline.lock: on a disk that takes no more bytes that
    note is left out, not a traceback, so `soupline cache --clear` (what frees the disk) runs."""
    import resource
    import signal
    import subprocess
    import sys

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()
    cached = tmp_path / "data" / "cache" / "embeddings" / "a.npy"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x" * 1000)

    def full_disk():  # no write may grow a file (EFBIG, as ENOSPC on a full disk)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    out = subprocess.run([sys.executable, "-m", "soupline.cli", "cache", "--root", str(tmp_path), "--clear", "all"],
                         capture_output=True, text=True, preexec_fn=full_disk)
    assert (out.returncode, out.stderr) == (0, "") and "freed" in out.stdout
    assert not cached.exists()


def test_ctrl_c_inside_torch_save_stays_an_interrupt_and_keeps_the_previous_checkpoint(tmp_path):
    """Ctrl-C while a training checkpoint is written: torch's zip writer, closing, raises a RuntimeError ("unexpected
    pos ...") over the KeyboardInterrupt. It stays the KeyboardInterrupt, so the command line says "interrupted;
    run the same command again to resume" (exit 130), not a traceback, and the last checkpoint is kept whole."""
    import io

    import torch

    from soupline.artifacts import atomic_path

    with atomic_path(tmp_path / "ckpt.pt") as tmp:
        torch.save({"w": torch.ones(10)}, tmp)

    class CtrlC(io.BytesIO):  # stands for the SIGINT that arrives while torch.save writes the records
        def write(self, data):
            written = super().write(data)
            if self.tell() > 100:
                raise KeyboardInterrupt
            return written

    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "ckpt.pt"):
            torch.save({"a": torch.zeros(1000), "b": torch.zeros(1000)}, CtrlC())
    assert torch.equal(torch.load(tmp_path / "ckpt.pt")["w"], torch.ones(10))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]

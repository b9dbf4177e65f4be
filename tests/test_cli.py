"""The CLI: its commands, and one-line errors with exit code 2."""

import json
import os
import signal
import time
import warnings

import pytest

import soupline
from soupline import cli, config
from soupline.errors import SouplineError
from tasks.layout import Layout
from tests.conftest import ROOT, make_frame


def test_commands_are_all_wired():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)


def test_version_is_printed_without_a_project_or_a_command(capsys, tmp_path, monkeypatch):
    """`soupline --version`, as `dvc --version`: exit 0, no project needed (was: 'arguments are required: command')."""
    from soupline import __version__

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as code:
        cli.main(["--version"])
    assert code.value.code == 0 and capsys.readouterr().out == f"soupline {__version__}\n"


def test_params_command_applies_overrides(capsys):
    assert cli.main(["params", "--root", str(ROOT), "select.budget=0.25"]) == 0
    assert "budget: 0.25" in capsys.readouterr().out
    assert cli.main(["--root", str(ROOT), "params", "select.budget=0.5"]) == 0  # before the command, as git -C
    assert "budget: 0.5" in capsys.readouterr().out
    assert cli.main(["--root", "/no/such/project", "params", "--root", str(ROOT)]) == 0  # after it wins


def test_params_imports_no_stage_module():
    """`soupline params` needs the params, not the stage modules: importing tasks.pipeline, and pandas through it,
    took longer than the command's own work."""
    import subprocess
    import sys

    code = ("import sys; from soupline import cli; assert cli.main(['params', '--root', sys.argv[1]]) == 0; "
            "print(sorted({'tasks.pipeline', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


HEAVY = ("faiss", "torch", "sklearn", "scipy", "transformers", "pandas")


@pytest.mark.parametrize("code, allowed", [
    # `soupline params`, and every command's params check: the select methods' sections, not their libraries
    ("import soupline.config", ()),
    # `soupline status` and an up-to-date `soupline run`: the stage modules, none of which runs
    ("import tasks.pipeline", ()),
])
def test_what_trains_nothing_imports_no_heavy_library(code, allowed):
    """The libraries a command that trains nothing used to import only to define a params section or a stage's
    entry point: faiss (select.kmeans, select.dnc), pandas (tasks.common, tasks.prepare, tasks.embed). Which
    modules, not how long."""
    import subprocess
    import sys

    probe = (f"import sys; {code}; import json; "
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    imported = {m.split(".")[0] for m in json.loads(out.stdout.splitlines()[-1])}
    assert imported <= set(allowed), f"{code!r} imports {sorted(imported - set(allowed))}"


def test_bad_override_is_one_line(capsys):
    assert cli.main(["run", "--root", str(ROOT), "select.metod=random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params: unknown key 'select.metod' (did you mean 'select.method'?)"



def test_every_entry_point_names_every_params_problem(tmp_path, capsys):
    """The CLI, a dvc stage's command and the Prefect flow's module all list each bad key in the same one line (they
    named the first and then "(and 2 more)")."""
    import subprocess
    import sys

    bad = ["trian.epochs=3", "select.budget=0", "train.epochs=true"]
    expected = ["error: params: 3 problems: 1) unknown key 'trian' (did you mean 'train'?); 2) select.budget: budget "
                "must be > 0 (a fraction in (0, 1] or a count) (got 0); 3) train.epochs: expects a number, not a "
                "boolean (got True: YAML reads unquoted true/false as a boolean)"]
    assert cli.main(["run", "--root", str(ROOT), *bad]) == 2
    assert capsys.readouterr().err.strip().splitlines() == expected
    env = {**os.environ, "PREFECT_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    for argv in (["tasks.select", *(f"--set={o}" for o in bad)], ["flows.pipeline", *bad]):
        out = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
        assert (out.returncode, out.stderr.strip().splitlines()) == (2, expected), argv


def test_not_a_project(tmp_path, capsys):
    assert cli.main(["run", "--root", str(tmp_path)]) == 2
    assert "not a soupline project" in capsys.readouterr().err


def test_missing_model_path(capsys):
    assert cli.main(["doctor", "--root", str(ROOT), "model=./no/such/model"]) == 2
    assert "model path './no/such/model' does not exist" in capsys.readouterr().err


def test_doctor_reads_and_splits_the_data(capsys, tmp_path):
    assert cli.main(["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'nope.jsonl'}"]) == 2
    assert "nope.jsonl' does not exist" in capsys.readouterr().err
    make_frame(10).rename(columns={"text": "body"}).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    assert cli.main(["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}"]) == 2
    assert "body" in capsys.readouterr().err  # the missing text column, and the columns there are
    assert cli.main(["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}",
                     "prepare.text_column=body"]) == 0
    assert f"data: {tmp_path / 'd.jsonl'} -> pool 21 / validation 3 / test 6 over 3 labels; select.budget 0.1 = 2 " \
           "examples" in capsys.readouterr().out


def test_doctor_names_the_split_column(capsys, tmp_path):
    """Under prepare.split_column the data line said the split sizes as if prepare had drawn them: it names the
    column that divides the rows; a column the file lacks is prepare's own line."""
    frame = make_frame(10).assign(split=["train"] * 20 + ["validation"] * 4 + ["test"] * 6)
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    run = ["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}"]
    assert cli.main([*run, "prepare.split_column=split"]) == 0
    assert f"data: {tmp_path / 'd.jsonl'} -> pool 20 / validation 4 / test 6 over 3 labels, divided by its column " \
           "'split' (prepare.split_column); select.budget 0.1 = 2 examples" in capsys.readouterr().out
    assert cli.main([*run, "prepare.split_column=splt"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0] == (
        f"error: {tmp_path / 'd.jsonl'} has no split column 'splt'; its columns are ['text', 'label', 'split'] (set "
        "prepare.split_column in params.yaml, or pass prepare.split_column=<name> on the command line)")


def test_doctor_checks_select_budget_against_the_pool(capsys, tmp_path):
    """doctor split the data as prepare would but did not compare select.budget with that pool, so it passed a
    budget the select stage refuses only after prepare and embed have run."""
    make_frame(10).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    assert cli.main(["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}", "select.budget=22"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: select.budget=22 asks for 22 examples but the pool has only 21; lower select.budget",
                     "error: doctor: data failed (above); fix them, then run again"]


def test_doctor_reads_what_the_selection_method_reads(capsys, tmp_path):
    """GOT-D's target file and dnc's quality column were first read by the select stage, after prepare and embed, when
    doctor had passed every check: each is one line from doctor now, read as select reads it."""
    frame = make_frame(10).assign(rating=range(30))
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    data = f"prepare.source={tmp_path / 'd.jsonl'}"
    for method, says in ((["select.method=gotd", f"select.gotd.target={tmp_path / 'nope.jsonl'}"],
                          "nope.jsonl' does not exist"),
                         (["select.method=dnc", "select.dnc.q=column:rating"],
                          "select.dnc.q=column:rating: the pool has no column 'rating' (it has none); carry it from "
                          "your data with prepare.keep_columns: [rating]")):
        assert cli.main(["doctor", "--root", str(ROOT), data, *method]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert says in lines[0] and lines[1] == "error: doctor: select failed (above); fix them, then run again"
    frame[["text"]].head(4).to_json(tmp_path / "target.jsonl", orient="records", lines=True)
    assert cli.main(["doctor", "--root", str(ROOT), data, "select.method=gotd",
                     f"select.gotd.target={tmp_path / 'target.jsonl'}"]) == 0
    assert f"select: gotd, target {tmp_path / 'target.jsonl'} (4 texts)" in capsys.readouterr().out
    for q in ("column:rating", "'column: rating'"):  # select reads the name without the space: so does doctor
        assert cli.main(["doctor", "--root", str(ROOT), data, "prepare.keep_columns=[rating]", "select.method=dnc",
                         f"select.dnc.q={q}"]) == 0
        assert "select: dnc, quality column 'rating'" in capsys.readouterr().out


def test_doctor_checks_dealrec_hard_prune_against_the_budget(capsys, tmp_path):
    """A hard_prune that leaves fewer examples than the budget was the select stage's line, after prepare and embed
    had run, where doctor had passed it; under select.stratify each quota keeps its budget, so it passes."""
    make_frame(10).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    run = ["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}", "select.method=dealrec",
           "select.dealrec.hard_prune=0.5", "select.budget=15"]
    assert cli.main(run) == 2
    assert capsys.readouterr().err.strip().splitlines() == [  # pool 21: 10 pruned, 11 left
        "error: select.dealrec.hard_prune=0.5 leaves 11 examples, fewer than the budget 15; lower hard_prune",
        "error: doctor: select failed (above); fix them, then run again"]
    assert cli.main([*run, "select.dealrec.hard_prune_within=label"]) == 2  # 3 of each label's 7: 12 left
    assert "leaves 12 examples, fewer than the budget 15" in capsys.readouterr().err
    for ok in (["select.budget=11"], ["select.stratify=label"]):
        assert cli.main([*run, *ok]) == 0
        assert "select: dealrec, hard_prune 0.5 (leaves the budget)" in capsys.readouterr().out


def test_doctor_checks_the_self_training_count_against_the_labels(capsys, tmp_path):
    """A `train.self_training.multiple` under one pseudo-label per label is refused by `soupline run` once prepare
    has run (`check_count`), where doctor had passed it: doctor says it, through the same check, on its data check's
    splits (pool 21 over 3 labels: select.budget 0.1 = 2 examples)."""
    make_frame(10).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    run = ["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}"]
    assert cli.main([*run, "train.self_training.multiple=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: train.self_training.multiple=1 asks for 2 pseudo-labels (1 x the selection's 2), fewer than one per "
        "label (3 labels), so the students would train on none; raise it to at least 1.5, or set it to 0 (no "
        "self-training)", "error: doctor: self-training failed (above); fix them, then run again"]
    assert cli.main([*run, "train.self_training.multiple=1.5", "study.budgets=[0.1, 4]"]) == 0
    assert ("self-training: multiple 1.5 x 2 selected = 3 pseudo-labels over 3 labels; at study.budgets[0] 0.1, "
            "`soupline study`'s smallest budget: 1.5 x 2 selected = 3\n") in capsys.readouterr().out
    assert cli.main([*run, f"prepare.source={tmp_path / 'nope.jsonl'}", "train.self_training.multiple=1"]) == 2
    out, err = capsys.readouterr()
    assert "self-training: multiple 1 (not checked against the data: its check failed)" in out
    assert err.strip().splitlines()[-1] == "error: doctor: data failed (above); fix them, then run again"
    assert cli.main(run) == 0 and "self-training" not in capsys.readouterr().out  # off: no line


def test_doctor_says_the_self_training_count_of_the_smallest_study_budget(capsys, tmp_path):
    """`soupline study` checks the self-training count at each of `study.budgets` (`check_budgets`), where doctor
    checked select.budget's alone and passed a study budget that gives under one pseudo-label per label: doctor
    says it, through the same check, naming the budget study would stop on (the first that fails, in order), else the
    smallest budget's count, without refusing (the params do not say whether a study is meant); so is a study budget
    the pool cannot hold, on which study would stop first."""
    make_frame(10).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    run = ["doctor", "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}", "train.self_training.multiple=1.5"]
    assert cli.main([*run, "study.budgets=[0.1, 1]"]) == 0  # pool 21 over 3 labels: 1.5 x 1 = 2 < 3
    said = "self-training: multiple 1.5 x 2 selected = 3 pseudo-labels over 3 labels; `soupline study` would stop"
    assert f"{said} at study.budgets[1] 1: train.self_training.multiple=1.5 asks for 2 pseudo-labels (1.5 x the " \
           "selection's 1), fewer than one per label (3 labels), so the students would train on none; raise it to " \
           "at least 3, or set it to 0 (no self-training)\n" in capsys.readouterr().out
    assert cli.main([*run, "study.budgets=[0.02, 0.1]"]) == 0
    assert f"{said}: study.budgets[0]=0.02 of a pool of 21 is less than one example; raise the fraction or give a " \
           "count\n" in capsys.readouterr().out
    run[-1] = "train.self_training.multiple=1"  # select.budget 3: 3 pseudo-labels; study budgets 2 and 1 too few
    assert cli.main([*run, "select.budget=3", "study.budgets=[2, 1]"]) == 0
    assert "`soupline study` would stop at study.budgets[0] 2: train.self_training.multiple=1 asks for 2 " \
           "pseudo-labels" in capsys.readouterr().out  # where study stops: the first in order, not the smallest


def test_a_hard_prune_the_budget_outlasts_stops_before_embed(tmp_path, tiny_model, capsys):
    """`soupline run` and `soupline study` said it only from the select stage, after embed had encoded every split:
    they check it once prepare has run (the pool's labels are known), as they check the budget."""
    from tests.conftest import tiny_project

    root = tiny_project(tmp_path / "project", tiny_model)
    prune = ["select.dealrec.hard_prune=0.9", "--root", str(root)]
    for command in (["run", "select.method=dealrec", "select.budget=0.5"],
                    ["study", "study.methods=[random, dealrec]", "study.budgets=[0.05, 0.5]"]):
        assert cli.main([*command, *prune]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: select.dealrec.hard_prune=0.9 leaves ") \
            and err[0].endswith("; lower hard_prune"), err
        assert (root / "data" / "prepared" / "pool.parquet").exists()
        assert not (root / "data" / "embeddings").exists()


def test_doctor_asks_the_prefect_server_the_flows_would_use(tmp_path):
    """With Prefect installed, doctor asks PREFECT_API_URL's server for /health: none configured is its line (the
    flows start a temporary one); one that does not answer is an error line and doctor fails (it was news only once
    a flow or `soupline serve` started)."""
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "doctor", "--root", str(ROOT)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("prefect server: none configured (PREFECT_API_URL unset): the flows and `soupline serve` start a "
            "temporary one") in out.stdout.splitlines()
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    out = subprocess.run([sys.executable, "-m", "soupline.cli", "doctor", "--root", str(ROOT)], env=env,
                         capture_output=True, text=True, timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 2, out.stderr[-2000:]
    assert lines[0].startswith("error: the Prefect server at PREFECT_API_URL=http://127.0.0.1:9/api does not answer")
    assert lines[1] == "error: doctor: prefect server failed (above); fix them, then run again"
    assert "prefect: " in out.stdout  # the versions still printed


def test_doctor_says_the_prefect_server_answers(capsys, prefect_server):
    from prefect.settings import get_current_settings

    assert cli.main(["doctor", "--root", str(ROOT)]) == 0
    url = get_current_settings().api.url.rstrip("/")
    assert f"prefect server: {url} answers" in capsys.readouterr().out.splitlines()


def test_doctor_checks_everything_before_it_fails(capsys, tmp_path):
    """A broken model does not hide a broken data path: every check runs, each failure is its own line."""
    assert cli.main(["doctor", "--root", str(ROOT), "model=./no/such/model",
                     f"prepare.source={tmp_path / 'nope.jsonl'}"]) == 2
    out, err = capsys.readouterr()
    assert "device: auto -> " in out and "torch: " in out and "soupline: " in out  # the checks after the failing model still ran
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "model path './no/such/model' does not exist" in lines[0]
    assert "nope.jsonl' does not exist" in lines[1]
    assert lines[2] == "error: doctor: model and data failed (above); fix them, then run again"


@pytest.mark.parametrize("isa, precision, hint", [("AVX512-BF16", "fp32", True), ("AVX512-BF16", "bf16", False),
                                                   (None, "fp32", False)])
def test_doctor_says_when_the_cpu_has_bf16_instructions_and_training_is_fp32(capsys, monkeypatch, isa, precision,
                                                                             hint):
    """On a CPU with native bfloat16 kernels, bf16 autocast trained all-mpnet-base-v2 1.88 x faster at the same
    accuracy (session 60): the device line says so while the train section is fp32, and only then."""
    import soupline.train

    monkeypatch.setattr(soupline.train, "cpu_bf16_instructions", lambda: isa)
    cli.main(["doctor", "--root", str(ROOT), "device=cpu", f"train.precision={precision}", "model=./no/such/model"])
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("device: ")]
    assert line == ("device: cpu -> cpu, which has AVX512-BF16: `train.precision: bf16` may train faster here "
                    "(measured: README, Fine-tuning recipes)" if hint else "device: cpu -> cpu")


def test_the_torch_probes_cpu_bf16_instructions_reads_exist():
    """They are private (`torch.cpu._is_*_supported`): a torch without them would read as no bf16, silently."""
    import torch

    from soupline.train import cpu_bf16_instructions

    assert hasattr(torch.cpu, "_is_amx_tile_supported") and hasattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_bf16_instructions() in ("AMX", "AVX512-BF16", None)


@pytest.mark.parametrize("damage, says", [
    ("tokenizer", "holds a tokenizer of 5 tokens for a model of 30522: its tokenizer files are missing"),
    ("weights", "has no weights (*.safetensors or pytorch_model*.bin); save the model into it"),
    ("cut", "model.safetensors is damaged (Error while deserializing header: incomplete metadata, file not fully "
            "covered); copy or save the model again"),
    ("latin-1", "its config.json cannot be read ('utf-8' codec can't decode byte 0xe9"),
    ("config", "its config.json cannot be read (Unrecognized model in"),
    ("json", "its config.json cannot be read (Expecting property name enclosed in double quotes"),
])
def test_a_damaged_model_folder_is_one_line_and_doctor_goes_on(capsys, tmp_path, tiny_model, damage, says):
    """A folder saved by `model.save_pretrained` alone (no tokenizer) passed every check, and embed, select and train
    ran on a 5-token tokenizer that read every word as [UNK]; a config.json without model_type or not JSON, or no
    weights, was a traceback that stopped doctor before its other checks."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    if damage == "tokenizer":
        for f in folder.iterdir():
            if f.name not in ("config.json", "model.safetensors"):
                f.unlink()
    elif damage == "weights":
        (folder / "model.safetensors").unlink()
        (folder / "training_args.bin").write_bytes(b"not weights")
    elif damage == "cut":  # a copy that stopped: doctor passed it, and every stage was a 47-line traceback
        weights = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    elif damage == "latin-1":
        (folder / "config.json").write_bytes('{"model_type": "bert", "name": "caf\u00e9"}'.encode("latin-1"))
    else:
        (folder / "config.json").write_text("{}" if damage == "config" else "{not json")
    assert cli.main(["doctor", "--root", str(ROOT), f"model={folder}"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert says in lines[0] and len(lines) == 2, err
    assert "device: " in out and "data: " in out


def _deny(monkeypatch, folder):
    """Files under `folder` refuse this process as chmod 000 refuses a user who is not their owner (root, who runs
    these tests in CI, reads them anyway)."""
    import builtins
    import errno
    import io
    from pathlib import Path

    real = io.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve().is_relative_to(folder):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


def test_a_file_this_user_may_not_read_is_one_line(capsys, tmp_path, monkeypatch, tiny_model):
    """An unreadable data source or model folder: doctor names each (its other checks still run), status and run
    stop in one line (were: doctor's data line "is not a whole gzip file ...; compress it again", then tracebacks)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    make_frame(10).to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    _deny(monkeypatch, tmp_path)
    assert cli.main(["doctor", "--root", str(ROOT), f"model={model}", f"prepare.source={tmp_path / 'd.jsonl'}"]) == 2
    out, err = capsys.readouterr()
    assert "soupline: " in out and len(err.splitlines()) == 3, err
    line = "error: permission denied: {}; give the user running soupline access to it (chmod, chown), or run as " \
           "its owner"
    assert err.splitlines()[:2] == [line.format(model / "config.json"), line.format(tmp_path / "d.jsonl")]
    for command in ("status", "run"):
        assert cli.main([command, "--root", str(ROOT), f"prepare.source={tmp_path / 'd.jsonl'}"]) == 2
        assert capsys.readouterr().err == line.format(tmp_path / "d.jsonl") + "\n"


def test_hub_id_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["doctor", "--root", str(ROOT), "model=someone/some-model"]) == 2
    assert "cannot be fetched from the hub" in capsys.readouterr().err


def test_study_bad_grid_is_one_line(capsys):
    assert cli.main(["study", "--root", str(ROOT), "study.budgets=[0.1, 1.5]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params: study.budgets: a fractional budget must be in (0, 1]") and "\n" not in err


def test_one_run_at_a_time_per_workspace_and_a_killed_holder_frees_it(tmp_path):
    """A second run in the same data/ fails in one line naming the first; the lock dies with its process."""
    import signal
    import subprocess
    import sys
    import time

    from tasks.common import workspace_lock

    layout = Layout(tmp_path)
    with workspace_lock(layout, "soupline run"):
        with pytest.raises(SouplineError, match=r"is in use by `soupline run` \(pid \d+\); wait for it") as err:
            with workspace_lock(layout, "soupline stage select"):
                pass
        assert "\n" not in str(err.value)
        out = subprocess.run([sys.executable, "-m", "tasks.select", "--params", str(ROOT / "params.yaml"), "--root",
                              str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "in use by `soupline run`" in out.stderr

    holder = subprocess.Popen([sys.executable, "-c", "import time; from pathlib import Path; "
                               "from tasks.common import workspace_lock; from tasks.layout import Layout; "
                               f"ctx = workspace_lock(Layout(Path({str(tmp_path)!r})), 'held'); ctx.__enter__(); "
                               "time.sleep(120)"], cwd=ROOT)
    lock = tmp_path / "data" / ".soupline.lock"
    for _ in range(200):
        if lock.exists() and "held" in lock.read_text():
            break
        time.sleep(0.05)
    with pytest.raises(SouplineError, match="in use by `held`"):
        with workspace_lock(layout, "soupline run"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workspace_lock(layout, "soupline run") as left:  # the kernel released it with the process
        assert left == f"`held` (pid {holder.pid})"  # the note a killed holder leaves (`end_left_running` reads it)
    with workspace_lock(layout, "soupline run") as left:  # a holder that ends cleanly leaves none
        assert left == ""


def test_stage_names_are_the_pipelines_and_a_bad_one_is_an_argparse_error(capsys):
    from tasks.pipeline import STAGES

    assert list(soupline.STAGE_NAMES) == list(STAGES) and soupline.STAGE_NAMES[-1] == "report"  # report's table
    with pytest.raises(SystemExit) as err:
        cli.main(["run", "--root", str(ROOT), "--from", "bogus"])
    assert err.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, missing", [(["stage"], "the following arguments are required: name"),
                                           (["predict"], "give FILE (a table of texts) or --text TEXT")])
def test_a_missing_argument_is_named_and_the_overrides_are_not_called_required(argv, missing, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.value.code == 2 and f"error: {missing}" in last and "KEY=VALUE" not in last


def test_max_length_beyond_the_models_positions_is_one_line(capsys):
    """all-MiniLM-L6-v2 has 512 positions: a longer max_length would fail on the first text that long."""
    assert cli.main(["doctor", "--root", str(ROOT), "embed.max_length=1000"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: embed.max_length=1000 is longer than the model takes (512 tokens); set embed.max_length to 512 or less",
        "error: doctor: model failed (above); fix them, then run again"]
    assert cli.main(["doctor", "--root", str(ROOT), "train.max_length=512"]) == 0
    assert "(takes up to 512 tokens)" in capsys.readouterr().out


def test_a_params_file_that_does_not_exist_is_an_error_not_the_defaults(capsys):
    assert cli.main(["params", "--root", str(ROOT), "--params", "typo.yaml"]) == 2
    assert "params file 'typo.yaml' does not exist" in capsys.readouterr().err
    assert cli.main(["params", "--root", str(ROOT), "--params", "tests"]) == 2
    assert "params file 'tests' is a folder; give the params file in it" in capsys.readouterr().err


def test_the_project_is_found_from_a_subfolder_and_relative_params_paths_read_from_it(tmp_path, tiny_model,
                                                                                       monkeypatch, capsys):
    from tests.conftest import tiny_project

    root = tiny_project(tmp_path / "project", tiny_model)  # prepare.source: data/raw/corpus.jsonl, relative
    monkeypatch.chdir(root / "data" / "raw")
    assert cli.main(["params"]) == 0  # found from a subfolder, as git and dvc find their repository
    assert "source: data/raw/corpus.jsonl" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    assert cli.main(["stage", "prepare", "--root", str(root)]) == 0  # the source is read from the project
    assert (root / "data" / "prepared" / "pool.parquet").exists()
    assert cli.main(["params"]) == 2 and "not in a soupline project" in capsys.readouterr().err
    assert cli.main(["params", "--params", str(root / "params.yaml"), "--root", str(root)]) == 0
    assert str(tmp_path) == __import__("os").getcwd()  # the caller's directory is kept


def test_a_closed_pipe_ends_quietly():
    """`soupline params | head -1`: the reader left; exit 1 without a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "soupline.cli", "params", "--root", str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # no reader left: the first write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "run", (interrupted, "run"))
    assert cli.main(["run"]) == 130
    assert capsys.readouterr().err.startswith("\ninterrupted; run the same command again to resume")
    monkeypatch.setitem(cli.COMMANDS, "predict", (interrupted, "predict"))
    assert cli.main(["predict", "new.jsonl"]) == 130  # nothing to resume: predict starts over
    assert capsys.readouterr().err == "\ninterrupted\n"


def test_a_stage_whose_parent_dies_stops_at_its_next_check(tmp_path):
    """`kill <dvc's pid>` ended `dvc repro` but not its stage, which trained on to the end holding the workspace lock:
    a stage under DVC watches its parent (`interrupt.stop_when_orphaned`) and stops at its next check once it is
    gone. Here a parent that starts the watcher's process and exits."""
    import subprocess
    import sys

    child = (f"import os, time; from soupline import interrupt; interrupt.stop_when_orphaned(os.getppid(), 0.05)\n"
             f"open({str(tmp_path / 'watching')!r}, 'w').close()\n"
             "try:\n"
             "    for _ in range(400): interrupt.check(); time.sleep(0.05)\n"
             f"    open({str(tmp_path / 'ran on')!r}, 'w').close()\n"
             "except KeyboardInterrupt:\n"
             f"    open({str(tmp_path / 'stopped')!r}, 'w').close()\n")
    parent = (f"import subprocess, sys, time, pathlib; subprocess.Popen([sys.executable, '-c', {child!r}])\n"
              f"while not pathlib.Path({str(tmp_path / 'watching')!r}).exists(): time.sleep(0.05)\n"
              "time.sleep(0.3)\n")  # the watcher sees its parent alive a few times first
    assert subprocess.run([sys.executable, "-c", parent], timeout=60).returncode == 0
    deadline = time.monotonic() + 20
    while not any((tmp_path / f).exists() for f in ("stopped", "ran on")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "stopped").exists() and not (tmp_path / "ran on").exists()


def test_a_second_ctrl_c_while_the_command_exits_adds_nothing_below_the_line(tmp_path):
    """Ctrl-C pressed twice: the second one came while the process exited, inside torch's atexit callback (it
    imports a module), and printed `Exception ignored in atexit callback` and a traceback below the `interrupted`
    line. SIGINT is ignored once the interpreter shuts down; a library's callback stands in for torch's here."""
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent("""
        import atexit, os, signal, sys, time
        from soupline import cli

        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job ignores it)

        def second_ctrl_c():  # registered at a library's import, before the command: it runs after cli's
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)

        def interrupted(args):
            raise KeyboardInterrupt

        atexit.register(second_ctrl_c)
        cli.COMMANDS["run"] = (interrupted, "run")
        sys.exit(cli.main(["run"]))
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 130 and proc.stderr.startswith("\ninterrupted; run the same command again")
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_hang_up_stops_run_as_ctrl_c_does(tmp_path, signum):
    """`kill <pid>` / `timeout` / a scheduler's stop (SIGTERM), or a closed ssh session's SIGHUP, ended `soupline run`
    where it stood: exit -15 / -1, no `interrupted` line, no clean-up (`finally`) run. Now as Ctrl-C, with 128 + the
    signal; the handler is put back afterwards (a hang-up's later ones ignored), a command that keeps nothing to resume
    (params) keeps the default, and a SIGHUP that `nohup` ignores stays ignored."""
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent(f"""
        import os, signal, sys, time
        from soupline import cli

        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's session: not `nohup pytest`'s ignored SIGHUP

        def terminated(args):
            try:
                os.kill(os.getpid(), {int(signum)})
                time.sleep(30)
            finally:
                open({str(tmp_path / 'cleaned up')!r}, 'w').close()

        cli.COMMANDS["run"] = (terminated, "run")
        code = cli.main(["run"])
        # put back; a hang-up's later ones stay ignored: the process is on its way out
        assert signal.getsignal({int(signum)}) is {"signal.SIG_IGN" if signum == signal.SIGHUP else "signal.SIG_DFL"}
        signal.signal({int(signum)}, signal.SIG_DFL)
        cli.COMMANDS["params"] = (lambda args: print(signal.getsignal({int(signum)}) is signal.SIG_DFL), "params")
        cli.main(["params"])
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        cli.COMMANDS["run"] = (lambda args: print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN), "run")
        cli.main(["run"])
        sys.exit(code)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr.startswith("\ninterrupted; run the same command again"), proc.stderr
    assert proc.stdout == "True\nTrue\n" and (tmp_path / "cleaned up").exists()


def test_the_cli_and_the_flows_take_a_hang_up_over_by_one_rule(monkeypatch):
    """`soupline run` / `serve` (`_stop_on_signals`) and a flow run (`threads_stop_with_the_run`) each checked for
    themselves that SIGHUP had its default action and this was the main thread; both ask `interrupt.may_stop_on`
    now. serve asks it whatever SIGINT's handler is: started with SIGINT ignored (`cmd &` in a script), it left
    SIGHUP's default action and a hang-up killed it (tests/test_prefect_server.py hangs up such a serve)."""
    import threading

    from flows.interruptible import threads_stop_with_the_run
    from soupline import interrupt

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's session
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # `cmd &` in a script
        assert interrupt.may_stop_on(signal.SIGHUP)
        assert cli._stop_on_signals("serve", []) == [signal.SIGHUP]
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with threads_stop_with_the_run():
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN)
        in_a_thread: list[bool] = []
        thread = threading.Thread(target=lambda: in_a_thread.append(interrupt.may_stop_on(signal.SIGHUP)))
        thread.start()
        thread.join()
        assert in_a_thread == [False]  # only the main thread may set a handler
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup: the command is to outlive the terminal
        assert not interrupt.may_stop_on(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        monkeypatch.setattr(interrupt, "may_stop_on", lambda signum: False)  # the one rule both ask
        assert cli._stop_on_signals("run", []) == [] and cli._stop_on_signals("serve", []) == []
        with threads_stop_with_the_run():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_ctrl_c_line_is_the_last_thing_after_the_training_bar(tiny_model, tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-train: the progress bar is closed on the way out, so the `interrupted; ...` line comes after it.
    The garbage collector closed it after that line was printed, and it drew itself again below the line."""
    import gc

    import numpy as np

    from soupline import interrupt
    from soupline.config import TrainParams
    from soupline.train import finetune

    frame = make_frame(4)
    texts, labels = frame["text"].tolist(), sorted(set(frame["label"]))
    y = np.array([labels.index(x) for x in frame["label"]])

    def stopped_mid_train(args):
        interrupt.REQUESTED.set()  # the next `interrupt.check()` raises KeyboardInterrupt, as a Ctrl-C does there
        try:
            finetune(tiny_model, labels, texts, y, texts, y, TrainParams(min_steps=4, batch_size=4, max_length=16),
                     1e-3, 0, tmp_path / "out", tmp_path / "ckpt", progress=True)
        finally:
            interrupt.REQUESTED.clear()

    monkeypatch.setitem(cli.COMMANDS, "run", (stopped_mid_train, "run"))
    assert cli.main(["run"]) == 130
    gc.collect()
    err = capsys.readouterr().err
    assert err.startswith("\rtrain out:") and err.endswith(interrupt.MESSAGE + "\n"), err


def test_ctrl_c_in_a_dvc_stage_entry_point_is_one_line(tmp_path, capsys):
    """`dvc repro`'s Ctrl-C reaches `python -m tasks.<stage>` too: exit 130 and one line, no traceback."""
    from tasks.common import main

    def interrupted(params, layout):
        raise KeyboardInterrupt

    (tmp_path / "params.yaml").write_text("{}")
    with pytest.raises(SystemExit) as code:
        main("prepare", interrupted, ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code == 130 and err.strip().splitlines() == [err.strip()] and "interrupted" in err


def test_status_lists_what_run_would_run(tmp_path, monkeypatch, capsys):
    import types

    status = {"prepare": None, "select": "no run recorded from these params and inputs", "report": None}
    behind = damaged = None
    fake = types.SimpleNamespace(stage_status=lambda params, layout: status,
                                 unrecorded_in_dvc=lambda params, layout, todo: damaged if todo else behind,
                                 pullable=lambda params, layout: [])
    monkeypatch.setattr(cli, "_workspace", lambda args: (None, Layout(tmp_path), fake))
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "prepare  up to date", "select   no run recorded from these params and inputs",
        "report   up to date with the outputs on disk now (runs if select changes them)",
        "`soupline run` would run select and, where its outputs change, what follows"]
    # a stage after two that would run names the nearer one, whose outputs it reads (it named the first)
    status.update(select="no run recorded", train="1 of 2 ingredient(s) to train: lr0.001-seed1", soup=None)
    assert cli.main(["status"]) == 0
    assert "soup     up to date with the outputs on disk now (runs if train changes them)" in \
        capsys.readouterr().out.splitlines()
    status.update(select="no run recorded from these params and inputs")
    del status["train"], status["soup"]
    # dvc.lock that DVC cannot read is said while stages are out of date too (was: only once all were up to date)
    damaged = "is empty (a run killed while DVC wrote it?): ..."
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "dvc.lock  is empty (a run killed while DVC wrote it?): ...",
        "`soupline run` would run select and, where its outputs change, what follows"]
    status["select"] = None
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "everything is up to date"
    # a run killed in its closing `dvc commit`: every stage is up to date, dvc.lock is not (was: "everything is up
    # to date", while `dvc status` listed every stage and `dvc repro` would run them all again)
    behind = "does not record these outputs"
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "dvc.lock  does not record these outputs",
        "`soupline run` would run no stage, only record the outputs in dvc.lock (`dvc commit -f`)"]


def test_status_in_a_fresh_clone_says_dvc_pull_brings_the_outputs(tmp_path, monkeypatch, capsys):
    """`git clone` without `dvc pull` (or a partial pull): the outputs dvc.lock records from these params are not
    here, so every stage has no run; status says `dvc pull` fetches them. Before, it said only that `soupline run`
    would run prepare and what follows: all of it, training included, again."""
    import types

    status = {"prepare": "no run recorded from these params and inputs",
              "train": "2 of 2 ingredient(s) to train: lr0.0001-seed0, lr0.0001-seed1"}
    fake = types.SimpleNamespace(stage_status=lambda params, layout: status, pullable=lambda params, layout:
                                 ["prepare", "train"], unrecorded_in_dvc=lambda params, layout, todo: None)
    monkeypatch.setattr(cli, "_workspace", lambda args: (None, Layout(tmp_path), fake))
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "dvc.lock records the outputs of prepare, train from these params and inputs, and they are not in this "
        "workspace: `dvc pull` fetches them (`dvc checkout` where DVC's cache holds them) instead of `soupline run` "
        "building them again")


def test_one_status_asks_dvc_status_once_for_every_question(tmp_path, monkeypatch):
    """`soupline status` with a stage to run asked `dvc status` of every stage twice (which stages dvc.lock records,
    which `dvc pull` brings), at a second or more each; inside `dvc_lock.one_status` it asks once, and outside it
    asks again (a run changes the answer)."""
    import contextlib

    from tasks import dvc_lock

    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    asked = []

    class Repo:
        root_dir = str(tmp_path)

        def status(self, targets=None):
            asked.append(targets)
            return {"train": [{"changed outs": {"data/models/ingredients": "not in cache"}}]}

    handed_over = contextlib.contextmanager(lambda root, take_back=None: iter([Repo()]))
    monkeypatch.setattr(dvc_lock, "_handed_over", handed_over)
    monkeypatch.setattr(dvc_lock, "commit_refusal", lambda params, root, stages=(): None)
    stages = ["prepare", "train"]
    with dvc_lock.one_status():
        assert dvc_lock.clean_stages(tmp_path, stages) == ["prepare"]
        assert dvc_lock.pullable(tmp_path, stages) == ["train"]
        assert dvc_lock.unrecorded(None, tmp_path, tuple(stages)).startswith("does not record these outputs")
    assert asked == [[f"{tmp_path}/dvc.yaml:prepare", f"{tmp_path}/dvc.yaml:train"]]
    assert dvc_lock.pullable(tmp_path, stages) == ["train"]
    assert len(asked) == 2


def test_dvc_status_of_every_stage_reads_dvc_yaml_once_and_checks_each_stage_once(tmp_path, monkeypatch):
    """`dvc status` of all of dvc.yaml's stages is asked of dvc.yaml itself (`dvc_lock._status_targets`): asked of
    each stage by name, DVC read dvc.yaml and dvc.lock again for each and, with deps, checked each stage once per
    named stage after it (a no-op `soupline run`'s closing check of 7 stages: 4.5-5.0 s, 1.0-1.5 s now). The same
    answers, clean or not; a subset of the stages is still asked of by name."""
    import subprocess
    import sys

    import yaml
    from dvc.dvcfile import FileMixin
    from dvc.repo import Repo
    from dvc.stage import Stage

    from tasks import dvc_lock

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    chain = {"a": ("", "a.txt"), "b": ("a.txt", "b.txt"), "c": ("b.txt", "c.txt")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        name: {"cmd": f"echo {name} > {out}", "deps": [dep] if dep else [], "outs": [out]}
        for name, (dep, out) in chain.items()}}))
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=tmp_path, check=True)
    reads, checks = [], []
    load, status = FileMixin._load, Stage.status
    monkeypatch.setattr(FileMixin, "_load", lambda self, **kw: reads.append(self.path) or load(self, **kw))
    monkeypatch.setattr(Stage, "status", lambda self, **kw: checks.append(self.addressing) or status(self, **kw))
    monkeypatch.chdir(tmp_path)

    def asked(how, stages, changed_only=False):
        reads.clear(), checks.clear()
        with Repo(str(tmp_path)) as repo:
            answer = (repo.status(targets=how(repo, stages)) if changed_only
                      else repo.status(targets=how(repo, stages), with_deps=True))
        return answer, len(reads), sorted(checks)

    for edit in (False, True):
        if edit:
            (tmp_path / "b.txt").write_text("edited\n")
        old, new = asked(dvc_lock._targets, list(chain)), asked(dvc_lock._status_targets, list(chain))
        assert new[0] == old[0] and bool(new[0]) is edit
        with Repo(str(tmp_path)) as repo:
            assert dvc_lock._recorded(repo, list(chain)) is not edit
        assert (old[1], new[1]) == (8, 4)  # dvc.yaml and dvc.lock for the graph, and again per target
        assert (len(old[2]), new[2]) == (6, ["a", "b", "c"])
        assert asked(dvc_lock._status_targets, list(chain), True)[0] == asked(dvc_lock._targets, list(chain), True)[0]
    assert asked(dvc_lock._status_targets, ["a", "b"])[1:] == asked(dvc_lock._targets, ["a", "b"])[1:]


def test_pullable_stages_are_those_whose_recorded_outputs_are_missing():
    """From `dvc status --json` in a clone that pulled only train: a stage qualifies when DVC lists only its missing
    outputs and, as deps, missing outputs of other stages; a changed param, a modified file or a source deleted by
    hand (data/raw) does not."""
    from tasks.dvc_lock import pullable_stages

    missing = {"data/prepared/pool.parquet": "deleted", "data/embeddings": "deleted"}
    changed = {"prepare": [{"changed outs": {"data/prepared": "not in cache"}}],
               "embed": [{"changed deps": {"data/prepared/pool.parquet": "deleted"}},
                         {"changed outs": {"data/embeddings": "not in cache"}}],
               "select": [{"changed deps": {**missing, "src/soupline/select/base.py": "modified"}},
                          {"changed outs": {"data/selections": "deleted"}}],
               "soup": [{"changed deps": {"params.yaml": {"soup.ties.top_k": 50}}},
                        {"changed outs": {"data/soups": "not in cache"}}],
               "train": [{"changed deps": missing}]}  # its ingredients are here: only its deps are missing
    assert pullable_stages(changed) == ["prepare", "embed"]
    assert pullable_stages({"prepare": [{"changed deps": {"data/raw": "deleted"}},
                                        {"changed outs": {"data/prepared": "deleted"}}]}) == []
    assert pullable_stages({"report": ["always changed"]}) == []


def test_status_quiet_prints_nothing_and_exits_1_when_a_stage_would_run(tmp_path, monkeypatch, capsys):
    """`soupline status -q || soupline run`, as `dvc status -q`; plain status exits 0 whatever it finds."""
    import types

    status = {"prepare": None, "select": "no run recorded from these params and inputs"}
    unrecorded = []  # dvc.lock behind the outputs (a run killed in its closing `dvc commit`): run would record it
    fake = types.SimpleNamespace(stage_status=lambda params, layout: status, pullable=lambda params, layout: [],
                                 unrecorded_in_dvc=lambda params, layout, todo: unrecorded and unrecorded[0])
    monkeypatch.setattr(cli, "_workspace", lambda args: (None, Layout(tmp_path), fake))
    assert cli.main(["status", "-q"]) == 1 and capsys.readouterr() == ("", "")
    assert cli.main(["status"]) == 0 and "select   no run recorded" in capsys.readouterr().out
    status["select"] = None
    assert cli.main(["status", "--quiet"]) == 0 and capsys.readouterr().out == ""
    unrecorded.append("does not record these outputs")
    assert cli.main(["status", "-q"]) == 1 and capsys.readouterr() == ("", "")
    assert cli.main(["status"]) == 0 and "dvc.lock  does not record" in capsys.readouterr().out


def test_status_says_first_when_a_run_holds_the_workspace(tmp_path, monkeypatch, capsys):
    """While a run works here, status says so before the stages: what it shows may be about to change."""
    import types

    from tasks.common import workspace_lock

    fake = types.SimpleNamespace(stage_status=lambda params, layout: {"prepare": None},
                                 unrecorded_in_dvc=lambda params, layout, todo: None,
                                 pullable=lambda params, layout: [])
    monkeypatch.setattr(cli, "_workspace", lambda args: (None, Layout(tmp_path), fake))
    with workspace_lock(Layout(tmp_path), "soupline run"):
        assert cli.main(["status"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            f"`soupline run` (pid {os.getpid()}) is running in this workspace now: the stages it has yet to finish "
            "show as they were before it; `soupline status` again once it ends", "prepare  up to date",
            "everything is up to date"]
        assert cli.main(["status", "-q"]) == 0 and capsys.readouterr() == ("", "")
    assert cli.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == ["prepare  up to date", "everything is up to date"]


def test_cache_lists_sizes_and_clears_only_what_it_is_told(tmp_path, capsys):
    from tasks import caches
    from tasks.common import workspace_lock

    assert cli.CACHE_NAMES == list(caches.CACHES)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()  # a project: the cache command reads no params
    (tmp_path / "params.yaml").write_text("select: {metod: random}\n")  # broken params do not keep the disk full
    layout = Layout(tmp_path)
    for path, size in [(layout.embed_cache / "a.npy", 1_500_000), (layout.ingredient_cache / "k1" / "w", 2_000_000),
                       (layout.ingredient_cache / "k2" / "w", 500_000), (layout.checkpoints / "c.pt", 43_500),
                       (layout.prepared / "pool.parquet", 10)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["data/cache/embeddings", "1.5", "MB", "1"]
    assert lines[1].split()[:4] == ["data/cache/ingredients", "2.5", "MB", "2"]
    listed = {line.split()[0]: line.split()[1:4] for line in lines[:-1]}
    assert listed["data/cache/checkpoints"] == ["43.5", "kB", "1"]  # not "0.0 MB", as if empty
    assert listed["data/cache/evaluations"] == ["0", "B", "0"]
    assert lines[-1].startswith("total 4.0 MB;")

    assert cli.main(["cache", "--root", str(tmp_path), "--clear", "ingredients", "checkpoints", "ingredients"]) == 0
    assert capsys.readouterr().out == "cleared ingredients, checkpoints: 2.5 MB freed\n"
    assert not layout.ingredient_cache.exists() and (layout.embed_cache / "a.npy").exists()
    assert (layout.prepared / "pool.parquet").exists()  # a stage output: never the cache command's
    with workspace_lock(layout, "soupline run"):  # not while a run may be reading a cache
        assert cli.main(["cache", "--root", str(tmp_path), "--clear", "all"]) == 2
    assert "in use by `soupline run`" in capsys.readouterr().err and layout.embed_cache.exists()
    assert cli.main(["cache", "--root", str(tmp_path), "--clear", "all"]) == 0
    assert not (layout.data / "cache").exists() or not any((layout.data / "cache").iterdir())
    with pytest.raises(SystemExit):
        cli.main(["cache", "--root", str(tmp_path), "--clear", "models"])
    assert "invalid choice: 'models'" in capsys.readouterr().err
    assert cli.main(["cache", "--root", str(tmp_path), "select.budget=10"]) == 2  # not silently ignored
    assert "soupline cache reads no params" in capsys.readouterr().err
    assert cli.main(["cache", "--root", str(tmp_path), "clear", "embeddings"]) == 2  # was: "reads no params"
    assert "soupline cache takes no 'clear embeddings'; `soupline cache` lists the caches, `soupline cache --clear " \
           "NAME ...` deletes some" in capsys.readouterr().err
    assert cli.main(["cache", "--root", str(tmp_path), "select.budget=10"]) == 2
    assert "soupline cache reads no params" in capsys.readouterr().err
    for where in (["--params", "p.yaml", "cache"], ["cache", "--params", "p.yaml"]):
        assert cli.main([*where, "--root", str(tmp_path)]) == 2
        assert "soupline cache reads no params" in capsys.readouterr().err
    usage = cli.build_parser()._subparsers._group_actions[0].choices["cache"].format_help()
    assert "KEY=VALUE" not in usage and "--params" not in usage  # its help offers no params
    if (layout.data / "cache").exists():  # emptied above
        (layout.data / "cache").rmdir()
    (layout.data / "cache").write_text("")  # a file in the cache folder's place: one line, not NotADirectoryError
    assert cli.main(["cache", "--root", str(tmp_path), "--clear", "all"]) == 2
    assert capsys.readouterr().err == f"error: {layout.data / 'cache'} is a file, not the cache folder; move or delete it\n"


def test_cache_names_the_size_of_dvcs_cache_and_how_to_free_it(tmp_path, capsys):
    """Each data edit leaves its models and soups in .dvc/cache, most of the disk a changing dataset takes: the
    listing said nothing of it, so its total looked like all soupline kept. It is DVC's to free (`dvc gc`)."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    assert "dvc gc" not in capsys.readouterr().out  # no DVC cache here
    for name, size in [("ab/cdef", 3_000_000), ("12/3456.dir", 500_000)]:
        (tmp_path / ".dvc" / "cache" / "files" / "md5" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ".dvc" / "cache" / "files" / "md5" / name).write_bytes(b"x" * size)
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("total 0 B;")  # the soupline caches alone, as --clear all would free
    assert lines[-1].startswith("and DVC's cache, .dvc/cache: 3.5 MB in 2 files,") and "`dvc gc -w`" in lines[-1]


def test_cache_names_the_unpacked_built_in_models_which_clear_leaves(tmp_path, capsys, monkeypatch):
    """all-mpnet-base-v2 unpacks 439 MB into the user's model cache, outside the workspace: the listing said nothing
    of it, so a user looking for their disk did not find it."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()
    models = tmp_path / "models"
    monkeypatch.setenv("SOUPLINE_MODEL_CACHE", str(models))
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    assert "built-in models" not in capsys.readouterr().out  # no cache folder yet
    (models / ".all-mpnet-base-v2.x1.tmp").mkdir(parents=True)  # an unpack under way is no model
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    assert "built-in models" not in capsys.readouterr().out
    (models / "all-mpnet-base-v2" / "model.safetensors").parent.mkdir()
    (models / "all-mpnet-base-v2" / "model.safetensors").write_bytes(b"x" * 2_000_000)
    assert cli.main(["cache", "--root", str(tmp_path), "--clear", "all"]) == 0
    assert cli.main(["cache", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        f"and the unpacked built-in models, {models}: 2.0 MB (all-mpnet-base-v2), this user's,")
    assert (models / "all-mpnet-base-v2" / "model.safetensors").exists()


def test_clearing_the_run_records_keeps_what_they_say_of_code_and_model(tmp_path, monkeypatch):
    """`soupline cache --clear stages` left no record of the code and model folder the stages last ran, so the
    workspace was a fresh clone to `dvc_can_vouch`: dvc.lock vouched for embeddings of a model folder (or code
    outside the project) changed since, where before the clear the stages ran again."""
    from soupline.artifacts import write_json
    from tasks import caches, keys

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()
    layout, params = Layout(tmp_path), config.load(ROOT / "params.yaml")
    write_json(keys.records_dir("embed", tmp_path) / "ab12.json", {"key": "k-ab12", "code": "old code",
                                                                    "model": "old model", "outputs": "x"})
    monkeypatch.setattr(keys, "code_digest", lambda *stages: "new code")
    assert not keys.dvc_can_vouch("embed", params, tmp_path)
    caches.clear(layout, ["stages"])
    assert keys.stage_record("embed", "k-ab12", tmp_path) is None  # the run records are gone
    assert keys.last_recorded("embed", tmp_path, "code") == "old code"
    assert not keys.dvc_can_vouch("embed", params, tmp_path)  # was True: no record, a fresh clone
    assert keys.last_recorded("select", tmp_path, "code") is None  # no run of select: still none
    caches.clear(layout, ["stages"])  # cleared again: what it kept stays
    assert keys.last_recorded("embed", tmp_path, "model") == "old model"


def test_cache_clear_empties_a_cache_moved_elsewhere_behind_a_link(tmp_path, capsys):
    (tmp_path / "project" / "tasks").mkdir(parents=True)
    (tmp_path / "project" / "tasks" / "pipeline.py").touch()
    layout = Layout(tmp_path / "project")
    elsewhere = tmp_path / "big-disk" / "embeddings"
    (elsewhere / "ab").mkdir(parents=True)
    (elsewhere / "ab" / "a.npy").write_bytes(b"x" * 1_500_000)
    layout.embed_cache.parent.mkdir(parents=True)
    layout.embed_cache.symlink_to(elsewhere)
    assert cli.main(["cache", "--root", str(layout.root), "--clear", "embeddings"]) == 0
    assert capsys.readouterr().out == "cleared embeddings: 1.5 MB freed\n"
    assert not any(elsewhere.iterdir()) and layout.embed_cache.resolve() == elsewhere.resolve()  # the link stays
    elsewhere.rmdir()  # the disk it is on not mounted: the link was deleted, and the cache came back here
    assert cli.main(["cache", "--root", str(layout.root)]) == 0
    assert f"(links to {elsewhere}, which is not there: a disk not mounted?)" in capsys.readouterr().out
    assert cli.main(["cache", "--root", str(layout.root), "--clear", "embeddings"]) == 0
    out, err = capsys.readouterr()
    assert f"warning: {layout.embed_cache} links to {elsewhere}, which is not there" in err
    assert out == "cleared nothing: 0 B freed\n"  # was "cleared embeddings"
    assert layout.embed_cache.is_symlink()


@pytest.mark.parametrize("where", ["typo", "elsewhere"])
def test_a_stage_without_its_params_file_is_one_line(tmp_path, where):
    """`python -m tasks.<stage> --params typo.yaml`, or `--root PROJECT` from a folder without params.yaml, ran every
    default (the whole built-in corpus) over the workspace's outputs."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    args = ["--params", str(tmp_path / "typo.yaml")] if where == "typo" else []
    out = subprocess.run([sys.executable, "-m", "tasks.prepare", "--root", str(tmp_path), *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "does not exist" in out.stderr, out.stderr
    assert not (tmp_path / "data" / "prepared").exists()


def test_doctor_checks_lora_layers_against_the_model(tiny_model, capsys):
    """LoRA target modules (or a rank) the model cannot take were the train stage's error, after prepare, embed and
    select had run, where doctor had passed every check."""
    assert cli.main(["doctor", "--root", str(ROOT), f"model={tiny_model}", "train.method=lora",
                     "train.lora.target_modules=[bogus]"]) == 2
    err = capsys.readouterr().err
    assert "train.lora.target_modules ['bogus'] match no Linear layer" in err and "doctor: train failed" in err
    assert cli.main(["doctor", "--root", str(ROOT), f"model={tiny_model}", "train.method=lora"]) == 0
    assert "train: lora on query, value" in capsys.readouterr().out


def test_a_stage_reads_its_params_from_a_pipe(tmp_path):
    """`python -m tasks.<stage> --params <(...)`: /dev/fd/N exists but is no regular file; the params-file check
    said it 'does not exist'."""
    from tasks.common import main

    seen = []
    read, write = os.pipe()
    os.write(write, b"select:\n  budget: 0.25\n")
    os.close(write)
    try:
        main("prepare", lambda params, layout: seen.append(params.select.budget),
             ["--params", f"/dev/fd/{read}", "--root", str(tmp_path)])
    finally:
        os.close(read)
    assert seen == [0.25]


def test_a_stage_prints_a_warning_in_one_line_as_the_cli_does(tmp_path, capsys):
    """`python -m tasks.<stage>` (what `dvc repro` runs) prints a warning as `soupline` does, one `warning: ` line
    (`errors.one_line_warnings`, which both entry points call), not Python's file, line and source line."""
    from tasks.common import main

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    main("prepare", lambda params, layout: warnings.warn("the pool is small", stacklevel=1),
         ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)])
    assert capsys.readouterr().err == "warning: the pool is small\n"


def test_an_unknown_option_after_a_command_shows_that_commands_usage(capsys):
    """`soupline run --forse` printed the top-level usage (the commands), not run's options, which hold the fix."""
    with pytest.raises(SystemExit) as err:
        cli.main(["run", "--forse"])
    assert err.value.code == 2
    out = capsys.readouterr().err
    assert out.startswith("usage: soupline run ") and "--force" in out
    assert out.strip().endswith("soupline run: error: unrecognized arguments: --forse")


def test_params_from_a_pipe_and_an_empty_params_flag(capsys):
    """`--params <(...)`: /dev/fd/N is no regular file (it was "does not exist"), and resolving it gave `pipe:[...]`,
    read as a missing file: the defaults. `--params ''` was "is a folder" (the working directory)."""
    read, write = os.pipe()
    os.write(write, b"seed: 7\n")
    os.close(write)
    try:
        assert cli.main(["params", "--root", str(ROOT), "--params", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert "\nseed: 7\n" in "\n" + capsys.readouterr().out
    assert cli.main(["params", "--root", str(ROOT), "--params", ""]) == 2
    assert capsys.readouterr().err.strip() == ("error: --params is empty; give the params file's path (or leave it "
                                               "out: params.yaml)")


def test_cache_sizes_count_no_bytes_a_hard_link_shares_with_a_file_outside(tmp_path, capsys):
    """A stopped train run keeps each finished ingredient on the ingredient cache as hard links to the one in place:
    `soupline cache` counted their bytes as the cache's, which clearing it would not free; two links inside one
    cache count once."""
    import os

    from tasks import caches

    layout = Layout(tmp_path)
    placed = layout.ingredients / "lr0.001-seed0" / "model.safetensors"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"x" * 1_000_000)
    kept = layout.ingredient_cache / "k1" / "model.safetensors"
    kept.parent.mkdir(parents=True)
    os.link(placed, kept)
    (layout.ingredient_cache / "k2").mkdir()
    (layout.ingredient_cache / "k2" / "w").write_bytes(b"x" * 300_000)
    os.link(layout.ingredient_cache / "k2" / "w", layout.ingredient_cache / "k2" / "w2")
    assert caches.usage(layout)["ingredients"] == (3, 300_000)
    assert caches.clear(layout, ["ingredients"]) == (["ingredients"], 300_000)
    assert placed.read_bytes() == b"x" * 1_000_000


def test_per_label_counts_wrap_between_labels():
    """select and prepare printed one line per split of every label's count: 657 characters at 40 labels. Lines of at
    most 110 characters now, broken between labels only (a name may hold spaces), every count still there."""
    from tasks.common import wrapped

    items = [f"label {i:02d} name={i * 3}" for i in range(40)]
    text = wrapped("select: kmeans chose 412/4120 examples; per label ", items)
    lines = text.splitlines()
    assert len(lines) > 5 and all(len(line) <= 110 for line in lines)
    assert all(line.startswith("  label ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines).endswith(", ".join(items))
    assert wrapped("  pool       ", ["a=1", "b=2"], sep="  ", indent=13) == "  pool       a=1  b=2"


def test_cache_counts_and_clears_the_study_cells_own_caches(tmp_path, capsys):
    """A study cell stopped in train keeps its checkpoints in data/study/cells/<cell>/data/cache/checkpoints; a cell
    dropped from the grid is never run again, and `soupline cache` listed 0 B of checkpoints and cleared none."""
    from tasks import caches

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "pipeline.py").touch()
    layout = Layout(tmp_path)
    cell = layout.study_cells / "random-b0.1-s0"
    (cell / "data" / "cache" / "checkpoints").mkdir(parents=True)
    (cell / "data" / "cache" / "checkpoints" / "lr0.01-seed0-abc.pt").write_bytes(b"x" * 43_500)
    (cell / "cell.json").write_text("{}")
    assert caches.usage(layout)["checkpoints"] == (1, 43_500)
    assert cli.main(["cache", "--root", str(tmp_path), "--clear", "checkpoints"]) == 0
    assert capsys.readouterr().out == "cleared checkpoints: 43.5 kB freed\n"
    assert not (cell / "data" / "cache" / "checkpoints").exists() and (cell / "cell.json").exists()


def test_cache_gc_deletes_what_no_run_of_the_params_reads_and_the_next_run_recomputes_nothing(tmp_path, tiny_model,
                                                                                               capsys):
    """data/cache/embeddings kept every data x model x max_length x batch_size a workspace ever embedded (3 .npy
    each), as the run records kept every key and a stopped sweep its checkpoints: nothing pruned them but --clear,
    which costs the next run its embeddings. `--gc` deletes what no run of the params reads, as `dvc gc -w`."""
    from tasks import study
    from tasks.common import workspace_lock
    from tests.conftest import tiny_project

    root = tiny_project(tmp_path / "project", tiny_model)
    layout, small = Layout(root), ["train.learning_rates=[1e-2]", "train.seeds=[0]", "--root", str(root)]
    assert cli.main(["run", *small, "embed.max_length=24", "evaluate.batch_size=7"]) == 0  # garbage once changed
    assert cli.main(["run", *small]) == 0
    in_grid = next(iter(study.cells(config.load(root / "params.yaml"))))
    for path in (layout.checkpoints / "lr0.01-seed0-0123456789ab.pt", layout.head_cache / "0123456789ab.safetensors",
                 layout.study_cells / "kmeans-b5-s9" / "data" / "cache" / "heads" / "h.safetensors",
                 layout.study_cells / in_grid / "data" / "cache" / "heads" / "h.safetensors"):
        path.parent.mkdir(parents=True, exist_ok=True)  # another sweep's, a cell's out of the study's grid and in it
        path.write_bytes(b"x" * 1000)

    def cached() -> set[str]:  # less the digests memo, written whenever hashed files are 2 s old (timing, not work)
        return {str(p.relative_to(root)) for p in layout.data.rglob("*")
                if "cache" in p.parts and p.is_file() and p != layout.digests}

    before = cached()
    embeddings = {p for p in before if p.startswith("data/cache/embeddings/")}
    assert len(embeddings) == 12  # pool, validation, test at two lengths: .npy and .truncated.json each
    capsys.readouterr()
    assert cli.main(["cache", "--gc", "--dry-run", *small]) == 0
    out = capsys.readouterr().out.splitlines()
    assert cached() == before  # a dry run deletes nothing
    listed = {line.split()[2] for line in out if line.startswith("would delete ")}
    assert len(listed & embeddings) == 6 and {"data/cache/checkpoints/lr0.01-seed0-0123456789ab.pt",
                                             "data/cache/heads/0123456789ab.safetensors",
                                             "data/study/cells/kmeans-b5-s9/data/cache/heads"} <= listed
    assert any(p.startswith("data/cache/stages/embed/") for p in listed)  # the max_length=24 run's record
    assert out[len(listed)].startswith("would free ") and "(embeddings " in out[len(listed)]
    assert any(p.startswith("data/cache/evaluations/") for p in listed)  # the metrics at the old batch size
    assert [line.split(":")[1].strip() for line in out if line.startswith("left whole: ")] == [
        "data/cache/ingredients", "data/cache/soups", "data/cache/prefect",  # the others judged: all is up to date
        "data/cache/digests", "data/study/cells/*/data/cache"]
    assert out[-1].endswith(f"the caches of 1 study cell(s) in the grid ({in_grid}): a cell runs from them again when "
                            "its inputs change")
    with workspace_lock(layout, "soupline run"):  # not while a run may be writing the caches
        assert cli.main(["cache", "--gc", *small]) == 2
    assert "in use by `soupline run`" in capsys.readouterr().err and cached() == before
    assert cli.main(["cache", "--gc", *small]) == 0
    assert capsys.readouterr().out.startswith("freed ")
    after = cached()
    assert after == {p for p in before if not any(p == d or p.startswith(d + "/") for d in listed)}

    assert cli.main(["run", *small]) == 0  # the current run records are kept: every stage up to date
    out = capsys.readouterr().out
    assert all(f"{stage}: up to date" in out for stage in ("prepare", "embed", "select", "soup", "evaluate"))
    assert cli.main(["run", "--force", *small]) == 0  # every stage again: all served from what --gc kept
    out = capsys.readouterr().out
    assert "cache hits: {'pool': True, 'validation': True, 'test': True}" in out and "evaluated before" in out
    assert "train: lr0.01-seed0: up to date" in out
    assert cached() == after  # nothing recomputed into the caches

    gotd = ["select.method=gotd", "select.gotd.target=data/raw/corpus.jsonl", "select.gotd.target_copy_threshold=null"]
    assert cli.main(["stage", "select", *small, *gotd]) == 0  # embeds its target file into the cache
    target = {p for p in cached() - after if p.startswith("data/cache/embeddings/")}
    assert len(target) == 2
    for params, kept in ((gotd, True), ([], False)):
        capsys.readouterr()
        assert cli.main(["cache", "--gc", "--dry-run", *small, *params]) == 0
        assert target.isdisjoint(capsys.readouterr().out.split()) is kept

    assert cli.main(["cache", "--gc", "--dry-run", *small, "seed=5"]) == 0  # other splits: texts not made yet
    out = capsys.readouterr().out
    assert all(f"left whole: data/cache/{name}: prepare is not up to date with these params" in out
               for name in ("embeddings", "heads", "checkpoints", "evaluations"))
    assert cli.main(["cache", "--gc", *small, "embed.max_length=1000"]) == 2  # params embed refuses: nothing judged
    assert "embed.max_length=1000" in capsys.readouterr().err and target <= cached()
    assert cli.main(["cache", "--dry-run", "--root", str(root)]) == 2
    assert capsys.readouterr().err == "error: --dry-run goes with --gc: `soupline cache --gc --dry-run` lists what " \
                                      "--gc would delete\n"


@pytest.mark.parametrize("stage, setting", [("train", "train.batch_size"), ("embed", "embed.batch_size"),
                                            ("evaluate", "evaluate.batch_size")])
def test_a_stage_out_of_gpu_memory_is_one_line_naming_its_batch_settings(tmp_path, capsys, stage, setting):
    """torch's OutOfMemoryError (a batch too large for the GPU) was a traceback ending in a page on allocator
    settings; now one line: what ran out, the allocation (not the rest of torch's text), and what to lower."""
    import torch

    from tasks.common import main

    def too_large(params, layout):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                                     "79.11 GiB of which 6.50 MiB is free. If reserved but unallocated memory is large "
                                     "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")

    (tmp_path / "params.yaml").write_text("device: cpu\n")
    with pytest.raises(SystemExit) as code:
        main(stage, too_large, ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.strip().splitlines() == [err.strip()], err
    assert err.startswith(f"error: {stage} ran out of memory on cpu (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert setting in err and "PYTORCH_CUDA_ALLOC_CONF" not in err


def test_a_stage_out_of_host_memory_is_one_line(tmp_path, capsys):
    """numpy's MemoryError (GOT-D's cost matrices on a large pool) is the same one line, naming the host."""
    from tasks.common import main

    def too_large(params, layout):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000) and data type float64")

    (tmp_path / "params.yaml").write_text("select:\n  method: gotd\n")
    with pytest.raises(SystemExit) as code:
        main("select", too_large, ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)])
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.strip().splitlines() == [err.strip()], err
    assert err.startswith("error: select ran out of memory on the host (Unable to allocate 74.5 GiB") and \
        "select.gotd.max_pool_for_ot" in err and "nvidia-smi" not in err


def test_another_error_in_a_stage_keeps_its_traceback(tmp_path):
    """Only torch's out-of-memory error becomes a user's line (`timed`): a bug is not hidden as one."""
    from tasks.common import main

    def buggy(params, layout):
        raise RuntimeError("a bug")

    (tmp_path / "params.yaml").write_text("{}")
    with pytest.raises(RuntimeError, match="a bug"):
        main("train", buggy, ["--params", str(tmp_path / "params.yaml"), "--root", str(tmp_path)])

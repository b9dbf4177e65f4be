"""The CLI: its commands, and one-line errors with exit code 2."""

from soupline import cli
from tests.conftest import ROOT


def test_commands_are_all_wired():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMANDS)


def test_params_command_applies_overrides(capsys):
    assert cli.main(["params", "--root", str(ROOT), "select.budget=0.25"]) == 0
    assert "budget: 0.25" in capsys.readouterr().out


def test_bad_override_is_one_line(capsys):
    assert cli.main(["run", "--root", str(ROOT), "select.metod=random"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params: unknown key 'select.metod' (did you mean 'select.method'?)"


def test_not_a_project(tmp_path, capsys):
    assert cli.main(["run", "--root", str(tmp_path)]) == 2
    assert "not a soupline project" in capsys.readouterr().err


def test_missing_model_path(capsys):
    assert cli.main(["doctor", "--root", str(ROOT), "model=./no/such/model"]) == 2
    assert "model path './no/such/model' does not exist" in capsys.readouterr().err


def test_hub_id_offline(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["doctor", "--root", str(ROOT), "model=someone/some-model"]) == 2
    assert "cannot be fetched from the hub" in capsys.readouterr().err


def test_study_bad_grid_is_one_line(capsys):
    assert cli.main(["study", "--root", str(ROOT), "study.budgets=[0.1, 1.5]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params: study.budgets: a fractional budget must be in (0, 1]") and "\n" not in err

"""The Prefect flows refuse a params file that does not exist, in one line, before Prefect starts.

Before, `python -m flows.pipeline --params nope.yaml` (or a `--root` naming the wrong folder) read no file
and ran the default pipeline, the whole built-in corpus with the default model, in that folder.
"""

import pytest

pytest.importorskip("prefect")

from flows import pipeline as pipeline_flow  # noqa: E402
from flows import study as study_flow  # noqa: E402
from soupline import config  # noqa: E402
from soupline.errors import SouplineError  # noqa: E402


@pytest.mark.parametrize("main", [pipeline_flow.main, study_flow.main], ids=["pipeline", "study"])
def test_missing_params_file_is_one_line(main, tmp_path, capsys):
    assert main(["--root", str(tmp_path), "--params", "nope.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params file ") and "nope.yaml does not exist" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()  # nothing ran, no workspace made


@pytest.mark.parametrize("main", [pipeline_flow.main, study_flow.main], ids=["pipeline", "study"])
def test_root_without_params_yaml_is_one_line(main, tmp_path, capsys):
    assert main(["--root", str(tmp_path / "elsewhere")]) == 2
    assert "params.yaml does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("main", [pipeline_flow.main, study_flow.main], ids=["pipeline", "study"])
def test_a_params_file_this_user_may_not_read_is_one_line(main, tmp_path, capsys, monkeypatch):
    """A PermissionError is the user's to fix, as in the CLI and the stage entry points (were: a traceback)."""
    from tests.test_cli import _deny

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    _deny(monkeypatch, tmp_path)
    assert main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: permission denied: ") and "params.yaml" in err
    assert len(err.splitlines()) == 1


def test_flow_functions_check_it_too(tmp_path):
    """A deployment passes params_path and root to the flow function itself (no CLI in between)."""
    with pytest.raises(SouplineError, match="does not exist"):
        pipeline_flow.pipeline.fn(params_path="nope.yaml", root=str(tmp_path))
    with pytest.raises(SouplineError, match="does not exist"):
        study_flow.study_flow.fn(params_path="nope.yaml", root=str(tmp_path))


def test_existing_file_and_folder(tmp_path):
    (tmp_path / "p.yaml").write_text("select:\n  budget: 0.2\n")
    assert config.load_existing(tmp_path / "p.yaml", ["seed=1"]).select.budget == 0.2
    with pytest.raises(SouplineError, match="is a folder"):
        config.load_existing(tmp_path)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_train_workers_setting_is_one_line(value):
    """SOUPLINE_TRAIN_WORKERS is read when the flow module is imported: one line, before Prefect starts, and exit code
    2, as every other bad input (it was 1)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", "import flows.pipeline"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "SOUPLINE_TRAIN_WORKERS": value})
    assert out.returncode == 2 and out.stderr == (f"error: SOUPLINE_TRAIN_WORKERS={value!r}: give a whole number "
                                                  ">= 1 (1: one ingredient at a time, in the flow's process)\n")

"""The project's .gitignore, as git and as DVC (whose gitignore matcher is dulwich's) read it."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

TRACKED = ["data/.gitkeep", "data/raw/tickets.jsonl.dvc", "data/raw/.gitignore", "data/metrics/metrics.json",
           "data/metrics/plots/models.csv", "data/curves/train_loss.tsv", "data/reports/report.md"]
IGNORED = ["data/prepared/pool.parquet", "data/embeddings/pool.npy", "data/metrics/details.json",
           "data/cache/stages/x.json", "data/.soupline.lock", "data/models/ingredients/a/model.safetensors"]


@pytest.fixture
def project(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    for path in TRACKED + IGNORED:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    return tmp_path


def test_git_tracks_the_raw_data_folder_and_the_uncached_outputs_only(project):
    ignored = subprocess.run(["git", "check-ignore", *TRACKED, *IGNORED], cwd=project, capture_output=True,
                             text=True).stdout.split()
    assert sorted(ignored) == sorted(IGNORED)


def test_dvc_sees_a_dvc_file_under_data_raw(project, monkeypatch):
    """README "Use your own data": `dvc add data/raw/tickets.jsonl`. With `/data/*` in .gitignore DVC's matcher
    called data/ itself ignored, never collected data/raw/tickets.jsonl.dvc, and `dvc exp run` (its checkout)
    deleted data/raw/tickets.jsonl as an unused link."""
    import logging

    from dvc.repo import Repo

    for name in ("dvc", "dvc_objects", "dvc_data"):  # `import dvc` bound its log handlers to the sys.stdout of then:
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])  # under an earlier test's capsys, closed by now
    (project / "data/raw/tickets.jsonl.dvc").unlink()
    (project / "data/raw/.gitignore").unlink()
    (project / "data/raw/tickets.jsonl").write_text('{"text": "a", "label": "x"}\n')
    monkeypatch.chdir(project)
    Repo.init(str(project))
    with Repo(str(project)) as repo:
        assert not repo.scm.is_ignored(str(project / "data") + "/")
        repo.add("data/raw/tickets.jsonl")
    with Repo(str(project)) as repo:
        assert "data/raw/tickets.jsonl.dvc" in [stage.addressing for stage in repo.index.stages]

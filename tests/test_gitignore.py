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


def test_dvc_ignores_the_dot_files_soupline_hashes_leave_out(project, monkeypatch):
    """A .DS_Store in an ingredient folder (an output) or in data/raw (a dep), an editor's swap file in a code folder
    (src/soupline/select): soupline's hashes leave dot-files out (`artifacts.hidden`), and so must DVC's, else `dvc
    status` calls train's output modified, and `dvc repro` runs it, where `soupline status` says up to date."""
    import logging

    from dvc.repo import Repo

    for name in ("dvc", "dvc_objects", "dvc_data"):  # as above: no handler bound to an earlier test's closed stdout
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])
    shutil.copy(ROOT / ".dvcignore", project / ".dvcignore")
    litter = ["data/models/ingredients/a/.DS_Store", "data/raw/._tickets.jsonl", "src/soupline/select/.kmeans.py.swp"]
    content = ["data/models/ingredients/a/model.safetensors", "data/raw/tickets.jsonl", "src/soupline/select/kmeans.py"]
    for path in litter + content:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).touch()
    Repo.init(str(project))
    with Repo(str(project)) as repo:
        assert [path for path in litter + content if repo.dvcignore.is_ignored_file(str(project / path))] == litter

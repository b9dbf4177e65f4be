"""README's Guarantees: a `soupline run` killed by SIGKILL anywhere (mid-stage, mid-training, with an output built
but not yet renamed into place, inside the closing `dvc commit`) and run again ends with the outputs of a run that
never stopped, byte for byte, with `dvc status` clean and no temporary left."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cmd, tiny_project

# Run `soupline run` in the project, SIGKILLing itself at the `nth` rename (os.replace / os.rename: every write of
# soupline's and DVC's lands by one) whose destination matches `pattern`, `before` or `after` it.
KILL_AT_RENAME = """
import os, re, signal, sys
pattern, nth, when = re.compile(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seen = 0
def hooked(real):
    def rename(src, dst, *args, **kwargs):
        global seen
        hit = bool(pattern.search(os.path.relpath(str(dst)))) and (seen := seen + 1) == nth
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(src, dst, *args, **kwargs)
        if hit:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no clean-up, no finally blocks
        return out
    return rename
os.replace, os.rename = hooked(os.replace), hooked(os.rename)
from soupline import cli
sys.exit(cli.main(["run"]))
"""

# Each kill lands further on than the one before, as the runs go on from where it left them: embed between its
# splits, training after the first ingredient's second checkpoint, the second ingredient built but not moved into
# place, a soup likewise, metrics.json not yet written, and the closing `dvc commit` with DVC's cache half-filled.
KILLS = [(r"^data/embeddings/pool\.npy$", 1, "after"), (r"^data/cache/checkpoints/.*\.pt$", 2, "after"),
         (r"^data/models/ingredients/lr0\.005-seed1$", 1, "before"), (r"^data/soups/ties$", 1, "before"),
         (r"^data/metrics/metrics\.json$", 1, "before"), (r"^\.dvc/cache/files/", 5, "after")]


def _project(root: Path, tiny_model: str) -> Path:
    """The tiny project with a checkpoint every 2 steps (of 6 per ingredient)."""
    tiny_project(root, tiny_model)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["checkpoint_every"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "commit", "-qam", "checkpoints"], root)
    return root


def _outputs(root: Path) -> dict[str, str]:
    """sha256 of every output file but the timings (the report's among them), which differ from run to run."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*")) if p.is_file() and p.relative_to(root).parts[1]
            not in ("raw", "cache", "timings", "reports") and p.name != "train_timing.json" and p.suffix != ".lock"}


@pytest.mark.slow
def test_a_run_killed_anywhere_and_run_again_ends_with_the_outputs_of_one_never_killed(tmp_path, tiny_model):
    reference = _project(tmp_path / "reference", tiny_model)
    run_cmd(["soupline", "run"], reference)
    killed = _project(tmp_path / "killed", tiny_model)
    said = ""
    for pattern, nth, when in KILLS:
        proc = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, pattern, str(nth), when], cwd=killed,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == -9, f"{pattern} was not reached:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        said += proc.stdout + proc.stderr
    said += run_cmd(["soupline", "run"], killed)
    assert re.search(r"train: lr\S+: resumed from step 4", said)
    assert re.search(r"removed \d+ temporary", said)  # the kills left them
    assert _outputs(killed) == _outputs(reference)
    assert "Data and pipelines are up to date." in run_cmd(["dvc", "status"], killed)
    assert run_cmd(["soupline", "status"], killed).splitlines()[-1] == "everything is up to date"
    assert not [p for p in killed.rglob("*.tmp") if ".dvc" not in p.relative_to(killed).parts[:1]]

"""dvc.yaml lists, for each stage, the library and tasks/ files its code loads: a file left out is one `dvc repro`
does not re-run the stage for when it is edited (classifier.py, models.py and tasks/common.py were, for some)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]

# Loaded by every stage but shaping none of its outputs: an edit there re-runs no stage under `dvc repro`.
EXCEPTIONS = {
    "src/soupline/__init__.py": "picks the CPU's BLAS kernels (blas_kernels.py): speed",
    "src/soupline/blas_kernels.py": "the same",
    "src/soupline/errors.py": "error types and messages",
    "src/soupline/interrupt.py": "Ctrl-C handling",
    "src/soupline/select/": "loaded by config.py for the select.* params; run by the select stage, which lists it",
    "tasks/__init__.py": "a docstring",
    "tasks/dvc_lock.py": "the workspace and DVC locks, dvc.lock checks",
    "tasks/keys.py": "`soupline run`'s run records (train lists it: its ingredient keys use model_content)",
    "tasks/layout.py": "output paths, which dvc.yaml names itself",
}


def loaded_files(stage: str) -> set[str]:
    """The soupline and tasks/ files `import tasks.<stage>` loads, in a fresh interpreter, relative to the root.
    Imports inside functions are not seen: dvc.yaml lists those by hand."""
    code = ("import json, sys, tasks.%s; print(json.dumps([m.__file__ for m in list(sys.modules.values()) "
            "if m.__name__.split('.')[0] in ('soupline', 'tasks') and getattr(m, '__file__', None)]))" % stage)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    import soupline  # the library as the subprocess finds it: src/ here, or an installed copy

    library = Path(soupline.__file__).resolve().parent
    files = set()
    for f in map(Path, json.loads(out)):
        f = f.resolve()
        files.add(str(Path("src/soupline") / f.relative_to(library)) if f.is_relative_to(library)
                  else str(f.relative_to(ROOT)))
    return files


def covered(path: str, entries: list[str]) -> bool:
    """Whether `path` is one of `entries` or under one of them (a folder)."""
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in entries)


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_list_every_file_its_code_loads(stage):
    deps = [d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage]["deps"]]
    files = loaded_files(stage)
    assert f"tasks/{stage}.py" in files  # the check sees the stage's own module
    missing = sorted(f for f in files if not covered(f, deps) and not covered(f, list(EXCEPTIONS)))
    assert missing == [], f"dvc.yaml: stage {stage} loads {missing}; add them to its deps (or to EXCEPTIONS here)"


def test_exceptions_name_files_that_exist():
    assert all((ROOT / path).exists() for path in EXCEPTIONS)

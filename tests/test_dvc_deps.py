"""dvc.yaml lists, for each stage, the library and tasks/ files its code loads: a file left out is one `dvc repro`
does not re-run the stage for when it is edited (classifier.py, models.py and tasks/common.py were, for some)."""

import ast
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
    "src/soupline/__init__.py": "picks the CPU's BLAS kernels (blas_kernels.py): speed; the version; STAGE_NAMES, "
                                "the stage order (a new stage is a dvc.yaml edit too)",
    "src/soupline/blas_kernels.py": "the same",
    "src/soupline/errors.py": "error types and messages",
    "src/soupline/interrupt.py": "Ctrl-C handling",
    "src/soupline/select/": "loaded by config.py for the select.* params; run by the select stage, which lists it",
    "src/soupline/soup_methods.py": "loaded by config.py for the soup.* params; run by the soup stage, which lists it",
    "src/soupline/self_training.py": "select: check_budgets' pseudo-label count check, called only by the drivers "
                                     "before embed (train, which pseudo-labels, lists it)",
    "tasks/__init__.py": "a docstring",
    "tasks/dvc_lock.py": "the workspace and DVC locks, dvc.lock checks",
    "tasks/keys.py": "`soupline run`'s run records (train lists it: its ingredient keys use model_content)",
    "tasks/layout.py": "output paths, which dvc.yaml names itself",
}


# The tasks/ and soupline modules a stage's own file imports inside functions (where `import tasks.<stage>` does
# not load them), by hand; test_late_imports_are_listed checks the list is complete.
LATE_IMPORTS = {
    "prepare": ("soupline.data",),  # in run: `soupline status` and an up-to-date `soupline run` import no pandas
    "embed": ("soupline.data",),  # the same
    "report": ("tasks.train",),  # the unbuilt-ingredient warning
    "train": ("soupline.self_training",),  # in pseudo_labelled: soup, evaluate and report import tasks.train
}


def loaded(modules: tuple[str, ...]) -> dict[str, str]:
    """Name -> file of each soupline and tasks/ module that importing `modules` loads, in a fresh interpreter."""
    code = ("import json, sys, %s; print(json.dumps({m.__name__: m.__file__ for m in list(sys.modules.values()) "
            "if m.__name__.split('.')[0] in ('soupline', 'tasks') and getattr(m, '__file__', None)}))"
            % ", ".join(modules))
    return json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                     check=True).stdout)


def loaded_files(stage: str) -> set[str]:
    """The soupline and tasks/ files `import tasks.<stage>` and its LATE_IMPORTS load, relative to the root."""
    import soupline  # the library as the subprocess finds it: src/ here, or an installed copy

    library = Path(soupline.__file__).resolve().parent
    files = set()
    for f in map(Path, loaded((f"tasks.{stage}", *LATE_IMPORTS.get(stage, ()))).values()):
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


def late_imports(path: Path) -> set[str]:
    """The tasks/ and soupline modules `path` imports inside its functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    found.add(inner.module)
                elif isinstance(inner, ast.Import):
                    found.update(alias.name for alias in inner.names)
    return {m for m in found if m.split(".")[0] in ("soupline", "tasks")}


@pytest.mark.parametrize("stage", list(STAGES))
def test_late_imports_are_listed(stage):
    """A module the stage's file imports inside a function is in LATE_IMPORTS, so the deps check above sees it
    (or the module import already loads it)."""
    on_import = loaded((f"tasks.{stage}",))
    unseen = sorted(m for m in late_imports(ROOT / "tasks" / f"{stage}.py")
                    if m not in LATE_IMPORTS.get(stage, ()) and m not in on_import)
    assert unseen == [], f"tasks/{stage}.py imports {unseen} inside functions; add them to LATE_IMPORTS[{stage!r}]"


def test_the_stages_after_prepare_list_the_prepared_files_they_read_not_the_folder():
    """summary.json names the source file: a stage depending on all of data/prepared re-ran on the same data renamed
    or converted. The study's cell key hashes the same files (Layout.prepared_data)."""
    from tasks.layout import Layout

    read = {str(p) for p in Layout(Path("")).prepared_data}
    for stage in ("embed", "select", "train", "soup", "evaluate"):
        prepared = [d for d in STAGES[stage]["deps"] if d.startswith("data/prepared")]
        assert prepared and set(prepared) <= read, stage
    assert [d for d in STAGES["report"]["deps"] if d.startswith("data/prepared")] == ["data/prepared/summary.json"]

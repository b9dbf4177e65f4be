"""Cache keys for the Prefect tasks, made from what dvc.yaml says each stage depends on.

A stage's key hashes the *content* of its deps in dvc.yaml (data under `data/` is read in
the workspace root, code where Python imported it from), the values of its params keys in
dvc.yaml, the soupline library's `source_digest()`, and the ingredient's (lr, seed) for
`train`. `prepare` also hashes its source files (`prepare.source` / `prepare.splits`), which
dvc.yaml cannot list because they are params. Reading dvc.yaml (not a copy of it) keeps
the two drivers keyed on the same things: add a dep there and both notice it.

`outputs_hash` is the content of a stage's outs/metrics/plots: a cache hit is only trusted
while the files on disk still hash to what the cached run wrote.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from soupline.artifacts import sha256_file, sha256_obj, sha256_tree, source_digest
from soupline.config import Params

CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout whose dvc.yaml describes the stages


def _dvc_stages() -> dict[str, Any]:
    return yaml.safe_load((CODE_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _paths(entries: list) -> list[str]:
    """`[a, {b: {cache: false}}]` -> `[a, b]` (dvc.yaml's two spellings of a path)."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def _render(path: str, item: dict[str, Any]) -> str:
    """Fill `${item.lr}` the way DVC renders a matrix item (str of the value)."""
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), path)


def stage_spec(stage: str, **item: Any) -> dict[str, list]:
    """The stage's deps, params keys and outputs (outs + metrics + plots) as dvc.yaml lists them."""
    spec = _dvc_stages()[stage]
    outs = [_render(p, item) for k in ("outs", "metrics", "plots") for p in _paths(spec.get(k, []))]
    return {"deps": _paths(spec.get("deps", [])), "params": spec.get("params", []), "outs": outs}


def content(path: Path) -> str | None:
    """Content hash of a file or folder; None when it does not exist."""
    return sha256_tree(path) if path.exists() else None


def code_content(path: Path) -> str | None:
    """Content hash of source code: a folder's `__pycache__` changes whenever Python compiles, so it is left out."""
    if not path.is_dir():
        return content(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return sha256_obj({str(f.relative_to(path)): sha256_file(f) for f in files})


def dep_path(dep: str, root: Path) -> Path:
    """Where a dvc.yaml dep is read: data in the workspace; code where Python imports it from
    (`src/soupline/x.py` -> the imported soupline package, which may be an installed copy)."""
    if dep.startswith("data/"):
        return root / dep
    parts = Path(dep).parts
    parts = parts[1:] if parts[0] == "src" else parts
    module = sys.modules.get(parts[0])
    base = Path(module.__file__).resolve().parent if module and getattr(module, "__file__", None) else None
    return base.joinpath(*parts[1:]) if base else CODE_ROOT / dep


def dep_content(dep: str, root: Path) -> str | None:
    return (content if dep.startswith("data/") else code_content)(dep_path(dep, root))


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _source_files(params: Params) -> list[str]:
    """prepare's input files: `prepare.source` (if it is a path) or the three split files."""
    p = params.prepare
    names = list(p.splits.model_dump().values()) if p.splits else [p.source]
    return [n for n in names if Path(n).exists()]  # relative to the working directory, as prepare reads them


def stage_key(stage: str, params: Params, root: Path, **item: Any) -> str:
    """`soupline-<stage>[-lr..-seed..]-<sha256>`: equal keys mean equal inputs, params and code."""
    spec = stage_spec(stage, **item)
    values = params.model_dump(mode="json")
    parts = {
        "stage": stage,
        "item": item,
        "deps": {d: dep_content(d, root) for d in spec["deps"]},
        "params": {k: _lookup(values, k) if isinstance(k, str) else k for k in spec["params"]},
        "sources": {s: content(Path(s)) for s in _source_files(params)} if stage == "prepare" else {},
        "library": source_digest(),
    }
    name = stage + "".join(f"-{k}{v}" for k, v in item.items())
    return f"soupline-{name}-{sha256_obj(parts)}"


def outputs_hash(stage: str, root: Path, **item: Any) -> str:
    return sha256_obj({o: content(root / o) for o in stage_spec(stage, **item)["outs"]})

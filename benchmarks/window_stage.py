"""Screen (issue 7): long posts read as windows of `train.max_length` tokens, paired with the default recipe.

    python benchmarks/window_stage.py                           # 20newsgroups (3,000 docs), budget 10 %, seed 0
    python benchmarks/window_stage.py --windows 4 --overlap 0
    python benchmarks/window_stage.py --score data/bench/recipe-20newsgroups/data/study/cells/*/default

The recipe cuts every text at 128 tokens: the median 20newsgroups post is 186 tokens, 68 % are longer than 126 and a
third longer than 254, so the model reads about a third of the tokens. A post is cut into windows of max_length tokens
(the fast tokenizer's overflowing tokens; `--overlap` tokens shared by neighbours), each kept as its span of the post's
characters. Scored (no training needed): the test accuracy from the first window (the recipe's) and from the mean of the
logits over the first `--windows` windows and over all of a post's windows. Arms: `default` (the recipe) and
`windows-w<W>-o<overlap>`: every selected post's first W windows, each a training example with the post's label, at the
default's optimizer steps (84 at 210 posts; the recipe's rule, epochs x batches, would raise them with the examples, and
the compute with them); validation (early stopping, val_accuracy) reads first windows as in the recipe. Both arms train
on the same selection (recipe_quality.py's workspace: the same prepare, embed and kmeans pick), LP-FT head, learning
rate, seed, steps and batch size. `--score FOLDER...` scores finished ingredients (on this workspace's test split) and
trains nothing; `--max-length 256` with it reads 256-token windows (the first: the recipe at 256 at test time only).
Results go to the workspace's study cells folder, window-w<W>-o<overlap>-results.json (an arm finished under
these settings is not trained again; one finished under others stops the run: `run_screen`) and the table is printed;
docs/recipe_quality_20newsgroups_remedies.md reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SCORES = ("window_accuracy", "window_macro_f1", "all_windows_accuracy", "all_windows_macro_f1")


def parse_args(argv=None):
    from setfit_stage import screen_parser

    p = screen_parser(__doc__)
    p.add_argument("--windows", type=int, default=4, help="windows per post, first ones (trained on, and averaged)")
    p.add_argument("--overlap", type=int, default=0, help="tokens each window shares with the one before")
    p.add_argument("--score", type=Path, nargs="+", help="only score these finished ingredients' folders")
    p.add_argument("--max-length", type=int, help="with --score: a window's tokens (default train.max_length)")
    args = p.parse_args(argv)
    if args.windows < 1:
        p.error(f"--windows {args.windows}: at least 1")
    if args.max_length is not None and (not args.score or args.max_length < 8):
        p.error(f"--max-length {args.max_length}: with --score only, and at least 8")
    if args.overlap < 0:
        p.error(f"--overlap {args.overlap}: at least 0")
    missing = [str(f) for f in args.score or () if not (f / "train_info.json").exists()]
    if missing:
        p.error(f"--score {missing[0]}: not a finished ingredient (no train_info.json)")
    return args


def windows(tokenizer, texts: list[str], max_length: int, overlap: int, limit: int | None):
    """Each text's first `limit` (None: all) windows of max_length tokens, special tokens included, neighbours sharing
    `overlap` tokens, as their character spans of the text; and the index of each window's text."""
    content = max_length - tokenizer.num_special_tokens_to_add()
    if not 0 <= overlap < content:
        raise SystemExit(f"--overlap {overlap}: below the {content} tokens a window holds")
    enc = tokenizer(texts, truncation=True, max_length=max_length, stride=overlap, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    spans, owner, seen = [], [], np.zeros(len(texts), dtype=int)
    for k, text_index in enumerate(enc["overflow_to_sample_mapping"]):
        if limit is not None and seen[text_index] == limit:
            continue
        seen[text_index] += 1
        chars = [span for span, special in zip(enc["offset_mapping"][k], enc.sequence_ids(k)) if special is not None]
        spans.append(texts[text_index][chars[0][0]:chars[-1][1]] if chars else "")
        owner.append(text_index)
    return spans, np.array(owner)


def window_scores(folder: Path, texts: list[str], y: np.ndarray, names: list[str], max_length: int, overlap: int,
                  limit: int) -> dict:
    """Test accuracy and macro-F1 of the ingredient in `folder` from the mean of its logits over each text's first
    `limit` windows (`window_*`) and over all its windows (`all_windows_*`)."""
    from soupline.classifier import load_classifier
    from soupline.evaluate import metrics, predict_logits, tokenize
    from soupline.models import load_tokenizer

    tok = load_tokenizer(folder)
    spans, owner = windows(tok, texts, max_length, overlap, None)
    logits = predict_logits(load_classifier(folder), tok, tokenize(tok, spans, max_length), 64, "cpu")
    rank = np.arange(len(owner)) - np.searchsorted(owner, owner)  # each window's place in its text
    out = {}
    for prefix, keep in (("window", rank < limit), ("all_windows", rank >= 0)):
        mean = np.zeros((len(texts), logits.shape[1]))
        np.add.at(mean, owner[keep], logits[keep])
        m = metrics(mean / np.bincount(owner[keep], minlength=len(texts))[:, None], y, names)
        out.update({f"{prefix}_accuracy": m["accuracy"], f"{prefix}_macro_f1": m["macro_f1"]})
    return out


def test_split(layout) -> tuple[list[str], np.ndarray, list[str]]:
    """The workspace's test texts, their label ids and the label names."""
    from tasks.common import label_ids, read_labels, read_split

    names, test = read_labels(layout), read_split(layout, "test")
    return test["text"].tolist(), label_ids(test["label"], names), names


def main(argv=None) -> None:
    from setfit_stage import run_screen, test_scores

    from soupline import config
    from soupline import train as train_module
    from soupline.models import load_tokenizer
    from tasks.layout import Layout

    args = parse_args(argv)
    layout = Layout(ROOT / "data" / "bench" / f"recipe-{args.corpus}")
    cfg = config.load(ROOT / "params.yaml").train
    max_length = args.max_length or cfg.max_length
    step_args = (cfg.batch_size * cfg.grad_accumulation, cfg.epochs, cfg.min_steps)

    def scores(folder: Path) -> dict:
        texts, y, names = test_split(layout)
        return window_scores(folder, texts, y, names, max_length, args.overlap, args.windows)

    if args.score:
        if not (layout.prepared / "test.parquet").exists():
            raise SystemExit(f"--score: no prepared test split in {layout.root}; run the screen first")
        for folder in args.score:
            print(folder, {"accuracy": test_scores(folder, *test_split(layout), max_length)["accuracy"],
                           **scores(folder)}, flush=True)
        return

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        if arm == "default":
            info = cell.fit(cell.model, arm)
        else:
            spans, owner = windows(load_tokenizer(cell.model), cell.texts, cell.max_length, args.overlap, args.windows)
            steps = train_module.total_steps(len(cell.texts), *step_args)  # the default's, on the selection's posts
            info = cell.fit(cell.model, arm, texts=spans, y=cell.y[owner], steps=steps)
        return info, {"train_examples": info["examples"], "steps": info["steps"], **scores(cell.root / arm)}

    tag = f"w{args.windows}-o{args.overlap}"  # the default's window scores read them too: another tag, other rows
    shaping = {"windows": args.windows, "overlap": args.overlap}
    run_screen(args, f"window-{tag}", {"default": shaping, f"windows-{tag}": shaping}, train_arm,
               ("train_examples", "steps", *SCORES))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)

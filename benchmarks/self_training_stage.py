"""Screen (issue 7): self-training on the pool's unselected texts with pseudo-labels, paired with the default recipe.

    python benchmarks/self_training_stage.py                    # 20newsgroups (3,000 docs), 10 %, seed 0, 2x and 4x
    python benchmarks/self_training_stage.py --multiples 2 --seed 1
    python benchmarks/self_training_stage.py --multiples 2 --default-steps 240 --student-steps 84   # step controls

Lee 2013 ("Pseudo-Label"), Xie et al. 2020 ("Self-training with Noisy Student"): a selection method holds every pool
text and the labels are what the budget saves, so the unselected texts are unlabelled data. The default arm's
ingredient (the teacher: LP-FT on the selection) predicts them; per predicted label its most confident are kept,
class-balanced (m x the selection's size in all, split evenly over the labels; a label predicted fewer times gives
what it has), as hard labels (argmax: LP-FT's probe and cross-entropy read label ids). The student is the default
recipe again on selection + pseudo-labels, from the base encoder (LP-FT: the probe head fitted on both, then full
fine-tuning at the same rate, seed and epochs, so its steps grow with its data: 3x the default's at m = 2), so it
stays an ingredient of the base model, soupable with the others, and its dropout is the noise; it does not go on
from the teacher, whose own most confident labels it already fits (their mean cross-entropy under the teacher is
printed and recorded: near 0, little to learn). The pseudo-labels' accuracy against the pool's true labels is
recorded, never used to choose. The student's steps grow with its data, so the step controls hold an arm to another
count (the recipe otherwise unchanged): `default-steps<N>` the default on the selection alone, `st<m>x-steps<N>` the
student. Results go to the workspace's study cells folder, selftrain-results.json (a finished
arm is not trained again) and the table is printed; docs/recipe_quality_20newsgroups_remedies.md reads them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    from setfit_stage import screen_parser

    p = screen_parser(__doc__)
    p.add_argument("--multiples", type=float, nargs="+", default=[2.0, 4.0],
                   help="pseudo-labels per arm, x the selection's size")
    p.add_argument("--default-steps", type=int, nargs="+", default=[],
                   help="controls: the default held to N optimizer steps, arm default-steps<N>")
    p.add_argument("--student-steps", type=int, nargs="+", default=[],
                   help="controls: each student held to N optimizer steps, arm st<m>x-steps<N>")
    args = p.parse_args(argv)
    if min(args.multiples) <= 0:
        p.error(f"--multiples {min(args.multiples):g}: above 0")
    for option in ("default_steps", "student_steps"):
        if min(getattr(args, option), default=1) < 1:
            p.error(f"--{option.replace('_', '-')} {min(getattr(args, option))}: at least 1")
    return args


def main(argv=None) -> None:
    from setfit_stage import run_screen

    from soupline.self_training import pseudo_labels, teacher_probs

    args = parse_args(argv)
    arms = {"default": (None, None), **{f"st{m:g}x": (m, None) for m in args.multiples},  # arm: (multiple, steps)
            **{f"default-steps{n}": (None, n) for n in args.default_steps},
            **{f"st{m:g}x-steps{n}": (m, n) for m in args.multiples for n in args.student_steps}}
    predicted: dict[Path, tuple] = {}  # per cell: the teacher's probabilities over the unselected rows, once

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        multiple, steps = arms[arm]
        if multiple is None:
            info = cell.fit(cell.model, arm, steps=steps)
            return info, {"pseudo": 0, "pseudo_accuracy": None, "teacher_loss": None, "steps": info["steps"]}
        if cell.root not in predicted:
            start = time.perf_counter()
            rest = np.setdiff1d(np.arange(len(cell.pool_texts)), cell.idx)
            probs = teacher_probs(cell.root / "default", [cell.pool_texts[i] for i in rest], cell.max_length)
            predicted[cell.root] = rest, probs
            print(f"teacher: {len(rest)} unselected texts predicted in {time.perf_counter() - start:.1f} s", flush=True)
        rest, probs = predicted[cell.root]
        rows, labels = pseudo_labels(probs, round(multiple * len(cell.idx)))
        extra = {"pseudo": len(rows), "pseudo_accuracy": float((cell.pool_y[rest[rows]] == labels).mean()),
                 "teacher_loss": float(-np.log(probs[rows, labels]).mean())}
        print(f"{arm}: {extra}", flush=True)
        info = cell.fit(cell.model, arm, cell.texts + [cell.pool_texts[i] for i in rest[rows]],
                        np.concatenate([cell.y, labels]), steps)
        return info, {**extra, "steps": info["steps"]}

    run_screen(args, "selftrain", list(arms), train_arm, ("pseudo", "pseudo_accuracy", "teacher_loss", "steps"))


if __name__ == "__main__":
    main()

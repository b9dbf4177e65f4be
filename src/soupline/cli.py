"""`soupline run | stage | params | doctor`: the command line over the same stage functions as dvc.yaml.

Run it from the project root (where params.yaml, dvc.yaml and tasks/ live). Overrides use the
`dvc exp run -S` syntax: `soupline run select.method=random select.budget=0.05`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from soupline.errors import SouplineError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _workspace(args: argparse.Namespace):
    """(params, layout, tasks.pipeline) for the project at --root."""
    root = Path(args.root).resolve()
    if not (root / "tasks" / "pipeline.py").exists():
        raise SouplineError(f"{root} is not a soupline project (no tasks/pipeline.py); run from the project root "
                            "or pass --root")
    sys.path.insert(0, str(root))
    from soupline import config
    from tasks import pipeline
    from tasks.layout import Layout

    return config.load(root / args.params, args.overrides), Layout(root), pipeline


def cmd_run(args: argparse.Namespace) -> None:
    params, layout, pipeline = _workspace(args)
    pipeline.run_pipeline(params, layout, start=args.start)


def cmd_stage(args: argparse.Namespace) -> None:
    params, layout, pipeline = _workspace(args)
    pipeline.run_stage(args.name, params, layout)


def cmd_params(args: argparse.Namespace) -> None:
    import yaml

    params, _, _ = _workspace(args)
    print(yaml.safe_dump(params.model_dump(), sort_keys=False), end="")


def cmd_doctor(args: argparse.Namespace) -> None:
    """Check what a run needs: params, the base model, the device, the optional drivers."""
    import importlib.metadata as md

    from soupline.models import pick_device, resolve_model

    params, _, _ = _workspace(args)
    print(f"params: ok ({args.params})")
    print(f"model: {params.model} -> {resolve_model(params.model)}")
    print(f"device: {params.device} -> {pick_device(params.device)}")
    for pkg in ("torch", "transformers", "faiss-cpu", "POT", "peft", "dvc", "dvclive", "prefect"):
        try:
            print(f"{pkg}: {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg}: not installed")


COMMANDS = {
    "run": (cmd_run, "run the whole pipeline in this process (dvc repro runs the same stages)"),
    "stage": (cmd_stage, "run one stage"),
    "params": (cmd_params, "print the validated params with overrides applied"),
    "doctor": (cmd_doctor, "check params, model, device and installed drivers"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soupline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn)
        if name == "stage":
            p.add_argument("name", choices=["prepare", "embed", "select", "train", "soup", "evaluate", "report"])
        if name == "run":
            p.add_argument("--from", dest="start", default="prepare", help="first stage to run")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted params overrides")
        p.add_argument("--params", default="params.yaml")
        p.add_argument("--root", default=".")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
    try:
        args.fn(args)
    except SouplineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`soupline run | stage | status | study | params | cache | doctor | predict | serve`: the command line over the
same stage functions as dvc.yaml.

Run it anywhere inside the project (the folder with params.yaml, dvc.yaml and tasks/), or pass --root. Overrides
use the `dvc exp run -S` syntax: `soupline run select.method=random select.budget=0.05`.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import signal
import sys
from importlib.util import find_spec
from pathlib import Path

from soupline import STAGE_NAMES, __version__, interrupt
from soupline.errors import USER_ERRORS, SouplineError, one_line_warnings, print_error
from soupline.models import driver_environment

driver_environment()


DEFAULT_CRON = "0 2 * * *"  # `soupline serve`'s schedule: nightly at 02:00 UTC
CACHE_NAMES = ["embeddings", "ingredients", "soups", "heads", "checkpoints", "evaluations", "stages",
               "prefect", "digests"]  # tasks.caches.CACHES


def _is_project(path: Path) -> bool:
    return (path / "tasks" / "pipeline.py").exists()


def _project_root(root: str | None) -> Path:
    """--root, or the nearest folder at or above the working directory that holds tasks/pipeline.py (as git
    and dvc find their repository from a subfolder)."""
    if root is not None:
        path = Path(root).resolve()
        if not _is_project(path):
            raise SouplineError(f"{path} is not a soupline project (no tasks/pipeline.py); pass the project's folder "
                                "as --root")
        return path
    here = Path.cwd().resolve()
    found = next((p for p in (here, *here.parents) if _is_project(p)), None)
    if found is None:
        raise SouplineError(f"{here} is not in a soupline project (no tasks/pipeline.py here or above); run from the "
                            "project or pass --root")
    return found


def _workspace(args: argparse.Namespace):
    """(params, layout, tasks.pipeline) for the project (`_project`), for the commands that run or check stages."""
    params, layout = _project(args)
    from tasks import pipeline

    return params, layout, pipeline


def _project(args: argparse.Namespace):
    """(params, layout) for the project, which becomes the working directory: relative paths
    in params (prepare.source, select.gotd.target) are read from the project root, as `dvc repro` reads them.
    `--params` is read from where it was typed, else from the project root; one that exists in neither is an
    error (a typo must not run the defaults). Without tasks.pipeline, whose stage modules `soupline params` and
    `doctor` do not use (importing them, pandas included, took longer than the command's own work)."""
    root = _project_root(args.root)
    if args.params is None:
        params_file = root / "params.yaml"
    else:
        if not args.params.strip():
            raise SouplineError("--params is empty; give the params file's path (or leave it out: params.yaml)")
        # a file, or a pipe (`--params <(...)`: /dev/fd/N is no regular file)
        params_file = next((p for p in (Path(args.params), root / args.params) if p.exists() and not p.is_dir()),
                           None)
        if params_file is None:
            if any(p.is_dir() for p in (Path(args.params), root / args.params)):
                raise SouplineError(f"params file {args.params!r} is a folder; give the params file in it")
            where = {str(Path.cwd()), str(root)} if not Path(args.params).is_absolute() else set()
            raise SouplineError(f"params file {args.params!r} does not exist"
                                + (f" (in {' or '.join(sorted(where))})" if where else ""))
        # a pipe's /dev/fd/N resolves to `pipe:[...]`, which is no path: read as missing, it gave the defaults
        params_file = params_file.resolve() if params_file.is_file() else params_file.absolute()
    args.params_path = str(params_file.relative_to(root) if params_file.is_relative_to(root) else params_file)
    os.chdir(root)
    sys.path.insert(0, str(root))
    from soupline import config
    from tasks.layout import Layout

    return config.load(params_file, args.overrides), Layout(root)


def _locked(layout, what: str):
    """The workspace lock (`tasks.common.workspace_lock`): one run at a time in a project's data/, and no
    `dvc repro` while it builds the pipeline's outputs."""
    from tasks.common import workspace_lock

    return workspace_lock(layout, what)


def _warn_stale(stale: str | None, what: str) -> None:
    """Say that `what` reads the old outputs of `stale`, a stage before it that is not up to date (None: all are)."""
    if stale:
        print(f"warning: {stale} is not up to date with these params and inputs, so {what} on what it last wrote; "
              "`soupline run` brings every stage up to date", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> None:
    params, layout, pipeline = _workspace(args)
    from tasks import keys

    with _locked(layout, "soupline run"):
        if args.start != "prepare":  # the stages before --from are not run: say when they are stale, as `stage` does
            with keys.memoized():
                _warn_stale(pipeline.stale_upstream(args.start, params, layout), f"the run from {args.start} runs")
        pipeline.run_pipeline(params, layout, start=args.start, force=args.force)


def cmd_stage(args: argparse.Namespace) -> None:
    params, layout, pipeline = _workspace(args)
    from tasks import keys

    with _locked(layout, f"soupline stage {args.name}"):
        if "device" in keys.stage_spec(args.name)["params"] or (  # prepare, report and most selections use none
                args.name == "select" and getattr(params.select, params.select.method).uses_device()):
            # one line before the stage moves its outputs aside; fp16 is train's (and dnc's finetune scorer's)
            pipeline.check_device(params.device, params.train if args.name in ("train", "select") else None)
        with keys.memoized():  # the upstream outputs it hashes are this stage's deps: hashed once for both
            stale = pipeline.stale_upstream(args.name, params, layout)
            key = keys.stage_key(args.name, params, layout.root)
        _warn_stale(stale, f"{args.name} runs")
        pipeline.run_recorded(args.name, params, layout, key)


def cmd_status(args: argparse.Namespace) -> int:
    """What `soupline run` would run, stage by stage, without running anything (as `dvc status` for DVC). Exit
    code 0 whatever it finds, as `dvc status`; with --quiet nothing is printed and the exit code is 1 when
    `soupline run` would do anything (`dvc status -q`), for scripts: `soupline status -q || soupline run`."""
    params, layout, pipeline = _workspace(args)
    from soupline.artifacts import shared_digests
    from tasks import dvc_lock, keys
    from tasks.common import workspace_holder

    if (holder := workspace_holder(layout)) and not args.quiet:
        print(f"{holder} is running in this workspace now: the stages it has yet to finish show as they were before "
              "it; `soupline status` again once it ends")
    # read-only: one `dvc status` answers every question below; what it hashes, a run after it reads no more
    with dvc_lock.one_status(), shared_digests(layout.digests):
        with keys.memoized():  # one stage's outputs are the next one's deps
            status = pipeline.stage_status(params, layout)
        todo = [name for name, why in status.items() if why is not None]
        unrecorded = pipeline.unrecorded_in_dvc(params, layout, bool(todo))  # a run killed in its `dvc commit`
        pulls = pipeline.pullable(params, layout) if todo and not args.quiet else []
    if args.quiet:
        return int(bool(todo or unrecorded))
    width = max(map(len, status))
    before = None  # the nearest stage before this one that would run: it may rewrite what this one reads
    for name, why in status.items():
        if why is None:
            why = f"up to date with the outputs on disk now (runs if {before} changes them)" if before else "up to date"
        elif before:  # `4 of 4 ingredient(s) to train` with the model switched back: all 4 restored once select ran
            why += f" (judged on the outputs on disk now: {before} runs first)"
        print(f"{name:<{width}}  {why}")
        before = name if status[name] is not None else before
    if unrecorded:
        print(f"{'dvc.lock':<{width}}  {unrecorded}")
    if todo:
        print(f"`soupline run` would run {todo[0]} and, where its outputs change, what follows")
    else:
        print("`soupline run` would run no stage, only record the outputs in dvc.lock (`dvc commit -f`)" if unrecorded
              else "everything is up to date")
    if pulls:
        print(f"dvc.lock records the outputs of {', '.join(pulls)} from these params and inputs, and they are not in "
              "this workspace: `dvc pull` fetches them (`dvc checkout` where DVC's cache holds them) instead of "
              "`soupline run` building them again")
    return 0


def cmd_cache(args: argparse.Namespace) -> None:
    """What data/cache holds, per cache; `--clear NAME ...` deletes caches (never a stage's output), `--gc` the
    entries no run of the params reads."""
    if words := [o for o in args.overrides if "=" not in o]:  # `soupline cache clear embeddings`
        raise SouplineError(f"soupline cache takes no {' '.join(words)!r}; `soupline cache` lists the caches, "
                            f"`soupline cache --clear NAME ...` deletes some ({', '.join(CACHE_NAMES)}, or all)")
    if args.dry_run and not args.gc:
        raise SouplineError("--dry-run goes with --gc: `soupline cache --gc --dry-run` lists what --gc would delete")
    if args.gc:
        _cache_gc(args)
        return
    if args.overrides or args.params:
        raise SouplineError("soupline cache reads no params (drop the params file and KEY=VALUE overrides): the "
                            "caches are the workspace's, whatever the params (only --gc reads them)")
    root = _project_root(args.root)  # no params needed: a broken params.yaml must not keep the disk full
    sys.path.insert(0, str(root))
    from tasks import caches
    from tasks.layout import Layout

    layout = Layout(root)
    if args.clear:
        with _locked(layout, "soupline cache --clear"):
            cleared, freed = caches.clear(layout, args.clear)
        print(f"cleared {', '.join(cleared) or 'nothing'}: {caches.human_size(freed)} freed")
        return
    usage = caches.usage(layout)
    width = max(len(str(caches.cache_dir(layout, n).relative_to(root))) for n in usage)
    for name, (files, size) in usage.items():
        gone = caches.dangling(caches.cache_dir(layout, name))
        print(f"{str(caches.cache_dir(layout, name).relative_to(root)):<{width}}  {caches.human_size(size):>11}  "
              f"{files:>5} file{'s' * (files != 1)}  {caches.CACHES[name]}"
              + (f" (links to {gone}, which is not there: a disk not mounted?)" if gone else ""))
    print(f"total {caches.human_size(sum(size for _, size in usage.values()))}; "
          f"`soupline cache --clear NAME ...` deletes caches ({', '.join(caches.CACHES)}, or all), "
          "`--gc [--dry-run]` what no run of the params reads")
    if dvc := caches.dvc_cache_usage(layout):
        print(f"and DVC's cache, .dvc/cache: {caches.human_size(dvc[1])} in {dvc[0]} files, every version of every "
              "stage output (each data or params edit adds its models and soups); `dvc gc -w` deletes all but the "
              "workspace's (add --all-commits to keep what your commits use)")
    if models := caches.model_cache_usage():
        folder, names, size = models
        print(f"and the unpacked built-in models, {folder}: {caches.human_size(size)} ({', '.join(names)}), this "
              "user's, shared by every workspace (`--clear` leaves it); a model deleted there is unpacked again from "
              "its installed packages on its next use")


def _cache_gc(args: argparse.Namespace) -> None:
    """`soupline cache --gc [--dry-run]`: delete (or list) the cache entries no run of the params can read
    (`caches.unused`), and name the caches it cannot judge."""
    params, layout = _project(args)
    from tasks import caches

    with _locked(layout, "soupline cache --gc"):
        unused, whole = caches.unused(params, layout)
        sizes = {path: caches.entry_size(path) for entries in unused.values() for path in entries}
        for path, size in sizes.items():
            if args.dry_run:
                print(f"would delete {path.relative_to(layout.root)}  ({caches.human_size(size)})")
            else:
                caches.delete(path)
    per_cache = ", ".join(f"{name} {caches.human_size(sum(sizes[p] for p in entries))}"
                          for name, entries in unused.items())
    print(f"{'would free' if args.dry_run else 'freed'} {caches.human_size(sum(sizes.values()))} in {len(sizes)} "
          f"entr{'y' if len(sizes) == 1 else 'ies'} no run of these params reads"
          + (f" ({per_cache})" if per_cache else ""))
    for where, why in whole.items():
        print(f"left whole: {where}: {why}")


def cmd_study(args: argparse.Namespace) -> None:
    """Selection methods x budgets x seeds (params.yaml `study`), each cell trained, souped and evaluated."""
    params, layout = _project(args)
    from tasks import study

    with _locked(layout, "soupline study"):
        study.run(params, layout)


def cmd_params(args: argparse.Namespace) -> None:
    from soupline.config import dump

    params, _ = _project(args)
    print(dump(params.model_dump()), end="")


def cmd_doctor(args: argparse.Namespace) -> None:
    """Check what a run needs, nothing written: params, the base model, the device, the data, the optional drivers
    (`soupline.doctor`)."""
    params, _ = _project(args)  # in the project root, where tasks/ imports
    from soupline import doctor

    doctor.run(params, args.params_path)


# How predict reads FILE, and where and in what batches it runs the model: not how the models were built
PREDICT_KEYS = ("prepare.text_column", "prepare.label_column", "prepare.label_names", "device", "evaluate.batch_size")


def cmd_predict(args: argparse.Namespace) -> None:
    """Labels for the texts of a file, from a model this workspace built (tasks/predict.py)."""
    # paths are read from where the command is typed (before `_project` enters the root); -: stdin; FILE is not
    # resolved: /dev/stdin or <(cmd) is a link to a pipe that only opening it as named reads
    if args.text is not None and args.file is not None and "=" in args.file:  # argparse took `KEY=VALUE` for FILE
        args.file, args.overrides = None, [args.file, *args.overrides]
    if (args.file is None) == (args.text is None):  # argparse cannot say "one of a positional and an option"
        args.command_parser.error("give FILE (a table of texts) or --text TEXT (a text itself, repeatable), not "
                                  f"{'both' if args.file is not None else 'neither'}")
    if args.text is not None:  # a list: the texts themselves
        source = args.text
    else:
        source = args.file if args.file == "-" else _typed_path("FILE", args.file, resolve=False)[0]
    out = None if args.out is None else _typed_path("--out", args.out)[0]
    as_path, is_there = _typed_path("--model", args.model, resolve=False)  # resolved below, if a folder is meant
    params, layout = _project(args)
    from soupline import config
    from tasks import predict

    # a workspace's name (`final`, `soup:greedy`, an ingredient) wins over a folder of that name where the command
    # is typed (a `final/` there took over every plain `soupline predict`); `./final` names the folder
    model = str(Path(as_path).resolve()) if is_there and not predict.workspace_name(args.model, layout) else args.model

    # Overrides that say how to read FILE (`prepare.text_column=body`) or run the model (`device=cpu`) say nothing
    # of how the models were built
    built_by = config.load(args.params_path, [o for o in args.overrides if o.split("=")[0] not in PREDICT_KEYS])
    predict.run(params, layout, source, model, out, args.probabilities, built_by)


def _typed_path(flag: str, value: str, resolve: bool = True) -> tuple[str, bool]:
    """`value` as an absolute path (`resolve`: links followed), and whether it names something; a name the file system
    cannot take (too long, a loop of links) is one line, where it was a traceback."""
    try:
        path = Path(value).expanduser()
        found = path.exists()
        return str(path.resolve() if resolve else path.absolute()), found
    except (OSError, RuntimeError) as err:  # RuntimeError: Python 3.11's resolve() on a loop of links
        shown = value if len(value) <= 80 else f"{value[:77]}..."
        raise SouplineError(f"{flag} {shown!r}: {getattr(err, 'strerror', None) or err}; give another path") from None


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the Prefect flow: register a deployment and run its scheduled and triggered runs in this process's
    children, until stopped (Ctrl-C: exit code 130, as `run`; SIGTERM: 0). No work pool or worker needed."""
    _, layout = _project(args)  # params checked here, in one line, before anything starts
    root = layout.root
    if not args.name.strip() or any(c in args.name for c in "/%"):
        raise SouplineError(f"--name {args.name!r}: a deployment name must be non-empty, without '/' or '%' (it "
                            "becomes soupline-pipeline/NAME)")
    if args.no_schedule and args.cron is not None:
        raise SouplineError(f"--cron {args.cron!r} and --no-schedule: a deployment is scheduled or not; give one")
    if args.cron is None:
        args.cron = DEFAULT_CRON
    if find_spec("prefect") is None:  # it was a traceback from the first Prefect import below
        raise SouplineError("`soupline serve` runs the Prefect flow, and prefect is not installed: pip install -e "
                            "'.[prefect]'")
    if not args.no_schedule:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=args.cron)
        except ValidationError:
            raise SouplineError(f"--cron {args.cron!r} is not a cron schedule (minute hour day month weekday, e.g. "
                                "'0 2 * * *' for 02:00 UTC every day)") from None
    if not (root / "flows" / "pipeline.py").exists():
        raise SouplineError(f"{root} has no flows/pipeline.py (the Prefect flow); run from the project root")
    from flows.interruptible import temporary_server
    from flows.pipeline import pipeline  # flow runs start in the project root, where _project moved
    from flows.serving import serve_until_stopped
    from flows.workspace import prefect_server_answers

    prefect_server_answers()

    parameters = {"root": str(root), "params_path": args.params_path}
    if args.overrides:
        parameters["overrides"] = args.overrides
    with temporary_server() as temporary:
        if temporary:
            print(f"warning: PREFECT_API_URL is not set: serving on a temporary server ({temporary}) that stops with "
                  "this command and does not run schedules (Prefect runs only triggered runs there); start one with "
                  "`prefect server start` to keep runs and see them in the UI", file=sys.stderr)
        # limit=1: one run at a time (they share the workspace); a run triggered during another, or the schedule
        # during a triggered one, waits for it instead of failing on the workspace lock
        if not serve_until_stopped(pipeline, name=args.name, cron=None if args.no_schedule else args.cron,
                                   parameters=parameters, limit=1, temporary=temporary,
                                   description=f"soupline pipeline on {root} ({args.params_path}), served by "
                                               "`soupline serve`"):
            raise KeyboardInterrupt  # Ctrl-C ends the command as it ends `run` (one line, 130); SIGTERM: 0


COMMANDS = {
    "run": (cmd_run, "run the whole pipeline in this process (dvc repro runs the same stages)"),
    "stage": (cmd_stage, "run one stage"),
    "status": (cmd_status, "show which stages `soupline run` would run, and why, without running them"),
    "study": (cmd_study, "compare selection methods x budgets x seeds; writes data/study/report/study.{md,html}"),
    "params": (cmd_params, "print the validated params with overrides applied"),
    "cache": (cmd_cache, "show what data/cache holds (embeddings, replaced ingredients and soups, LP-FT heads, "
                         "checkpoints, evaluations, run records, Prefect results) and its size; --clear deletes "
                         "caches, --gc what the params cannot use"),
    "doctor": (cmd_doctor, "check params, model, device, data (read and split, nothing written) and drivers"),
    "predict": (cmd_predict, "label the texts of a file with a trained model (the run's final model by default)"),
    "serve": (cmd_serve, "serve the Prefect flow as a deployment (nightly by default) until stopped"),
}


RESUMABLE = {"run", "stage", "study", "serve"}  # commands that run stages: a rerun resumes what Ctrl-C stopped

WHERE = [("--params", "params file (default: params.yaml in the project root)"),
         ("--root", "the project's folder (default: the working directory or the nearest folder above it with "
                    "tasks/pipeline.py)")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="soupline", description=" ".join(__doc__.split("\n\n")[0].split()))
    # what a bug report names (`dvc --version`, `prefect --version`); doctor lists the drivers' versions
    parser.add_argument("--version", action="version", version=f"soupline {__version__}")
    for flag, help_ in WHERE:  # before the command (`soupline --root X run`) or after it
        parser.add_argument(flag, help=help_)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(fn=fn, command_parser=p)  # an unknown option is named with the command's usage
        if name == "stage":
            p.add_argument("name", choices=STAGE_NAMES)
        if name == "run":
            p.add_argument("--from", dest="start", default="prepare", choices=STAGE_NAMES, help="first stage to run")
            p.add_argument("--force", action="store_true", help="run every stage, also those that are up to date "
                           "(train still keeps the ingredients built from the same inputs, as under `dvc repro -f`: "
                           "delete an ingredient's folder to train it again)")
        if name == "predict":
            p.add_argument("file", nargs="?", help="texts to label: a jsonl/csv/tsv/parquet file or a datasets "
                           "folder (-: a table piped to stdin: JSON lines, csv/tsv with a header, parquet; gzipped or "
                           "not), with the prepare.text_column column (a prepare.label_column column, when present, "
                           "is scored)")
            p.add_argument("--text", action="append", metavar="TEXT", help="a text to label, in place of FILE "
                           "(repeatable: --text 'one' --text 'two')")
            p.add_argument("--model", default="final", help="final (metrics.json's headline model), soup:<method>, "
                           "an ingredient's name, or a model folder (default: final)")
            p.add_argument("--out", help="write the predictions here (.jsonl, .csv, .tsv or .parquet; default: JSON "
                           "lines on stdout)")
            p.add_argument("--probabilities", action="store_true", help="add one prob:<label> column per label")
        if name == "status":
            p.add_argument("-q", "--quiet", action="store_true", help="print nothing; exit 1 when `soupline run` "
                           "has work (a stage to run, or outputs to record in dvc.lock), 0 when not (as `dvc status "
                           "-q`; without it the exit code is 0)")
        if name == "cache":
            how = p.add_mutually_exclusive_group()
            how.add_argument("--clear", nargs="+", metavar="NAME", choices=[*CACHE_NAMES, "all"],
                             help=f"delete these caches: {', '.join(CACHE_NAMES)}, or all")
            how.add_argument("--gc", action="store_true", help="delete what no run of the params (params.yaml, or "
                             "the params file and overrides given, as `soupline run` reads them) can read: embeddings "
                             "of other data, models or lengths, other sweeps' heads and checkpoints, metrics of "
                             "models no longer in place, old run records, the caches of study cells out of the grid "
                             "(as `dvc gc -w`)")
            p.add_argument("--dry-run", action="store_true", help="with --gc: list what it would delete, and sizes")
        if name == "serve":
            p.add_argument("--name", default="served", help="deployment name (soupline-pipeline/NAME)")
            p.add_argument("--cron", default=None, help=f"schedule, cron syntax in UTC (default: {DEFAULT_CRON!r}, "
                           "nightly at 02:00)")
            p.add_argument("--no-schedule", action="store_true", help="no schedule: runs only when triggered")
        # default=[]: argparse would otherwise list the optional overrides as required (`soupline stage` without
        # a name: "the following arguments are required: name, KEY=VALUE")
        reads_params = name != "cache"  # cache reads none: its help offers none, and given they are one line
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="dotted params overrides" if reads_params else argparse.SUPPRESS)
        for flag, help_ in WHERE:  # a value given here wins; absent, the one before the command stays
            p.add_argument(flag, help=help_ if reads_params or flag != "--params" else argparse.SUPPRESS,
                           default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `KEY=VALUE` overrides may come after an option too (`soupline predict f.csv --out p.csv train.max_length=32`)
    args, extra = parser.parse_known_args(argv)
    if bad := [a for a in extra if a.startswith("-") or "=" not in a]:
        args.command_parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*getattr(args, "overrides", []), *extra]
    one_line_warnings()
    cwd = os.getcwd()
    stopped_by: list[int] = []  # the signal that stopped the command, if one did (`_stop_on_signals`)
    installed = _stop_on_signals(args.command, stopped_by)
    try:
        code = args.fn(args) or 0  # a command's own exit code (status --quiet), else 0
    except USER_ERRORS as err:
        return print_error(err)
    except KeyboardInterrupt:  # Ctrl-C: finished stages and training checkpoints are kept
        # status, params, doctor, cache and predict keep nothing to resume from: no promise of it
        print(interrupt.MESSAGE if args.command in RESUMABLE else "\ninterrupted", file=sys.stderr)
        interrupt.exit_quietly()
        return 128 + stopped_by[0] if stopped_by else 130
    except BrokenPipeError:  # `soupline doctor | head -2`: the reader left; no traceback about it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        os.chdir(cwd)  # the command ran in the project root; a caller in this process keeps its directory
        for signum in installed:
            interrupt.put_back(signum, signal.SIG_DFL)
    return code


def _stop_on_signals(command: str, stopped_by: list[int]) -> list[int]:
    """For `run`, `stage` and `study`: SIGTERM (`kill`, `timeout`, a scheduler's or service manager's stop) and SIGHUP
    (a closed ssh session or terminal window) stop the command as Ctrl-C does, in one line (exit code 128 + the
    signal: 143, 129); by default they ended the process where it stood, without the `interrupted` line, its clean-up
    or the workspace lock's note undone. For `serve`, SIGHUP only (its SIGTERM is Prefect's runner's stop), which stops
    it as Ctrl-C does (`flows.serving.stop_serving`): it was killed, its schedule left on, its run in progress
    `Running` for good. Only where the signal has its default action (`nohup` ignores SIGHUP: the command outlives
    the terminal) and in the main thread (`interrupt.may_stop_on`). Fills `stopped_by` with the signal once it came;
    returns the signals it handles, for `main` to put back."""
    if command not in RESUMABLE:
        return []
    wanted = [signal.SIGTERM, signal.SIGHUP] if command != "serve" else [signal.SIGHUP]
    installed = [signum for signum in wanted if interrupt.may_stop_on(signum)]

    def stop(signum, frame) -> None:
        stopped_by.append(signum)
        if signum == signal.SIGHUP:
            interrupt.hung_up()  # later ones ignored; its line, and the stop's logs, would fail on the dead terminal
        if command == "serve":
            for run in multiprocessing.active_children():  # its runs in progress (a hang-up may reach this one only)
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(run.pid, signum)
            serving = sys.modules.get("flows.serving")  # imported before the runner starts
            if serving is None:  # a hang-up before then: as Ctrl-C's
                raise KeyboardInterrupt("serve")
            serving.stop_serving()
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in installed:
        signal.signal(signum, stop)
    return installed


if __name__ == "__main__":
    sys.exit(main())

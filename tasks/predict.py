"""predict: labels for new texts from a model this workspace built (`soupline predict FILE`).

Not a pipeline stage: it reads the trained ingredients and soups (and metrics.json for `final`) and
writes nothing under data/. A fine-tuned model reads the texts itself, as many tokens as it was trained
on; a probe ingredient (`train.method: probe`) reads their embeddings from the base model it was fit on. So
the test split gives evaluate's numbers whatever these params say. When the file also has the label
column, accuracy and macro-F1 on it are printed too. The model reading and scoring are the library's
(soupline.predict); this module finds the model and reads and writes the files.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import re
import sys
import tempfile
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from soupline import data, tables
from soupline.artifacts import TEMP_NAME, atomic_path, check_writable, flock_nowait, locked_elsewhere
from soupline.classifier import is_classifier
from soupline.config import Params
from soupline.errors import SouplineError
from soupline.models import check_model_folder, pick_device
from soupline.predict import class_probabilities, label_metrics, predicted_labels
from soupline.probe import PROBE_FILE
from soupline.soup_methods import REGISTRY as SOUPS
from tasks.common import read_labels, read_record
from tasks.layout import Layout

OUTPUTS = (".jsonl", ".csv", ".tsv", ".parquet")


def named_model(params: Params, layout: Layout, model: str) -> tuple[str, Path]:
    """(name, folder) of `final` (metrics.json's headline model), `soup:<method>`, an ingredient, or a folder."""
    headline = model == "final"
    if headline:
        metrics = layout.metrics / "metrics.json"
        if not metrics.exists():
            raise SouplineError("predict uses the run's final model (`--model final`, the default: the evaluate "
                                f"stage's headline model), and there is no {metrics} yet; run the pipeline, or name "
                                "a model with --model (soup:greedy, an ingredient, a model folder)")
        final = read_record(metrics, "evaluate", ("final",))["final"]  # damaged (a merge's conflict markers): one line
        if not (isinstance(final, dict) and isinstance(final.get("model"), str)):
            raise SouplineError(f"{metrics} is damaged (no final.model); run the evaluate stage again (soupline stage "
                                "evaluate), or name a model with --model")
        model = final["model"]
    if model.startswith("soup:"):
        folder = layout.soups / model.removeprefix("soup:")
    elif (layout.ingredients / model).is_dir():
        folder = layout.ingredients / model
    else:
        folder = Path(model)
    if (folder / PROBE_FILE).exists() or is_classifier(folder):
        if is_classifier(folder):  # a file cut short (a copy or a save that stopped): one line, not safetensors' error
            check_model_folder(folder, model)
        return model, folder
    built = built_models(layout)
    outputs, stage = (layout.soups, "soup") if model.startswith("soup:") else (layout.ingredients, "train")
    if headline and not outputs.exists():  # metrics.json is in git, the models in DVC: a clone not pulled yet
        raise SouplineError(f"--model final is {model}, the headline model when evaluate last ran, and this workspace "
                            f"has no {outputs.relative_to(layout.root)} (a clone before `dvc pull`?): `dvc pull "
                            f"{stage}` fetches it, `soupline run` builds it again; or name one: {built_models(layout)}")
    if headline:  # metrics.json is older than the models: soup.methods edited, `soupline stage soup` since evaluate
        raise SouplineError(f"--model final is {model}, the headline model when evaluate last ran, and {folder} no "
                            f"longer holds it; `soupline run` evaluates the models there now, or name one: "
                            f"{[b for b in built if b != 'final']}")
    if (folder / "config.json").exists():
        raise SouplineError(f"--model {model!r} is a base model without a trained classification head, so its labels "
                            f"would be random; name a model this workspace built: {built}")
    method = model.removeprefix("soup:")
    if model.startswith("soup:") and method in SOUPS and method in params.soup.methods:
        from tasks.soup import no_soup_reason
        from tasks.train import ingredient_names

        why = no_soup_reason(params, ingredient_names(params))
        raise SouplineError(f"--model {model!r}: this workspace makes no soups ({why}); name a model it built: {built}"
                            if why else f"--model {model!r}: this workspace has no {method} soup yet (soup.methods "
                            f"lists it, and no soup stage ran since); `soupline run` makes it, or name a model it "
                            f"built: {built}")
    if model.startswith("soup:") and method in SOUPS:
        raise SouplineError(f"--model {model!r}: this workspace made no {method} soup (soup.methods: "
                            f"{params.soup.methods}); add {method} to soup.methods and `soupline run`, or name a "
                            f"model it built: {built}")
    if (folder / "adapter_config.json").exists():  # a LoRA ingredient's adapter/: low-rank weights without their base
        whole = f"{folder.parent} holds the merged model it trained: name that folder" if is_classifier(
            folder.parent) else "merge it into its base model (peft's merge_and_unload) and save that folder"
        raise SouplineError(f"--model {model!r} is a LoRA adapter, not a whole model; {whole}")
    close = difflib.get_close_matches(model, built, n=1, cutoff=0.6)
    raise SouplineError(f"--model {model!r} is not a model this workspace built, nor a model folder"
                        f"{f' (did you mean {close[0]!r}?)' if close else ''}; built: {built}")


def built_models(layout: Layout) -> list[str]:
    """What --model can name in this workspace: final (once evaluated), its soups, its ingredients."""
    final = ["final"] if (layout.metrics / "metrics.json").exists() else []
    soups = sorted(f"soup:{p.name}" for p in layout.soups.iterdir() if p.is_dir()) if layout.soups.exists() else []
    built = sorted(p.name for p in layout.ingredients.iterdir() if p.is_dir()) if layout.ingredients.exists() else []
    return [*final, *soups, *built]


def workspace_name(model: str, layout: Layout) -> bool:
    """Whether `--model` is one of this workspace's names (`final`, `soup:<method>`, an ingredient's), which
    `named_model` reads before taking it for a folder."""
    return model == "final" or model.startswith("soup:") or (layout.ingredients / model).is_dir()


def maker(model: str, folder: Path, layout: Layout) -> str:
    """The stage whose output `--model` names: evaluate for `final` (it picks the headline model), soup for a soup,
    train for an ingredient."""
    if model == "final":
        return "evaluate"
    return "soup" if folder.resolve().is_relative_to(layout.soups.resolve()) else "train"


def warn_if_stale(candidates: list[Params], layout: Layout, name: str, folder: Path, stage: str) -> None:
    """Warn when the model is not what any of these params build (params.yaml edited, data changed, no run since):
    predictions would silently come from the last run's model. Checks the stages up to `stage`, the one that made
    it (`maker`): an edited soup setting makes the soups stale, not the ingredients. Several candidates: overrides
    that say how to read the file (`prepare.label_column=cat`) may or may not be those the workspace was built
    with."""
    from tasks import dvc_lock, keys, pipeline

    with dvc_lock.one_status():  # one `dvc status` for the stale and the pullable stages
        with keys.memoized():
            stale = [stale_stage(params, layout, folder, stage) for params in candidates]
        # the candidate nearest to up to date names the stage (the latest stale one): with `device=cpu` given to
        # a workspace built with it, the params without that override would name embed, `soupline status` train
        first = max(stale, key=list(pipeline.STAGES).index) if all(stale) else None
        pulled = all(stale) and any(first in pipeline.pullable(params, layout) for params in candidates)
    if pulled:
        warnings.warn(f"{first}'s outputs are not in this workspace, and dvc.lock records them from these params "
                      f"and inputs: `dvc pull {first}` fetches them; until then whether {name} is a model of these "
                      "params is not checked", stacklevel=2)  # a clone that pulled some stages: not stale, unknown
    elif all(stale):
        warnings.warn(f"{first} is not up to date with these params and inputs, so {name} is a model of the last "
                      "run, not of these params; `soupline status` says why, `soupline run` rebuilds it", stacklevel=2)


def stale_stage(params: Params, layout: Layout, folder: Path, stage: str) -> str | None:
    """The first stage up to `stage` that is not up to date for the model in `folder`, else None. For an ingredient
    (`stage` train), train counts as up to date when these params' sweep holds it, built from these inputs, whatever
    else the sweep would train: a seed added to `train.seeds` leaves the ingredients built before up to date."""
    from tasks import pipeline, train

    if stage != "train":
        return pipeline.stale_upstream(stage, params, layout, including=True)
    if upstream := pipeline.stale_upstream("train", params, layout):
        return upstream
    built = set(train.ingredient_names(params)) - set(train.unbuilt(params, layout))
    return None if folder.name in built else "train"


def read_source(source: str, columns: tuple[str, ...]) -> pd.DataFrame | dict[str, pd.DataFrame]:
    """The table to label: the file `source`; or, with `-` or a path that is a pipe (`/dev/stdin`, `<(cmd)`), the
    bytes piped in: JSON lines (what predict writes without --out, so `... | soupline predict - | ...` chains), CSV
    or TSV with a header row, or Parquet, read as such a file is, through a temporary copy."""
    path = Path(source).expanduser()
    if source != "-" and not (path.exists() and not path.is_file() and not path.is_dir()):
        return tables.read_table(source, columns, param="the file to predict", as_text=True)
    name = "stdin" if source == "-" else source
    with (nullcontext(sys.stdin) if source == "-" else open(path, "rb")) as stream:
        if stream is None or stream.isatty():
            raise SouplineError(f"`soupline predict {source}` reads a table piped to {name}, but nothing is piped in; "
                                f"pipe a file (`cat new.jsonl | soupline predict -`) or name it "
                                "(`soupline predict new.jsonl`)")
        raw = (stream.buffer if source == "-" else stream).read()
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / f"piped{piped_suffix(raw)}"
        copy.write_bytes(raw)
        try:
            return tables.read_table(copy, columns, param="the file to predict", as_text=True)
        except SouplineError as err:
            raise SouplineError(str(err).replace(str(copy), name)) from None


_JSON_LIST = re.compile(rb"\[\s*([{\]]|$)")  # `[{`, `[` then a record on the next line (indent=2), `[]`


def piped_suffix(raw: bytes) -> str:
    """The file type of piped bytes, from how they start: Parquet's magic, a JSON record or a JSON list of records
    (`jq`'s `[...]`, pandas' `to_json(orient="records")`: it was read as a CSV, "stdin has no rows"), else a header
    row (TSV when it has tabs and no commas, else CSV: a header `[id],text` too, which opens no record); gzip's magic:
    what its first bytes unpack to, + `.gz`."""
    if raw.startswith(b"\x1f\x8b"):
        import zlib

        return piped_suffix(zlib.decompressobj(wbits=31).decompress(raw[:1 << 16], 1 << 16)) + ".gz"
    if raw.startswith(b"PAR1"):
        return ".parquet"
    start = raw.lstrip(b"\xef\xbb\xbf \t\r\n")  # a BOM, blank lines
    if start[:1] in (b"{", b"") or _JSON_LIST.match(start):  # a list: read as .json is (tables.read_table)
        return ".jsonl"
    header = start.split(b"\n", 1)[0]
    return ".tsv" if b"\t" in header and b"," not in header else ".csv"


def remove_killed_writes(out: Path) -> None:
    """Delete the temporary siblings (`.<name>.<random>.tmp`) that predicts to `out` killed mid-write left beside
    it: --out may lie outside data/, where no run's workspace lock clears them. A predict writing now holds an OS lock
    (flock) on its own until it is renamed, so only the orphans, whose lock the kernel dropped, are taken."""
    for name in glob.glob(glob.escape(str(out.parent / f".{out.name}.")) + "*.tmp"):
        if TEMP_NAME.fullmatch(Path(name).name) and not locked_elsewhere(Path(name)):
            with contextlib.suppress(OSError):  # gone meanwhile (renamed into place), or not ours to delete
                Path(name).unlink(missing_ok=True)


def parquet_ready(result: pd.DataFrame) -> pd.DataFrame:
    """`result` with each column that mixes value types (a JSON label column of numbers and codes: `7`, `"01"`)
    written as text, as prepare reads such labels, and a warning naming them: a Parquet column holds one type, and
    pyarrow failed on such a column with a traceback after the model had run."""
    if not (mixed := data.mixed_columns(result)):
        return result
    warnings.warn(f"column{'s' if len(mixed) > 1 else ''} {mixed} mix{'' if len(mixed) > 1 else 'es'} value types "
                  "(numbers and text); a Parquet column holds one type, so the output writes them as text "
                  "(7 -> '7'); write .jsonl to keep each value's own type", stacklevel=3)
    return result.assign(**{c: data.as_text(result[c]) for c in mixed})


def csv_ready(result: pd.DataFrame) -> pd.DataFrame:
    """`result` with its records and lists (nested JSON, a Parquet struct or list column) written as JSON, so a CSV /
    TSV cell reads back: pandas wrote Python's repr, `{'cat': None}`, which no JSON reader takes."""
    def nested(value) -> bool:
        return isinstance(value, (dict, list, np.ndarray))

    def as_json(value):  # numpy values inside (a Parquet struct's) as Python's, anything else as its text
        plain = lambda o: o.tolist() if hasattr(o, "tolist") else str(o)  # noqa: E731
        return json.dumps(value, ensure_ascii=False, default=plain) if nested(value) else value

    return result.assign(**{c: result[c].map(as_json) for c in result.columns
                            if result[c].dtype == object and result[c].map(nested).any()})


def run(params: Params, layout: Layout, source: str | list[str], model: str = "final", out: str | None = None,
        probabilities: bool = False, built_by: Params | None = None) -> pd.DataFrame:
    """Predict every text of `source` (a file, `-` for stdin, or a list of the texts themselves: `--text`); write the
    table (input columns + prediction, score) to `out` or stdout. A model of the workspace is checked against
    `built_by` (default: `params`): the params it should be built from, which may read the file's columns
    differently."""
    p = params.prepare
    if out is not None and Path(out).suffix.lower() not in OUTPUTS:
        raise SouplineError(f"--out {out!r}: write predictions as one of {list(OUTPUTS)}")
    if out is not None and Path(out).is_dir():  # before the model runs: os.replace cannot put a file there
        raise SouplineError(f"--out {out!r} is a folder; give a file path (e.g. {Path(out) / 'predictions.csv'})")
    if out is not None:
        check_writable(out)
    if isinstance(source, list):  # `--text`: the texts themselves, in a `text` column
        table, source, text_column = pd.DataFrame({"text": source}), "--text", "text"
    else:
        table = read_source(source, (*data.as_columns(p.text_column), p.label_column))
        source, text_column = "stdin" if source == "-" else source, p.text_column  # stdin, as the messages name it
        if isinstance(table, dict):
            raise SouplineError(f"{source} is a folder of splits {sorted(table)}; point at one split's folder or file")
    if len(table) == 0:  # a header without rows, a JSON `[]` (no columns either): the tokenizer fails on no texts
        raise SouplineError(f"{source} has no rows; give a file with at least one text to label")
    texts = data.texts_of(table, text_column, source)
    blank = texts.isna() | data.blank(texts.astype(str))  # prepare drops such rows: no label means anything
    if (n := int(blank.sum())):
        raise SouplineError(f"{source}: {n} row{'s have' if n != 1 else ' has'} no text (empty or spaces only; the "
                            f"first is data row {int(blank.to_numpy().argmax()) + 1}); fill or drop them")
    labels = None  # read before the model runs: a label label_names cannot name is one line, not lost predictions
    # a nested label (`prepare.label_column: annot.cat`) is read as prepare reads it: it went unscored, silently
    given_labels = data.with_fields(table, (p.label_column,)).get(p.label_column)
    if given_labels is not None:
        given = given_labels.notna()
        labels = data.label_strings(given_labels).where(given)  # as prepare reads them: 3, not 3.0
        # integer labels, named as prepare names them; names (a prepared split's) and a ClassLabel are read as they are
        if p.label_names and not (labels[given].isin(p.label_names).all() or data.class_names(table, p.label_column)):
            labels[given] = data.name_labels(labels[given], p.label_names)
    name, folder = named_model(params, layout, model)
    # the workspace's own models only: a study cell's or the cache's are no output of these params' stages (a cell's
    # soup was called stale by the workspace's train, a cell's ingredient passed for the workspace's of that name)
    if folder.resolve().parent in (layout.ingredients.resolve(), layout.soups.resolve()):
        warn_if_stale([params] if built_by is None else [built_by, params], layout, name, folder,
                      maker(model, folder, layout))
    probe_labels = read_labels(layout) if (folder / PROBE_FILE).exists() else []  # a probe file holds weights only
    probs, names = class_probabilities(folder, texts.astype(str).tolist(), pick_device(params.device),
                                       params.evaluate.batch_size, params.train.max_length, probe_labels)
    pred = probs.argmax(1)
    result = table.assign(prediction=predicted_labels(pred, names, given_labels), score=probs.max(1).round(6))
    if probabilities:
        result = result.assign(**{f"prob:{n}": probs[:, i].round(6) for i, n in enumerate(names)})
    written = ["prediction", "score", *([f"prob:{n}" for n in names] if probabilities else [])]
    if replaced := [c for c in written if c in table.columns]:  # a review's own `score`: say it is gone
        one = len(replaced) == 1
        warnings.warn(f"{source} has column{'' if one else 's'} {replaced}, which predict writes: the output holds "
                      f"predict's values there; rename {'it' if one else 'them'} to keep yours", stacklevel=2)
    print(f"predict: {len(result)} text{'s' * (len(result) != 1)} with {name} ({folder})", file=sys.stderr)
    if labels is not None:
        print(f"predict: {label_metrics(labels, pred, names)}", file=sys.stderr)
    if out is None:
        result.to_json(sys.stdout, orient="records", lines=True, force_ascii=False, date_format="iso")
        return result
    remove_killed_writes(Path(out))
    held = None  # an OS lock on our temporary file, until it is renamed: remove_killed_writes leaves it alone
    try:
        with atomic_path(out) as tmp:  # makes the missing folders; a file in the way is one line
            held = open(tmp, "rb")
            flock_nowait(held)
            suffix = Path(out).suffix.lower()
            if suffix == ".jsonl":
                result.to_json(tmp, orient="records", lines=True, force_ascii=False, date_format="iso")
            elif suffix in (".csv", ".tsv"):
                csv_ready(result).to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
            else:
                parquet_ready(result).to_parquet(tmp, index=False)
    finally:
        if held is not None:
            held.close()
    print(f"predict: wrote {out}", file=sys.stderr)
    return result

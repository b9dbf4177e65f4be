"""params.yaml as pydantic models: validated before anything runs, one section per stage.

`load(path, overrides)` reads the YAML, applies dotted overrides (`select.method=kmeans`,
the syntax of `dvc exp run -S`), and validates. Any mistake becomes one `SouplineError` line
naming the key, e.g. `unknown key 'select.metod' (did you mean 'select.method'?)`.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import itertools
import json
import math
import re
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, Field, PlainValidator, ValidationError, create_model, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from soupline.errors import SouplineError
from soupline.select import REGISTRY
from soupline.select.base import ParamsSection, Seed
from soupline.select.quotas import STRATIFY
from soupline.soup_methods import REGISTRY as SOUPS


class Section(ParamsSection):
    """One section of params.yaml (unknown keys, .nan, .inf and booleans for numbers refused)."""


class SplitFiles(Section):
    pool: str = Field(description="file (jsonl/csv/parquet), folder of its shards, or datasets folder of the pool "
                      "split")
    validation: str | None = Field(None, description="file or datasets folder of the validation split "
                                   "(null: prepare.validation_size of the pool, stratified)")
    test: str | None = Field(None, description="file or datasets folder of the test split "
                             "(null: prepare.test_size of the pool, stratified)")


# The built-in corpora's names (soupline.data.BUILTIN_CORPORA loads each; tests/test_config.py checks they match):
# here, so that a stage's key, which names prepare's input files, does not import pandas through soupline.data (a
# no-op `soupline run` imported it for these names alone)
BUILTIN_CORPUS_NAMES = frozenset({"bbcnews", "20newsgroups"})


class PrepareParams(Section):
    source: str = Field("bbcnews", description="built-in corpus name, a jsonl/csv/parquet file, a "
                        "folder of such files (shards, or files named by split), or a datasets save_to_disk folder")
    splits: SplitFiles | None = Field(None, description="your own pool/validation/test files "
                                      "(then `source` is ignored)")
    text_column: str | list[str] = Field("text", min_length=1, description="column holding the text, or a list "
                                         "of columns joined with a blank line between them (e.g. [title, body])")
    label_column: str = Field("label", description="column holding the label")
    split_column: str | None = Field(None, description="a column of `source` naming each row's split (train / "
                                     "validation / test, or the other names a datasets folder's splits have): its "
                                     "rows are divided by it, not split by prepare")
    label_names: list[str] | None = Field(None, description="names of integer labels 0, 1, ...: label i becomes "
                                          "label_names[i], with id i, in the splits, reports and predictions")
    keep_columns: list[str] = Field([], description="more columns carried into the splits unchanged, e.g. a "
                                    "quality score that select.dnc.q: column:<name> reads")
    validation_size: float = Field(0.1, gt=0, lt=1, description="fraction held out for validation")
    test_size: float = Field(0.2, gt=0, lt=1, description="fraction held out for test")
    max_examples: int | None = Field(None, ge=10, description="stratified subsample of the source")
    rare_labels: Literal["error", "drop"] = Field(
        "error", description="labels with fewer than min_label_examples examples (in the source; in the pool of "
        "splits of your own): error names them (splits of your own only for a min_label_examples above 3), drop "
        "removes their rows before the subsample and the split (summary.json's rare_labels_dropped)")
    min_label_examples: int = Field(3, ge=3, description="examples a label needs (3 at least: one each for pool, "
                                    "validation and test)")
    duplicates: Literal["keep", "drop"] = Field(
        "keep", description="exact duplicate texts (whitespace, case and Unicode form ignored): keep them and report "
        "the counts (a test text also in the pool is leakage), or drop them (evaluation splits keep their copy)")

    @field_validator("label_names")
    @classmethod
    def _names_distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(set(names)) != len(names):
            raise ValueError(f"repeats a name: {names}; give each integer label its own")
        return names

    @field_validator("text_column", "keep_columns")
    @classmethod
    def _columns_distinct(cls, columns: str | list[str]) -> str | list[str]:
        """[text, text] joined every text to itself, silently."""
        if isinstance(columns, list) and (twice := next((c for c in columns if columns.count(c) > 1), None)):
            raise ValueError(f"names column {twice!r} {columns.count(twice)} times; name each column once")
        return columns

    @model_validator(mode="after")
    def _one_way_to_split(self) -> "PrepareParams":
        if self.split_column is not None and self.splits is not None:
            raise ValueError(f"split_column {self.split_column!r} divides prepare.source, which prepare.splits "
                             "replaces; leave one of them null")
        return self

    @model_validator(mode="after")
    def _pool_left(self) -> "PrepareParams":
        if self.validation_size + self.test_size >= 0.9:
            raise ValueError(f"validation_size + test_size is {self.validation_size + self.test_size:g}; it must "
                             "leave at least 10% for the pool")
        return self

    def source_paths(self) -> list[str]:
        """The files or folders prepare reads: the three split files, else `source` unless it is a built-in corpus."""
        if self.splits:
            return [path for path in self.splits.model_dump().values() if path is not None]
        return [] if self.source in BUILTIN_CORPUS_NAMES else [self.source]


class EmbedParams(Section):
    batch_size: int = Field(64, ge=1, description="texts per forward pass")
    max_length: int = Field(128, ge=8, description="tokens per text (longer texts are truncated)")


class SelectCommon(Section):
    method: str = Field("kmeans", description=f"selection method: one of {sorted(REGISTRY)}")
    budget: Union[int, float] = Field(0.1, description="fraction of the pool in (0, 1] or a count >= 1")
    seed: Seed | None = Field(None, description="selection seed (null: the global `seed`, which also "
                             "draws the splits)")
    stratify: Literal[STRATIFY] = Field(
        "none", description="label: split the budget over labels in proportion to the pool; balanced: equally "
        "(a label smaller than its share gives all it has); either way the method runs inside each label")
    dedup_threshold: float | None = Field(None, gt=0, le=1, description="drop near-duplicates: pool "
                                          "points with cosine >= this to an earlier one are never chosen")
    heldout_dedup_threshold: float | None = Field(
        None, gt=0, le=1, description="never choose a pool point with cosine >= this to a validation or test "
        "text (a copy of an evaluation text turns its score into memory)")

    def in_use(self, methods: set[str] | None = None) -> dict[str, Any]:
        """The select settings that shape the selection: all but the sub-sections of the methods not in use (a kmeans
        selection reads no `select.dnc.*`). selection.json records these, and select's key in `soupline run` and the
        Prefect flow holds them, so editing another method's settings changes no output and rebuilds nothing.
        `methods`: keep these methods' sub-sections instead of only `method`'s (a study runs several)."""
        return self.model_dump(mode="json", exclude=set(REGISTRY) - (methods or {self.method}))

    def train_read(self, train: Any, budget: int | None = None) -> dict[str, Any]:
        """The `train` settings (a TrainParams) the method in use reads to build the model train starts from
        (DEALRec's effort pass, dnc's fine-tune scorer; none for the others): select's stage key, a study cell's key,
        the base model's max_length check and the probe's warning about settings it does not read take them here.
        `budget`: the selection's size, when known (`MethodConfig.train_settings`)."""
        return getattr(self, self.method).train_settings(train, budget)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in REGISTRY:
            near = difflib.get_close_matches(v, REGISTRY, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown selection method {v!r}{hint}; choose one of {sorted(REGISTRY)}")
        return v

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_range(cls, v: Any, *, key: str = "select.budget") -> int | float:
        if isinstance(v, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", v):
            raise ValueError(f"budget must be a number, got the text {v!r} (quoted in YAML); write it without quotes")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"budget must be a fraction in (0, 1] or a count >= 1, got {v!r}")
        if v <= 0:
            raise ValueError("budget must be > 0 (a fraction in (0, 1] or a count)")
        if isinstance(v, float) and v > 1:
            raise ValueError("a fractional budget must be in (0, 1]; give a count as an integer")
        if v == 1 and isinstance(v, int):
            warnings.warn(f"{key}=1 is a count: one example (the whole pool is 1.0)", stacklevel=2)
        return v


# One sub-section per registered method: `select.kmeans.niter`, `select.random`, ...
SelectParams = create_model(
    "SelectParams",
    __base__=SelectCommon,
    **{name: (m.config, Field(default_factory=m.config)) for name, m in REGISTRY.items()},
)


class LoraParams(Section):
    r: int = Field(8, ge=1, description="rank of the low-rank update B A")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: delta W = (alpha / r) B A")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA branch's input")
    target_modules: list[str] = Field(["query", "value"], min_length=1, description="names of the "
                                      "Linear layers that get an adapter (BERT: query, key, value, dense)")
    learning_rate_scale: float = Field(10.0, gt=0, description="the adapters train at each "
                                       "train.learning_rates value x this: LoRA needs a higher rate than full "
                                       "fine-tuning, and the sweep's rates are shared by both (1: the rate as listed)")

    @field_validator("target_modules")
    @classmethod
    def _a_set(cls, v: list[str]) -> list[str]:
        """A set, as peft reads it: [value, query] and [query, query, value] adapt what [query, value] does, and
        so share its key (a sweep over their orders would train one model twice)."""
        return sorted(set(v))


class SelfTrainingParams(Section):
    multiple: float = Field(0.0, ge=0, description="self-training (pseudo-labels): the sweep's first ingredient "
                            "trained on the selection alone labels the pool's unselected texts (their own labels "
                            "unread), its most confident this x the selection's size are kept, class-balanced, and "
                            "every ingredient trains from the base model on selection + them, for the steps the "
                            "selection alone gets (0: off)")


class TrainParams(Section):
    method: Literal["full", "lora", "probe"] = Field("full", description="full: every weight (but frozen "
                                                     "embeddings); lora: peft adapters + the head; probe: "
                                                     "logistic regression on the embed stage's embeddings")
    lora: LoraParams = Field(default_factory=LoraParams)
    pooling: Literal["mean_normalized", "mean", "cls"] = Field(
        "mean_normalized", description="text vector the head reads: the masked mean of the last hidden states, "
        "unit-normalised (the embed stage's vector) or not, or the model's own [CLS] head "
        "(AutoModelForSequenceClassification)")
    head_init: Literal["random", "probe"] = Field("probe", description="probe: LP-FT, the head starts "
                                                  "as a logistic-regression probe fit on the selection")
    learning_rates: list[float] = Field([1e-4, 2e-4], min_length=1, description="sweep: learning rates")
    head_learning_rate: float | None = Field(2e-3, gt=0, description="learning rate of the fresh "
                                             "classification head (null: same as the body)")
    seeds: list[Seed] = Field([0, 1], min_length=1, description="sweep: data-order/dropout seeds")
    epochs: int = Field(6, ge=1, description="passes over the selection")
    min_steps: int = Field(60, ge=0, description="optimizer steps at least, however small the selection")
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=8, description="tokens per text (fine-tuning and evaluation)")
    freeze_embeddings: bool = Field(True, description="keep the word-embedding matrix frozen")
    weight_decay: float = Field(0.01, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="share of each target spread over all labels "
                                   "(0: plain cross-entropy)")
    layer_lr_decay: float = Field(1.0, gt=0, le=1, description="layer-wise learning-rate decay: each transformer "
                                  "layer below the top one gets this factor once more, the embeddings the lowest "
                                  "(1: one rate for the body)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warm-up")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="learning-rate "
                                                              "decay after warm-up")
    grad_accumulation: int = Field(1, ge=1, description="batches per optimizer step (effective batch "
                                   "= batch_size x grad_accumulation)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype (fp16 needs "
                                                       "CUDA; bf16 also runs on CPU)")
    class_weighting: Literal["none", "balanced", "sampled"] = Field("none", description="for skewed selections: "
                                                                    "balanced: loss weights n / (labels x count); "
                                                                    "sampled: batches drawn label-balanced")
    head_init_seed: Seed = Field(0, description="seed of the classifier head, shared by all ingredients")
    early_stopping_patience: int | None = Field(None, ge=1, description="evaluations without "
                                                "validation gain before stopping (null: off)")
    early_stopping_metric: Literal["accuracy", "macro_f1"] = Field("accuracy", description="validation "
                                                                   "metric for early stopping and the best checkpoint")
    eval_every: int = Field(0, ge=0, description="steps between validation evaluations (0: each epoch "
                            "with early stopping, else once at the end)")
    checkpoint_every: int = Field(50, ge=1, description="steps between resumable checkpoints")
    keep_replaced: int = Field(8, ge=0, description="ingredients replaced or dropped from the sweep kept in "
                               "data/cache/ingredients/ (the newest, and all a run shelved since the cache was last "
                               "pruned) and restored, not retrained, when their inputs come back; 0: delete them")
    sweep: dict[str, list[Any]] = Field({}, description="more sweep axes: train key (dotted: lora.r) -> "
                                        "values; ingredients = learning_rates x seeds x each list")
    self_training: SelfTrainingParams = Field(default_factory=SelfTrainingParams)

    @field_validator("learning_rates", "seeds", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: Any) -> Any:
        """`train.learning_rates=0.001` (as `-S` writes it) means the sweep [0.001]."""
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("sweep", mode="before")
    @classmethod
    def _axes_are_dotted(cls, v: Any) -> Any:
        """`{lora: {r: [4, 8]}}` reads as a nested axis; the sweep spells it `{lora.r: [4, 8]}`."""
        for key, values in v.items() if isinstance(v, dict) else []:
            if isinstance(values, dict):
                inner = ", ".join(f"{key}.{k}: {values[k]}" for k in values)
                raise ValueError(f"axis {key!r} is a mapping; write each setting as its own dotted axis: {{{inner}}}")
        return v

    @field_validator("sweep")
    @classmethod
    def _axes_in_key_order(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """The axes, and the keys of a mapping value, sorted: the order params.yaml writes them in names no
        ingredient and orders no sweep (it reordered the soups' ingredients: other DARE masks, greedy's ties)."""
        return {key: [_key_order(value) for value in values] for key, values in sorted(v.items())}

    @field_validator("learning_rates")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(lr <= 0 for lr in v):
            raise ValueError("learning rates must be > 0")
        return v

    def body_rate(self, lr: float) -> float:
        """The rate the body trains at for the sweep's rate `lr`: under LoRA its adapters', `lr` x
        `lora.learning_rate_scale`, so that one `learning_rates` list serves a `method: [full, lora]` sweep."""
        return lr * self.lora.learning_rate_scale if self.method == "lora" else lr

    @model_validator(mode="after")
    def _self_training_fine_tunes(self) -> "TrainParams":
        if self.self_training.multiple and self.method == "probe":
            raise ValueError(f"train.self_training.multiple={self.self_training.multiple:g} needs a fine-tuned "
                             "model (its students train on pseudo-labels); train.method: probe fits none: set "
                             "train.method: full or lora, or train.self_training.multiple=0")
        return self

    @model_validator(mode="after")
    def _sweep_expands(self) -> "TrainParams":
        self.ingredients()  # every combination must be a valid train section
        return self

    def recipe(self) -> dict[str, Any]:
        """What report.md's and study.md's recipe line (`report.training_recipe`) states of this section besides each
        ingredient's method and LoRA settings: the head's start (and what it is fitted on: self-training's students
        fit it on the pseudo-labels too), the learning rates, epochs, least steps and sweep axes (details.json's
        `train`); the method alone under `method: probe`, whose one model reads none of them."""
        return self.model_dump(mode="json", include={"method"} if self.method == "probe" else {
            "method", "head_init", "learning_rates", "head_learning_rate", "epochs", "min_steps", "sweep",
            "self_training"})

    def key_settings(self) -> dict[str, Any]:
        """The settings that shape the model an ingredient of this section trains (its key holds them, and select's
        when its method fine-tunes): the section less what `unread_settings` names."""
        neutral = {key for key, value in NEUTRAL.items() if getattr(self, key) == value}
        return self.model_dump(mode="json", exclude=set(self.unread_settings()) | neutral)

    def unread_settings(self) -> dict[str, str]:
        """The keys of this section that cannot change the model an ingredient of it trains, each with why: the
        sweep's lists and the bookkeeping (`BOOKKEEPING`), and what the other settings leave unread. `method: probe`
        reads only the metric that chooses its C. Without early stopping the last step's weights are kept whatever
        validation says: `eval_every` then only spaces the curves' validation points, and `early_stopping_metric`
        chooses nothing unless LP-FT's probe head chooses its C by it. `lora` is read by `method: lora` only."""
        if self.method == "probe":
            return {key: "has no effect with method: probe (it reads only early_stopping_metric)"
                    for key in type(self).model_fields if key not in {"method", "early_stopping_metric"}}
        unread = dict.fromkeys(("learning_rates", "seeds", "sweep"), "is a sweep axis, not a setting of one model")
        unread |= dict.fromkeys(BOOKKEEPING, "does not change the model trained")
        if self.method != "lora":
            unread["lora"] = f"has no effect with method: {self.method}"
        else:  # peft freezes every weight but the adapters and the modules on top of the encoder
            unread["freeze_embeddings"] = "has no effect with method: lora (it trains its adapters and head alone)"
        if self.head_init == "probe" and self.method != "lora" and self.pooling != "cls":
            unread["head_init_seed"] = ("has no effect with head_init: probe (the probe replaces the head it draws) "
                                        "unless method: lora (its adapters) or pooling: cls (layers a checkpoint lacks)")
        if not self.early_stopping_patience:
            unread["eval_every"] = ("has no effect without early stopping (early_stopping_patience: null keeps the "
                                    "last step's weights)")
            if self.head_init != "probe":
                unread["early_stopping_metric"] = ("has no effect without early stopping and with head_init: random "
                                                   "(nothing chooses by it)")
        return unread

    def sweep_settings(self, reference_probe: bool = True) -> dict[str, Any]:
        """What the stages after train (soup, evaluate, a study cell) read of this section: the sweep's lists (not
        under `method: probe`, whose one model reads none of them), the settings that shape any of its models
        (`key_settings` of every ingredient: a sweep over `method: [full, lora]` reads `lora`), and, with
        `reference_probe` (evaluate, a study cell; not soup, which fits no probe), the metric that picks the C of
        evaluate's reference probe. A setting no model reads (`eval_every` without early stopping anywhere in the
        sweep) re-runs none of them."""
        read = set().union(*(ing.train.key_settings() for ing in self.ingredients()))
        axes = set() if self.method == "probe" else {"learning_rates", "seeds", "sweep"}
        return self.model_dump(mode="json", include={*read, *axes, *(["early_stopping_metric"] * reference_probe)})

    def ingredients(self) -> list[Ingredient]:
        """The sweep, in order: learning_rates x seeds x the `sweep` axes, one `Ingredient` each.

        Every ingredient starts from the same weights (pretrained body + a head drawn with
        `head_init_seed`), so keys that change the initialisation cannot be swept.
        """
        for key, values in self.sweep.items():
            top = key.split(".")[0]
            if top in FIXED_FOR_SWEEP:
                raise ValueError(f"{key!r} cannot be a sweep axis: {FIXED_FOR_SWEEP[top]}")
            if top == "early_stopping_metric" and self.head_init == "probe" and self.method != "probe":
                raise ValueError(f"{key!r} cannot be a sweep axis with head_init: probe: it picks the C of LP-FT's "
                                 "probe head, so ingredients would start from different heads and not soup; "
                                 "set train.head_init: random or drop the axis")
        if wrong := _unknown_axes(type(self), self.sweep):
            raise ValueError(wrong)
        if empty := [key for key, values in self.sweep.items() if not values]:
            raise ValueError(f"sweep axis {empty[0]!r} lists no values")
        if self.method == "probe":  # deterministic (C chosen on validation): lr, seed and sweep do not enter
            if self.sweep:
                raise ValueError("train.method: probe fits one deterministic probe; a sweep would repeat it "
                                 "(set train.sweep to {})")
            return [Ingredient(PROBE, self.learning_rates[0], self.seeds[0], self)]
        if "probe" in self.sweep.get("method", []):
            raise ValueError("a probe cannot be souped with fine-tuned models; sweep method over full and lora only"
                             + (" (for the probe alone, set train.method: probe and drop the axis)"
                                if set(self.sweep["method"]) == {"probe"} else ""))
        base = self.model_dump(exclude={"sweep"})
        out: dict[str, Ingredient] = {}
        points: dict[str, dict[str, Any]] = {}  # an ingredient's name -> its values of the sweep axes
        axes = list(self.sweep.items())
        for lr, seed, *point in itertools.product(self.learning_rates, self.seeds, *(v for _, v in axes)):
            train = self
            settings = [kv for (key, _), value in zip(axes, point) for kv in _flat(key, value)]
            if point:  # the section with this point's values, validated like any train section
                raw = copy.deepcopy(base)
                for key, value in settings:
                    set_dotted(raw, key, copy.deepcopy(value))
                try:
                    train = TrainParams.model_validate(raw)
                except ValidationError as err:  # every problem of the point, as `explain` lists params'
                    problems = []
                    for e in err.errors():
                        msg, loc = e["msg"].removeprefix("Value error, "), tuple(map(str, e["loc"]))
                        problems.append(f"{'.'.join(loc)}: {msg}{_got(e, msg)}{_colon_hint(loc)}")
                    raise ValueError(f"sweep point {dict(zip(self.sweep, point))}: {listed(problems)}") from None
            name = f"lr{lr}-seed{seed}" + "".join(f"-{key}{_slug(v)}" for key, v in settings)
            if name in out:
                raise ValueError(f"two sweep points share the ingredient name {name!r}; list each value once")
            out[name], points[name] = Ingredient(name, lr, seed, train), dict(zip(self.sweep, point))
        lora_axes = [key for key in self.sweep if key.split(".")[0] == "lora"]
        if lora_axes and all(i.train.method != "lora" for i in out.values()):
            why = next(iter(out.values())).train.unread_settings()["lora"]
            raise ValueError(f"sweep axis {lora_axes[0]!r} {why}; set train.method: lora or drop the axis")
        # named apart, trained alike: `epochs: [2, 2.0]`, or `method: [full, lora]` with `lora.r: [4, 8]`
        trained: dict[str, str] = {}  # a point's key settings (lr and seed included) -> its name
        for name, ing in out.items():
            same = json.dumps(ing.key_settings(), sort_keys=True)
            if same in trained:
                raise ValueError(_same_model(trained[same], points[trained[same]], name, points[name],
                                             ing.train.unread_settings()))
            trained[same] = name
        return list(out.values())


PROBE = "linear-probe"  # the one ingredient of train.method: probe
BOOKKEEPING = ("checkpoint_every", "keep_replaced")  # train keys that do not change the model trained
# train keys added after keys were in use, at the value that trains as before they existed: left out of the keys
# there, so that an upgrade retrains nothing
NEUTRAL = {"label_smoothing": 0.0, "layer_lr_decay": 1.0, "self_training": SelfTrainingParams()}
FIXED_FOR_SWEEP = {
    "learning_rates": "list learning rates in train.learning_rates",
    "seeds": "list seeds in train.seeds",
    "sweep": "the sweep does not nest",
    "head_init": "ingredients must share their initialisation to be souped",
    "head_init_seed": "ingredients must share their initialisation to be souped",
    "pooling": "ingredients must share one architecture to be souped",
    "max_length": "soup and evaluate read every model at the one train.max_length",
    "self_training": "ingredients must share their initialisation to be souped (LP-FT's head is fit on the "
                     "pseudo-labels too)",
    **dict.fromkeys(BOOKKEEPING, "it does not change the model trained"),
}


@dataclass(frozen=True)
class Ingredient:
    """One point of the train sweep: its folder name, learning rate, seed and train section."""

    name: str
    lr: float
    seed: int
    train: TrainParams

    def key_settings(self) -> dict[str, Any]:
        """What shapes this ingredient's model: its section's `key_settings`, with its learning rate and seed unless
        it is the probe (deterministic, it reads neither: editing train.learning_rates does not refit it).
        `head_learning_rate: null` is keyed as the body's rate it means (`body_rate`: LoRA's scaled one), so spelling
        that rate out trains nothing."""
        settings = self.train.key_settings()
        if self.train.method == "probe":
            return settings
        if "head_learning_rate" in settings and settings["head_learning_rate"] is None:
            settings["head_learning_rate"] = self.train.body_rate(self.lr)
        return {**settings, "lr": self.lr, "seed": self.seed}


def _key_order(value: Any) -> Any:
    """`value` with the keys of each mapping in it sorted."""
    if not isinstance(value, dict):
        return value
    return {k: _key_order(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}


def _flat(key: str, value: Any) -> list[tuple[str, Any]]:
    """A sweep value as dotted settings: a dict sets its keys inside the section (`lora: {r: 4}` -> `lora.r`)."""
    if isinstance(value, dict) and value:
        return [kv for k, v in value.items() for kv in _flat(f"{key}.{k}", v)]
    return [(key, value)]


def _same_model(first: str, a: dict[str, Any], second: str, b: dict[str, Any], unread: dict[str, str]) -> str:
    """One line saying that sweep points `first` and `second` (their axis values `a` and `b`) train the same model,
    why (an axis the model does not read, `unread`: `TrainParams.unread_settings`, or two spellings of one value)
    and what to change."""
    differ = [key for key in a if json.dumps(a[key], sort_keys=True) != json.dumps(b[key], sort_keys=True)]
    idle = [key for key in differ if key.split(".")[0] in unread]
    why = "; ".join(f"{key} {unread[key.split('.')[0]]}" if key in idle else
                    f"{key}: {json.dumps(a[key])} and {json.dumps(b[key])} give the same setting"
                    + (" (null: the body's learning rate)" if key == "head_learning_rate" else "") for key in differ)
    fix = (f"drop {' and '.join(idle)} from train.sweep, or change the setting that leaves it without effect (a "
           "sweep trains every combination of its axes)" if idle else
           "drop null or the value equal to a train.learning_rates entry from the head_learning_rate axis"
           if "head_learning_rate" in differ else "list each value once")
    return f"sweep points {first!r} and {second!r} train the same model: {why}; {fix}"


def _unknown_axes(section: type[BaseModel], sweep: dict[str, list]) -> str | None:
    """Every sweep axis, and every setting a mapping value of a known axis sets (`lora: [{rank: 4}]` sets lora.rank;
    `{r:4}`, the key 'r:4', gets a colon hint from validation), that names no key of `section`, in one line; None when
    all do. It named the first only (`lora: [{alpah: 8, dropot: 0.1}]`: 'lora.alpah', then 'lora.dropot' on the next
    run). Checked before any point is built, so `lora.rank` reads as the unknown axis it is, not as a sweep point's
    validation error."""
    axes = {key: hints for key in sweep if (hints := _axis_hints(section, key)) is not None}
    shown: set[str] = set()  # the sub-section keys said so far: each once in the line
    said = [_not_train_keys(axes, "sweep axis", "sweep axes", " ", shown)] if axes else []
    for key, values in sweep.items():
        for value in values if key not in axes else ():
            settings = {setting: hints for setting, _ in (_flat(key, value) if isinstance(value, dict) else ())
                        if ":" not in setting and (hints := _axis_hints(section, setting)) is not None}
            if settings:
                lead = f"sweep axis {key!r}: the value {value!r} sets"
                said.append(_not_train_keys(settings, lead, lead, ", which ", shown))
    return "; ".join(said) or None


def _axis_hints(section: type[BaseModel], key: str) -> tuple[str, str] | None:
    """Why the dotted sweep axis `key` names no key of `section`: a guess (the nearest key, why it cannot be an axis,
    or the key without a `train.` prefix), else the keys of the sub-section it stops in ('' each when none); None
    when it names one."""
    done: list[str] = []
    for part in key.split("."):
        fields = section.model_fields if isinstance(section, type) and issubclass(section, BaseModel) else {}
        if part in fields:
            done.append(part)
            section = fields[part].annotation
            continue
        if not done and part == "train" and "." in key:
            return f"sweep axes are keys inside train: {key.removeprefix('train.')!r}", ""
        if near := [f for f in fields if part.lower() in _abbreviations(f)] or difflib.get_close_matches(
                part.lower(), list(fields), n=1):  # `lr` is learning_rates, as for an unknown key
            fixed = FIXED_FOR_SWEEP.get(near[0]) if not done else None
            return (f"{near[0]!r}? it cannot be a sweep axis: {fixed}" if fixed else
                    f"did you mean {'.'.join([*done, near[0]])!r}?"), ""
        return "", f"{'.'.join(done)}'s keys: {', '.join(fields)}" if done and fields else ""
    return None


def _not_train_keys(named: dict[str, tuple[str, str]], one: str, many: str, which: str, shown: set[str]) -> str:
    """The `named` keys (-> `_axis_hints`) as one sentence led by `one` or, for several, `many`: each guess after its
    key, a sub-section's keys at the end unless `shown` (those said before in the line; these are added). One key
    reads `sweep axis 'epoch' is not a train key (did you mean 'epochs'?)`."""
    keys = [k for k in dict.fromkeys(keys for _, keys in named.values() if keys) if k not in shown]
    shown.update(keys)
    if len(named) == 1:
        [(key, (guess, _))] = named.items()
        hint = guess or "".join(keys)
        return f"{one} {key!r}{which}is not a train key" + (f" ({hint})" if hint else "")
    return (f"{many} {_and([f'{key!r}' + (f' ({guess})' if guess else '') for key, (guess, _) in named.items()])}"
            f"{which}are not train keys" + (f" ({'; '.join(keys)})" if keys else ""))


def _slug(value: Any) -> str:
    """A sweep value as part of a folder name: `[query, value]` -> `query+value`."""
    text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^\w.+=-]", "_", text)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        if not isinstance(tree.get(p), dict):
            raise ValueError(f"{key!r}: {p!r} is not a section")
        tree = tree[p]
    tree[leaf] = value


def _one_of(name: Any, allowed: tuple[str, ...]) -> str:
    """`name` when it is one of `allowed`, else pydantic's Literal error over them ('a', 'b' or 'c'), which the
    one-line message completes with a did-you-mean."""
    if not (isinstance(name, str) and name in allowed):
        names = [repr(n) for n in allowed]
        raise PydanticCustomError("literal_error", "Input should be {expected}",
                                  {"expected": " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))})
    return name


def _registered_soup(name: Any) -> str:
    """A `soup.methods` value: the name of a soup in the registry (`soupline.soup_methods`) when validated, so a soup
    registered after this module was imported (a test's) is one too."""
    return _one_of(name, tuple(SOUPS))


# The soups soupline makes: soup.methods' values, and the <method> of `soupline predict --model soup:<method>`
SoupMethod = Annotated[str, PlainValidator(_registered_soup)]


class SoupCommon(Section):
    methods: list[SoupMethod] = Field(
        ["uniform", "greedy", "ties", "dare"], description="soups to make ([]: none; a sweep of one "
        "ingredient makes none either)")

    def in_use(self) -> dict[str, Any]:
        """The soup settings that shape the soups: all but `keep_replaced` (bookkeeping) and the sub-sections of the
        soups not made (no soup reads `soup.ties.*` unless ties is in `methods`). Soup's and evaluate's keys and a
        study cell's hold these, so editing the settings of a soup not made rebuilds nothing (as
        `SelectCommon.in_use`). What a soup made reads of another's sub-section is kept (its entry's `reads`): DARE
        with `merge: ties` reads `ties.top_k`, and that alone of the ties section: without ties made, only it is
        kept (editing `ties.scale` re-made an unchanged DARE soup)."""
        sections = {name for name, soup in SOUPS.items() if soup.settings is not None}
        used = self.model_dump(mode="json", exclude=sections - set(self.methods) | {"keep_replaced"})
        for method in self.methods:
            for section, settings in (SOUPS[method].reads(self) if SOUPS[method].reads else {}).items():
                used.setdefault(section, {}).update(settings)
        return used

    @field_validator("methods")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        if twice := sorted({m for m in v if v.count(m) > 1}):
            raise ValueError(f"{twice} listed more than once; each soup is made once")
        return v

    @model_validator(mode="after")
    def _top_k_is_a_percent(self) -> "SoupCommon":
        """`ties.top_k` is a percent, where mergekit's TIES `density` is a fraction: 0.2 meant as 20 % kept 0.2 %,
        silently (the LoRA TIES soup of a 400-text bbcnews run fell from 0.8875 to 0.8125 test accuracy)."""
        k = self.ties.top_k
        if k <= 1 and "top_k" in self.in_use().get("ties", {}):  # only while TIES, or DARE's ties merge, reads it
            warnings.warn(f"soup.ties.top_k={k:g} is a percent: TIES keeps {k:g} % of each task vector; for "
                          f"mergekit's density {k:g} (a fraction), write soup.ties.top_k={k * 100:g}", stacklevel=2)
        return self


# One sub-section per registered soup with settings (`soup.ties.top_k`, ...), in the registry's order, then
# `keep_replaced`
SoupParams = create_model(
    "SoupParams",
    __base__=SoupCommon,
    **{name: (soup.settings, Field(default_factory=soup.settings)) for name, soup in SOUPS.items()
       if soup.settings is not None},
    keep_replaced=(int, Field(4, ge=0, description="soups replaced or dropped from methods kept in "
                              "data/cache/soups (the newest, and all a run shelved since the cache was last pruned), "
                              "moved back when their ingredients and settings come back (0: none)")),
)


HEADLINE_RULES = ("auto", "best_ingredient")  # evaluate.final's values besides a soup's name


def _final_model(name: Any) -> str:
    """An `evaluate.final` value: a headline rule or a registered soup (checked against `soup.methods` by Params)."""
    return _one_of(name, HEADLINE_RULES + tuple(SOUPS))


class EvaluateParams(Section):
    batch_size: int = Field(64, ge=1)
    final: Annotated[str, PlainValidator(_final_model)] = Field(
        "auto", description="the run's headline model (metrics.json's `final`, what `soupline predict` and a study's "
        "tables use): auto (the greedy soup, else the uniform soup, else the first soup made, else the best "
        "ingredient), best_ingredient (by validation accuracy), or a soup of soup.methods")

    def measured(self) -> dict[str, Any]:
        """The settings the scores depend on: all but `final`, which only picks the headline among them, so a study
        cell (keyed on these) is judged again by a new `final` without running again."""
        return self.model_dump(mode="json", exclude={"final"})


class StudyParams(Section):
    methods: list[str] = Field(["random", "kmeans", "gotd"], min_length=1, description="selection methods "
                               "compared (each configured by its select.<method> sub-section)")
    budgets: list[Union[int, float]] = Field([0.02, 0.1], min_length=1, description="budgets compared "
                                             "(fractions of the pool or counts)")
    seeds: list[Seed] = Field([0], min_length=1, description="selection seeds per (method, budget)")
    full_pool: bool = Field(True, description="add a reference cell trained on the whole pool")
    cross_soups: bool = Field(False, description="per budget, also soup the ingredients of every method "
                              "and seed at that budget together (ingredients trained on different selections)")
    keep_models: bool = Field(False, description="keep each cell's ingredients and soups (about "
                              "(ingredients + soups) x model size per cell)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            SelectCommon._known_method(m)
        return v

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, v: Any) -> Any:
        return [SelectCommon._budget_range(b, key="study.budgets") for b in v] if isinstance(v, list) else v

    @field_validator("methods", "budgets", "seeds")
    @classmethod
    def _each_once(cls, v: list) -> list:
        """A repeat names the same cell twice (and a cross soup would link its ingredients twice: a traceback).
        By spelling: budget 1 (one example) and 1.0 (the whole pool) are two cells."""
        spelt = [repr(x) for x in v]
        if twice := sorted({str(x) for x, r in zip(v, spelt) if spelt.count(r) > 1}):
            raise ValueError(f"{twice} listed more than once; each cell is run once")
        return v


def no_soup_reason(params: Params, names: list[str]) -> str | None:
    """Why this run makes no soups, or None when it makes every soup of `soup.methods` from the ingredients `names`:
    the soup stage's rule, and `evaluate.final`'s check of a soup it names before any work."""
    if params.train.method == "probe":
        return "train.method: probe fits one deterministic ingredient"
    if not params.soup.methods:
        return "soup.methods is empty"
    if len(names) < 2:
        return (f"one ingredient, {names[0]}; a soup averages 2 or more: list more train.learning_rates, "
                "train.seeds or train.sweep values")
    return None


class Params(Section):
    seed: Seed = Field(42, description="global seed: splits, selection")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    model: str = Field("all-MiniLM-L6-v2", description="base model: a built-in name (all-MiniLM-L6-v2, or "
                       "all-mpnet-base-v2 with the mpnet extra), a local folder in Hugging Face layout, or a hub id "
                       "(needs internet)")
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    select: SelectParams = Field(default_factory=SelectParams)  # type: ignore[valid-type]
    train: TrainParams = Field(default_factory=TrainParams)
    soup: SoupParams = Field(default_factory=SoupParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    study: StudyParams = Field(default_factory=StudyParams)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _probe_reads_embeddings(self) -> "Params":
        t = self.train
        changed = [f"train.pooling={t.pooling}"] if t.pooling != TrainParams.model_fields["pooling"].default else []
        if t.max_length != self.embed.max_length:
            changed.append(f"train.max_length={t.max_length}")
        read = self.select.train_read(t)  # DEALRec's effort pass reads them
        changed = [c for c in changed if c.split("=")[0].removeprefix("train.") not in read]
        if t.method == "probe" and changed:
            warnings.warn(f"train.method: probe is fit on the embed stage's vectors (unit-norm mean, "
                          f"embed.max_length={self.embed.max_length}), so {', '.join(changed)} does not apply",
                          stacklevel=2)
        if t.method == "probe" and t.class_weighting != "none":  # fit_probe's logistic regression weighs no label
            warnings.warn(f"train.method: probe fits an unweighted logistic regression, so "
                          f"train.class_weighting={t.class_weighting} does not apply (it weighs fine-tuning's loss)",
                          stacklevel=2)
        return self

    @model_validator(mode="after")
    def _final_soup_is_made(self) -> "Params":
        """A soup named as the headline model must be one this run makes, said before any work (else evaluate would
        find it missing after every ingredient was trained)."""
        final = self.evaluate.final
        if final in HEADLINE_RULES:
            return self
        fix = "set evaluate.final to auto or best_ingredient"
        if final not in self.soup.methods:
            raise ValueError(f"evaluate.final is {final}, which soup.methods {self.soup.methods} does not make: add "
                             f"it to soup.methods, or {fix}")
        if why := no_soup_reason(self, [ingredient.name for ingredient in self.train.ingredients()]):
            raise ValueError(f"evaluate.final is {final}, but this run makes no soups ({why}); {fix}")
        return self

    @model_validator(mode="after")
    def _dnc_finetune_scorer_has_a_model(self) -> "Params":
        """Said before any work: the select stage found it after clustering and a first round."""
        runs_dnc = "select.method is dnc" if self.select.method == "dnc" else \
            "study.methods lists dnc" if "dnc" in self.study.methods else None
        if runs_dnc and self.select.dnc.scorer == "finetune" and self.train.method == "probe":
            raise ValueError(f"{runs_dnc} and select.dnc.scorer=finetune fine-tunes the train stage's model, but "
                             "train.method is probe; use select.dnc.scorer: proxy (a probe on the embeddings)")
        return self

    @model_validator(mode="after")
    def _cross_soups_share_init(self) -> "Params":
        if self.study.cross_soups and self.train.method == "probe":
            raise ValueError("study.cross_soups soups fine-tuned ingredients; train.method: probe has none to soup")
        if self.study.cross_soups and self.train.head_init == "probe":
            raise ValueError("study.cross_soups needs ingredients with one shared initialisation, but "
                             "train.head_init: probe fits each selection's own head; use head_init: random")
        return self


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings (value parsed as YAML) to a nested dict, in order, as `dvc exp run -S` applies
    them: a mapping is merged into the section it names (`train.lora={r: 4}` keeps lora's other keys; DVC's Hydra
    merges, where replacing the section put every other key back to its default), `{}` empties it (under DVC a
    no-op), DVC's `+key=` / `++key=` are `key=`, and `~key` removes a key (its default)."""
    for i, item in enumerate(overrides):
        item_key = item.lstrip("+")  # `++train.sweep={epochs: [3, 6]}`, as the README writes it for DVC
        if item_key.startswith("~") and "=" not in item_key and item_key[1:].strip():  # DVC's `~train.sweep.epochs`
            *parents, leaf = item_key[1:].strip().split(".")
            node = raw
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if not (isinstance(node, dict) and leaf in node):  # Hydra: "Could not delete from config"
                raise SouplineError(f"override {item!r}: the params have no {item_key[1:].strip()!r} to remove "
                                    "(a misspelt key?); `~key` removes a key params.yaml sets, back to its default")
            node.pop(leaf)
            continue
        key, sep, value = item_key.partition("=")
        if not sep or not key:
            raise SouplineError(f"override {item!r} is not key=value (example: select.method=kmeans)"
                                f"{_split_by_the_shell(overrides, i)}")
        if glued := _GLUED_OVERRIDE.search(value):  # `O='a=1 b=2'; soupline run $O` in zsh, which splits no $O
            raise SouplineError(f"override {item!r} holds more than one override, separated by a space before "
                                f"{glued.group(1)!r}: pass each as its own argument (zsh does not split an unquoted "
                                "$O: write ${=O}, or the overrides themselves)")
        node = raw
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if node.get(p) is None:  # absent, or null in params.yaml (prepare.splits): an empty section
                node[p] = {}
            if not isinstance(node[p], dict):
                raise SouplineError(f"override {item!r}: {p!r} is not a section")
            node = node[p]
        try:
            node[leaf] = _merged(node.get(leaf), yaml.load(value, Loader=_UniqueKeyLoader))  # as params.yaml is read
        except _DuplicateKeyError as err:
            raise SouplineError(f"override {item!r}: {err.problem}") from None
        except yaml.YAMLError as err:
            split = (i + 1 < len(overrides) and sum(map(value.count, "[{")) > sum(map(value.count, "]}")))
            fix = ("the shell split it at a space: quote the whole override" if split else
                   "quote it or fix the brackets")
            raise SouplineError(f"override {item!r}: the value is not valid YAML: {yaml_problem(err)}; "
                                f"{fix} (example: 'train.seeds=[0, 1]')") from None
    return raw


def _merged(old: Any, new: Any) -> Any:
    """`new` merged into `old` as DVC's `-S` (OmegaConf) merges: mappings key by key, anything else replaced; an
    empty mapping replaces (empties a section or the sweep)."""
    if isinstance(old, dict) and isinstance(new, dict) and new:
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


# a second `section.key=` (or a top-level key=) after a space inside one override's value
_GLUED_OVERRIDE = re.compile(rf"\s((?:{'|'.join(Params.model_fields)})(?:\.[\w.]+)?=)")


def _split_by_the_shell(overrides: list[str], i: int) -> str:
    """Why override `i` may have come apart: spaces around its '=' (`select.budget = 0.3`, `select.budget= 0.3`)."""
    before = overrides[i - 1] if i else ""
    after = overrides[i + 1] if i + 1 < len(overrides) else ""
    if before.endswith("=") or overrides[i] == "=" or overrides[i].startswith("=") or after.startswith("="):
        return "; write it as one word, with no spaces around '=' (select.budget=0.3)"
    return ""


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Params
    for part in loc:
        field = model.model_fields.get(part) if model else None
        ann = field.annotation if field else None
        candidates = getattr(ann, "__args__", (ann,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _dotted_keys(loc: tuple = ()) -> list[str]:
    """Every params key at and under section `loc`, dotted (`train.epochs`, `select.kmeans.niter`)."""
    keys = []
    for name in _model_at(loc).model_fields:
        keys.append(".".join((*loc, name)))
        if _model_at((*loc, name)) is not None:
            keys += _dotted_keys((*loc, name))
    return keys


def _abbreviations(name: str) -> set[str]:
    """`name`'s words from some word on shortened to their initials: learning_rates -> lr, head_learning_rate ->
    hlr and head_lr (none for a one-word name)."""
    words = name.split("_")
    return {"_".join(words[:i] + ["".join(w[0] for w in words[i:])]) for i in range(len(words) - 1)}


def explain(err: ValidationError) -> str:
    """Every validation error as one line that names each params key and a fix, as pydantic, DVC and ruff list
    them, so one pass over params.yaml mends them all (it named the first and then "(and 1 more)")."""
    reported = _to_report(err.errors())
    sections: dict[tuple[str, ...], list[dict]] = {}  # the unknown keys, by the section they are in
    for e in reported:
        if e["type"] == "extra_forbidden":
            sections.setdefault(_key_of(e)[:-1], []).append(e)
    return "params: " + listed([*map(_unknown, sections.values()),
                                *(_problem(e) for e in reported if e["type"] != "extra_forbidden")])


MAX_PROBLEMS = 5  # problems named in one line; the rest are counted


def listed(problems: list[str]) -> str:
    """`problems` in one line: a lone one as it is, several numbered (their own text may hold '; ') up to
    `MAX_PROBLEMS`, then how many more."""
    if len(problems) == 1:
        return problems[0]
    shown = "; ".join(f"{i}) {p}" for i, p in enumerate(problems[:MAX_PROBLEMS], 1))
    more = f" (and {len(problems) - MAX_PROBLEMS} more)" if len(problems) > MAX_PROBLEMS else ""
    return f"{len(problems)} problems: {shown}{more}"


def _to_report(errors: list[dict]) -> list[dict]:
    """pydantic's errors, one per mistake: a union's branches as the one that got furthest in the value (not the
    `str` branch of `[text, 5]` beside its `list[str].1`); unknown keys first; and no missing key that an unknown
    one's guess names (`prepare.splits: {train: a.csv}` is the key `train` misspelt, not also a missing `pool`)."""
    chosen: dict[Any, dict] = {}
    for i, e in enumerate(errors):
        at = _before_union_branch(e["loc"])
        group = at if at != tuple(e["loc"]) else i  # a union's errors are one value's
        if group not in chosen or len(e["loc"]) > len(chosen[group]["loc"]):
            chosen[group] = e
    unknown = [e for e in chosen.values() if e["type"] == "extra_forbidden"]
    guessed = {g for e in unknown for g in _guesses(_key_of(e))}
    rest = [e for e in chosen.values() if e["type"] != "extra_forbidden"]
    return unknown + [e for e in rest if e["type"] != "missing" or ".".join(_key_of(e)) not in guessed]


def _key_of(error: dict) -> tuple[str, ...]:
    """An error's params key, without pydantic's union branch names (`prepare.text_column.str`); [text, 5] is
    list[str].1."""
    return tuple(str(p) for p in error["loc"] if not _UNION_BRANCH.fullmatch(str(p)))


def _guesses(loc: tuple[str, ...]) -> list[str]:
    """The keys an unknown key `loc` may have meant, at most three: a key it abbreviates first (`lr` is
    learning_rates, `head_lr` head_learning_rate, `bs` batch_size: spelling alone offered lora, head_init), then
    the closest spelling, then the key of that name in another section (`epochs=3` is train.epochs)."""
    parent = _model_at(loc[:-1])
    valid = list(parent.model_fields) if parent else []
    near = [f for f in valid if loc[-1].lower() in {f.lower(), *_abbreviations(f)}]  # `TRAIN`, `dnc.K` too
    near += difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
    if parent is SplitFiles:  # `train: a.csv`, as datasets names the pool split
        from soupline.data import SPLIT_ALIASES

        near[:0] = [split for split, names in SPLIT_ALIASES.items() if loc[-1] in names]
    nearby = [".".join(loc[:-1] + (name,)) for name in near]
    elsewhere = [] if parent is SplitFiles else [  # splits.train is no `train` section
        k for k in _dotted_keys() if k.rsplit(".", 1)[-1] == loc[-1]]
    return list(dict.fromkeys(nearby + elsewhere))[:3]


def _unknown(errors: list[dict]) -> str:
    """The unknown keys of one section as one problem: each key with its guesses (`_guesses`), then the section's
    valid keys once, when a key has no guess (two typos in `select.dealrec` listed all its keys twice), and the
    colon hints. One key reads `unknown key 'select.metod' (did you mean 'select.method'?)`."""
    locs = [_key_of(e) for e in errors]
    guesses = [_guesses(loc) for loc in locs]
    named = [f"{'.'.join(loc)!r}" + (f" (did you mean {' or '.join(map(repr, g))}?)" if g else "")
             for loc, g in zip(locs, guesses)]
    parent = _model_at(locs[0][:-1])
    valid = "" if all(guesses) else f"; valid keys: {list(parent.model_fields) if parent else []}"
    keys = f"key{'s' * (len(named) > 1)} {_and(named)}"
    return f"unknown {keys}{valid}{_colon_hint(*locs)}"


def _and(items: list[str]) -> str:
    """`items` as prose: `a`, `a and b`, `a, b and c`."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _problem(error: dict) -> str:
    """One validation error but an unknown key (`_unknown`) in a few words: its key, what is wrong and a fix."""
    loc = _key_of(error)
    key = ".".join(loc)
    msg = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if error["type"] == "missing" and _model_at(loc[:-1]) is SplitFiles:  # not pydantic's bare "Field required"
        msg = (f"missing: splits of your own start from the pool's file ({key}: <file>); or set "
               f"{'.'.join(loc[:-1])}: null to split prepare.source")
    if error["type"] == "model_type":  # not pydantic's "a valid dictionary or instance of PrepareParams"
        msg = "must be a section: a mapping of its keys" + (
            ", or {} for its defaults (every key under it is commented out or missing: YAML reads it as null)"
            if value is None else "")
    return f"{key + ': ' if key else ''}{msg}{_got(error, msg)}{_colon_hint(loc)}"


def _got(first: dict, msg: str) -> str:
    """What a validation error `first` (message `msg`) was given, as " (got ...)" with a fix where the value shows
    one: YAML's booleans, numbers where a name was meant, a mapping from a missing space, a scalar for a list."""
    value = first.get("input")
    said = ", got " in msg and first["type"] != "int_from_float"  # pydantic's "got a number with a fractional part"
    got = "" if isinstance(value, dict) or said or first["type"] == "extra_forbidden" \
        or first["type"] == "model_type" and value is None \
        else f" (got {value!r})"
    if isinstance(value, bool) and "bool" not in first["type"]:
        got = f" (got {value!r}: YAML reads unquoted true/false as a boolean)"
    if first["type"] == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        got = f" (YAML read it as the number {value!r}: quote the name as you wrote it)"
    if first["type"] == "string_type" and isinstance(value, datetime.date):  # `2024-01-01` unquoted
        got = f" (YAML read it as the date {value.isoformat()}: quote the name as you wrote it)"
    if first["type"] == "string_type" and isinstance(value, dict) and len(value) == 1:  # `q=column: rating`
        (k, v), = value.items()
        got = (f" (YAML read '{k}: {v}' as a mapping, for the space after ':'; write {k}:{v})" if v is not None else
               f" (YAML read '{k}:' as a key with no value; give what follows ':' with no space: {k}:<name>)")
    if first["type"] == "list_type" and not isinstance(value, (dict, list)) and value is not None:
        got = f" (got {value!r}; write a list: [{value}])"
    if first["type"] == "literal_error" and isinstance(value, str):  # a typo in one of a few allowed words
        near = difflib.get_close_matches(value, re.findall(r"'([^']*)'", first["ctx"]["expected"]), n=1, cutoff=0.6)
        got = f" (got {value!r}; did you mean {near[0]!r}?)" if near else got
    return got


def _colon_hint(*locs: tuple[str, ...]) -> str:
    """`{epochs:1}` is YAML for the key 'epochs:1' with no value: keys holding ':' get the fix, in one hint."""
    names = [next(p for p in loc if ":" in p) for loc in locs if any(":" in p for p in loc)]
    fixes = [f"{key}: {value}" for key, _, value in (name.partition(":") for name in names)]
    return f"; YAML needs a space after ':' ({', '.join(fixes)})" if fixes else ""


def _before_union_branch(loc: tuple) -> tuple:
    """`loc` up to a union branch's name (all of it when there is none)."""
    return tuple(itertools.takewhile(lambda p: not _UNION_BRANCH.fullmatch(str(p)), loc))


_UNION_BRANCH = re.compile(r"(str|int|float|bool|list\[.*\]|dict\[.*\])")  # pydantic's name of a type's branch


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (its own type, so an override's error skips the bracket hint)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last silently, so a
    `budget:` written twice in a section would run with whichever came second."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then a key of base: an override, allowed
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # PyYAML's own error follows
                continue
            if key in seen:
                raise _DuplicateKeyError(
                    None, None, f"{key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# PyYAML reads YAML 1.1; DVC (ruamel) reads and writes YAML 1.2, as the README promises params.yaml is read. Where
# they differ: 1.1's floats need a dot and a signed exponent (`1e-3` and `1.5e3` were text: `select.budget: 1.5e3`
# was "quoted in YAML"), its booleans include yes/no/on/off (`dvc exp run -S 'prepare.label_names=[no,yes]'` writes
# `- no` unquoted, which 1.1 read as False: no spelling of that -S could give the names), `010` is octal 8 and `1:20`
# the base-60 number 80. Here the 1.2 core schema's booleans, ints and floats replace 1.1's.
_YAML12 = {  # tag -> (pattern, first characters); ints before floats, as a float pattern needs a dot or an exponent
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^[-+]?(?:[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+)$", "-+0123456789"),
    "tag:yaml.org,2002:float": (r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*\.[0-9_]*)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
                                "-+0123456789."),
}
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML12]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, (_pattern, _first) in _YAML12.items():
    _UniqueKeyLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A 1.2 int: decimal (`010` is 10), 0o octal or 0x hex."""
    text = loader.construct_scalar(node).replace("_", "")
    sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Yaml12Dumper(yaml.SafeDumper):
    """PyYAML's dumper quotes a string only where YAML 1.1 would read it as another type: `1.5e3`, `0o10` were
    written bare, which `load` (YAML 1.2) reads back as numbers. It quotes where either version would."""


_Yaml12Dumper.yaml_implicit_resolvers = {  # a string either version reads as another type is quoted
    first: [*yaml.SafeDumper.yaml_implicit_resolvers.get(first, ()),
            *_UniqueKeyLoader.yaml_implicit_resolvers.get(first, ())]
    for first in {*yaml.SafeDumper.yaml_implicit_resolvers, *_UniqueKeyLoader.yaml_implicit_resolvers}}


def dump(obj: Any) -> str:
    """`obj` as YAML that `load` (and DVC) read back as the same values (`soupline params`)."""
    return yaml.dump(obj, Dumper=_Yaml12Dumper, sort_keys=False)


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong, where, and what it was reading. Its own text starts with the
    context on a line of its own (`while parsing a flow sequence`), so its first line alone said neither."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem is None:
        return " ".join(str(err).split())
    text = err.problem
    if err.problem_mark is not None and not isinstance(err, _DuplicateKeyError):  # that one names its line
        text += f" at line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}"
    if err.context:
        mark = err.context_mark
        text += f" ({err.context}" + (f" from line {mark.line + 1}, column {mark.column + 1})" if mark else ")")
    return text


def validate(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise SouplineError(explain(err)) from None


def load(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read params.yaml (missing file -> all defaults; an empty one is an error), apply overrides, validate."""
    path = Path(path)
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as err:
            raise SouplineError(f"{path} is not valid YAML: {yaml_problem(err)}") from None
        except UnicodeDecodeError as err:
            raise SouplineError(f"{path} is not UTF-8 (byte {err.object[err.start]:#04x} at offset {err.start}); "
                                "re-save it as UTF-8") from None
        except IsADirectoryError:
            raise SouplineError(f"params file {str(path)!r} is a folder; give the params file in it") from None
        if raw is None:  # an emptied file must not run the defaults (the whole built-in corpus) as a typo would
            raise SouplineError(f"{path} is empty (or only comments); put the params in it (`git checkout "
                                f"{path.name}` if it was emptied by mistake), or write {{}} in it to run every default")
        if not isinstance(raw, dict):
            raise SouplineError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    return validate(apply_overrides(raw, overrides or []))


def load_existing(path: str | Path, overrides: list[str] | None = None) -> Params:
    """`load` for a params file that must exist (the Prefect flows' `--params` / `params_path` under `--root` /
    `root`): a missing one is a one-line error, not the defaults, which would run the default pipeline (the
    whole built-in corpus) in whatever folder `--root` names."""
    path = Path(path)
    if not path.exists():  # a folder is `load`'s one line
        raise SouplineError(f"params file {path} does not exist; check --params (read from --root) and --root "
                            "(the workspace that holds params.yaml), or a deployment's params_path and root parameters")
    return load(path, overrides)

"""Soup methods: a registry, one entry per soup (as `soupline.select` registers its selection methods).

An entry is a function decorated with `@register("<name>", Settings)`: it makes the soup from a `SoupContext` (the
ingredients, their validation scores, a validation scorer, validation batches, the shared init of a task-arithmetic
merge, its own `soup.<name>` settings) and returns a `Made`. `Settings` is its params sub-section (a
`ParamsSection`, unknown keys rejected), or none (uniform); `reads=` names what it reads of other sub-sections
(DARE with `merge: ties` reads `ties.top_k`: `SoupParams.in_use` keeps it), `overflow=` what to lower when its
validation logits overflow float32 (TIES' and DARE's scale). The registry's names are `soup.methods`' values and the
`<name>` of `soupline predict --model soup:<name>`, checked against the registry as params are validated;
config.py makes a `soup.<name>` sub-section of each entry's settings when it is imported (a soup registered after
that, a test's, has its name accepted but no settings). So adding a soup is an entry here and nothing else. The
kernels live in soup.py and learned_soup.py, imported inside the entries: config.py imports this module, and a
stage that makes no soup imports no torch for it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field

from soupline.select.base import ParamsSection, Seed, check_name


@dataclass
class SoupContext:
    """Everything a soup method may use, from the soup stage; a soup writes its weights into `into` (the evaluation
    model's own tensors) or returns a state the stage loads there."""

    states: Sequence[Mapping]  # the ingredients' weights (lazy: read tensor by tensor), in `ingredient_names` order
    val_scores: list[float]  # each ingredient's validation accuracy (train_info.json)
    val_accuracy: Callable[[Mapping], float]  # a state's validation accuracy: one forward pass per distinct weights
    val_batches: Callable[[int, int], list]  # (seed, size) -> validation in shuffled (inputs, labels) batches
    base: Callable[[], dict]  # the ingredients' shared init (pretrained body + head init): a task vector's origin
    model: Any  # the evaluation model, whose own tensors `into` holds
    into: MutableMapping
    soup: Any  # the whole `soup` section (a SoupParams): DARE's ties merge reads `soup.ties.top_k`
    settings: ParamsSection | None  # this soup's own sub-section, `soup.<name>` (None: it has none)

    def all_kept(self, state: Mapping, **info: Any) -> Made:
        """A soup of every ingredient, scored on validation, with `info` for its soup.json."""
        return Made(state, list(range(len(self.states))), [], info, self.val_accuracy(state))


@dataclass
class Made:
    """A soup: its weights, the ingredients it kept (indices), one log record per step (`ingredient` an index),
    what else soup.json records of it, and its validation accuracy."""

    state: Mapping | None
    kept: list[int]
    log: list[dict]
    info: dict[str, Any]
    val_accuracy: float


MakeFn = Callable[[SoupContext], Made]


@dataclass(frozen=True)
class SoupEntry:
    """One registered soup (`register`)."""

    name: str
    make: MakeFn
    settings: type[ParamsSection] | None = None  # its `soup.<name>` sub-section
    reads: Callable[[Any], dict[str, dict]] | None = None  # (SoupParams) -> what it reads of other sub-sections
    overflow: Callable[[Any], str] | None = None  # (its settings) -> why its logits overflow and what to lower


REGISTRY: dict[str, SoupEntry] = {}


def register(name: str, settings: type[ParamsSection] | None = None, reads: Callable | None = None,
             overflow: Callable | None = None) -> Callable[[MakeFn], MakeFn]:
    """Register `make(ctx) -> Made` as the soup `name` (lowercase, unique) with its `soup.<name>` settings."""
    check_name(REGISTRY, name, "soup method")

    def wrap(make: MakeFn) -> MakeFn:
        REGISTRY[name] = SoupEntry(name, make, settings, reads, overflow)
        return make

    return wrap


@register("uniform")
def uniform(ctx: SoupContext) -> Made:
    """The mean of every ingredient (Wortsman et al. 2022)."""
    from soupline import soup

    return ctx.all_kept(soup.uniform(ctx.states, into=ctx.into))


class GreedySoupParams(ParamsSection):
    strict: bool = Field(True, description="keep an ingredient only if validation accuracy rises "
                         "(the paper's released code); false: also on a tie (the paper's text)")


@register("greedy", GreedySoupParams)
def greedy(ctx: SoupContext) -> Made:
    """Ingredients in order of validation accuracy, each kept if the soup's validation accuracy rises (`soup.greedy`).
    Its state is the kept soup, held apart from `into`, where the candidates are scored."""
    from soupline import soup

    state, kept, log = soup.greedy(ctx.states, ctx.val_scores, ctx.val_accuracy, ctx.settings.strict, into=ctx.into)
    return Made(state, kept, log, {}, max(r["val_accuracy"] for r in log if r["kept"]))


def merged(ctx: SoupContext, settings: dict) -> Made:
    """`soup.task_arithmetic` of every ingredient from their shared init with `settings`, which soup.json records."""
    from soupline import soup

    return ctx.all_kept(soup.task_arithmetic(ctx.states, ctx.base(), into=ctx.into, **settings),
                        task_arithmetic=settings)


def scale_overflows(name: str, scale: float, also: str = "") -> str:
    """Why a task-arithmetic soup's logits overflow float32, and the settings to lower (`soup.<name>.scale`)."""
    return (f"base + soup.{name}.scale x the merged task vector overflows float32; lower soup.{name}.scale "
            f"(now {scale:g}){also}")


class TiesParams(ParamsSection):
    top_k: float = Field(20.0, gt=0, le=100, description="% of each task vector kept, by magnitude")
    scale: float = Field(1.0, gt=0, description="lambda: theta = base + lambda * merged task vector")


def ties_preset(soup: Any) -> dict:
    """`soup.task_arithmetic`'s settings for TIES (`soup` a SoupParams): each task vector trimmed to its top_k %,
    a sign elected per entry, the entries that agree with it averaged."""
    return {"top_k": soup.ties.top_k, "elect_sign": True, "scale": soup.ties.scale}


@register("ties", TiesParams, overflow=lambda cfg: scale_overflows("ties", cfg.scale))
def ties(ctx: SoupContext) -> Made:
    """TIES-merging (Yadav et al. 2023) of the task vectors (`ties_preset`)."""
    return merged(ctx, ties_preset(ctx.soup))


class DareParams(ParamsSection):
    drop: float = Field(0.5, ge=0, lt=1, description="probability p of dropping each delta entry")
    merge: Literal["linear", "ties"] = Field("linear", description="how the sparsified deltas are combined")
    scale: float = Field(1.0, gt=0, description="lambda: theta = base + lambda * merged task vector")
    seed: Seed = Field(0, description="seed of the drop masks")


def dare_preset(soup: Any) -> dict:
    """`soup.task_arithmetic`'s settings for DARE (`soup` a SoupParams): entries dropped with probability `drop`
    (the kept ones x 1/(1-drop)), then merged linearly or, with `dare.merge: ties`, as TIES does (its top_k)."""
    ties = soup.dare.merge == "ties"
    return {"top_k": soup.ties.top_k if ties else None, "elect_sign": ties, "drop": soup.dare.drop,
            "scale": soup.dare.scale, "seed": soup.dare.seed}


def dare_reads(soup: Any) -> dict[str, dict]:
    """What DARE reads of another sub-section: with `dare.merge: ties`, `ties.top_k` (`dare_preset`)."""
    return {"ties": {"top_k": soup.ties.top_k}} if soup.dare.merge == "ties" else {}


def dare_overflows(cfg: DareParams) -> str:
    """DARE's overflow: its scale, and its drop (the kept deltas are x 1/(1-drop))."""
    return scale_overflows("dare", cfg.scale, f" or soup.dare.drop (now {cfg.drop:g}: kept deltas x "
                                              f"{1 / (1 - cfg.drop):g})")


@register("dare", DareParams, reads=dare_reads, overflow=dare_overflows)
def dare(ctx: SoupContext) -> Made:
    """DARE (Yu et al. 2024) of the task vectors (`dare_preset`)."""
    return merged(ctx, dare_preset(ctx.soup))


class LearnedSoupParams(ParamsSection):
    epochs: int = Field(5, ge=1, description="passes over the validation split fitting the coefficients")
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the mixing logits")
    per_tensor: bool = Field(False, description="one coefficient per ingredient and tensor (learned soup "
                             "by layer); false: one per ingredient")
    seed: Seed = Field(0, description="seed of the validation batch order")
    batch_size: int = Field(64, ge=1, description="validation texts per Adam step (not evaluate.batch_size, an "
                            "inference batch that changes no result)")


@register("learned", LearnedSoupParams)
def learned(ctx: SoupContext) -> Made:
    """Mixing coefficients fit on validation by Adam (`soupline.learned_soup`); soup.json records them."""
    from soupline.learned_soup import learned as fit

    cfg = ctx.settings
    _, log = fit(ctx.states, ctx.model, lambda epoch: ctx.val_batches(cfg.seed + epoch, cfg.batch_size), cfg.epochs,
                 cfg.lr, cfg.per_tensor, into=ctx.into)
    return ctx.all_kept(ctx.into, **log)

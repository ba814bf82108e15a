"""Finished runs kept as lines of a runs.jsonl file (``scripts/tables.py records``): what the
tables read of a run directory - its label, metrics and resolved config - so that a study
outlives the machine it ran on. The tables are rebuilt from the records, and a run recorded
there is not run again: ``records=<runs.jsonl>`` (:func:`rsnet.pipeline.recorded_run`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from rsnet.errors import RsnetError


class Record(NamedTuple):
    """One finished run: its label (:func:`run_label`), metrics.json and config.yaml."""
    label: str
    metrics: dict
    config: dict


def run_label(name: str, run_dir: Path) -> str:
    """A run's label: experiment name / run directory name (the overrides of a sweep's job),
    the same on every machine and in every clone."""
    return f"{name}/{run_dir.name}"


def read_records(path: Path) -> list[Record]:
    """The :class:`Record` lines of a runs.jsonl file; a line that is not a record is an error
    naming the file and line (a table must not silently lose runs)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RsnetError(f"cannot read the run records {path} ({e.strerror})") from e
    records = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                records.append(Record(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise RsnetError(f"{path}:{i} is not a run record (label, metrics, config): {e}") from e
    return records


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

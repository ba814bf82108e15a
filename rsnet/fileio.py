"""Small helpers: atomic writes (a killed run never leaves a half-written artifact) and
checked checkpoint loading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rsnet.errors import RsnetError


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint_file(path: Path, what: str = "checkpoint") -> Any:
    """torch.load a file of rsnet's or a trusted checkpoint; a corrupt file is a clear error."""
    if not Path(path).is_file():
        raise RsnetError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise RsnetError(f"{what} {path} is corrupt or not a torch checkpoint ({type(e).__name__}: "
                         f"{str(e)[:120]}); delete or replace it") from e


def probe_writable(path: Path) -> None:
    """Create ``path`` if needed and write and remove a probe file in it; raises OSError."""
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()

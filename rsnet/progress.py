"""Progress bars for long loops (tqdm), switched off for a whole run with ``progress=false``."""

from __future__ import annotations

from tqdm import tqdm

_enabled = True


def set_enabled(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar that respects the run's ``progress`` setting."""
    return tqdm(iterable, disable=not _enabled, mininterval=1.0, **kwargs)

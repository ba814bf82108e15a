"""Saving a pruned model as plain tensors + widths, and rebuilding it in a fresh process.

No module is pickled (torch-pruning.md section 5: pickled classes break on reload): the
file holds ``{"state_dict", "widths", "meta"}`` and loads with ``weights_only=True``. To
load, the baseline architecture is rebuilt, pruned to the saved widths (structure only:
which channels are removed does not matter, every weight and channel map is then
overwritten) and the state dict is loaded strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.compress.criteria import Magnitude
from rsnet.compress.structured import EXAMPLE_SHAPE_ATTR, current_widths, prune_to_widths
from rsnet.fileio import atomic_torch_save

__all__ = ["save_pruned", "load_pruned", "pruned_meta"]


def _plain(obj: Any, where: str) -> None:
    """RsnetError unless ``obj`` is JSON-like (what ``torch.load(weights_only=True)`` reads)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise RsnetError(f"{where}: key {k!r} must be a str or int")
            _plain(v, f"{where}[{k!r}]")
        return
    raise RsnetError(f"{where} is a {type(obj).__name__}; meta may hold only numbers, "
                     f"strings, lists and dicts")


def save_pruned(path: str | Path, model: nn.Module, widths: Mapping[str, int],
                meta: Mapping[str, Any] | None = None) -> None:
    """Write ``{"state_dict", "widths", "meta"}`` to ``path`` (atomically, torch.save).

    ``widths`` (the plan the model was pruned to) must agree with the model; the file
    stores the model's full ``{layer: width}`` map so that the structure is complete.
    ``meta`` (JSON-like) is stored as given, plus ``input_shape`` (the example-input
    shape :func:`prune_to_widths` used) unless it already has one.
    """
    have = current_widths(model)
    wrong = {n: (w, have.get(n)) for n, w in widths.items() if have.get(n) != w}
    if wrong:
        raise RsnetError(f"save_pruned: the widths do not describe this model "
                         f"(given, actual): {dict(list(wrong.items())[:5])}")
    meta = dict(meta or {})
    _plain(meta, "meta")
    if "input_shape" not in meta:
        shape = getattr(model, EXAMPLE_SHAPE_ATTR, None)
        if shape is not None:
            meta["input_shape"] = list(shape)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"state_dict": state, "widths": have, "meta": meta}, Path(path))


def pruned_meta(path: str | Path) -> dict:
    """The ``meta`` that :func:`save_pruned` stored in ``path``."""
    return _read(Path(path))["meta"]


def _read(path: Path) -> dict:
    if not path.is_file():
        raise RsnetError(f"pruned model {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt files raise many types
        raise RsnetError(f"{path} is not a pruned-model file ({type(e).__name__}: "
                         f"{str(e)[:120]})") from e
    if not isinstance(obj, dict) or not {"state_dict", "widths", "meta"} <= set(obj):
        raise RsnetError(f"{path} is not a pruned-model file (no state_dict/widths/meta)")
    return obj


def load_pruned(path: str | Path, baseline_builder: Callable[[], nn.Module],
                example_input: torch.Tensor | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`.

    Args:
        path: the file.
        baseline_builder: zero-argument callable returning the *unpruned* architecture
            with the right number of classes (e.g. ``lambda: resnet_cifar(56, 10)``).
        example_input: input batch for tracing; default zeros of the saved
            ``meta["input_shape"]``.

    Returns the model (on the CPU, in the mode the builder left it) with the saved weights.
    """
    obj = _read(Path(path))
    if example_input is None:
        shape = obj["meta"].get("input_shape")
        if not shape:
            raise RsnetError(f"{path} records no input_shape; pass example_input")
        example_input = torch.zeros(*shape)
    model = baseline_builder()
    # Structure only: the cheapest criterion; the weights are overwritten just below.
    prune_to_widths(model, obj["widths"], example_input, Magnitude())
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as e:
        raise RsnetError(f"{path} does not fit the rebuilt model (is baseline_builder the "
                         f"architecture it was pruned from?): {str(e).splitlines()[0]}") from e
    return model

"""Every setting checked before any stage runs: required keys, types, ranges, choices and the
rules between settings, each failure one message naming the setting and what it accepts.

The structured-config schema (rsnet/config.py) already rejects a wrong type or an unknown key
of rsnet's own blocks when the config is composed; the blocks given by ``_target_``
(optimizer, scheduler, loss, sources) and the values' ranges are checked here.
"""

from __future__ import annotations

import math
from numbers import Real

from omegaconf import DictConfig, OmegaConf

from rsnet.data.sources import INTERPOLATIONS
from rsnet.plan.budget import RULES, UNITS
from rsnet.errors import RsnetError
from rsnet.openset import SCORES

# (setting, lowest allowed value, highest or None, whether it must be an integer); a lowest
# value given as POSITIVE means "greater than 0"
POSITIVE = object()
RANGES = [
    ("train.epochs", 0, None, True), ("train.batch_size", 1, None, True),
    ("train.eval_batch_size", 1, None, True), ("train.latency_runs", 0, None, True),
    ("train.aux_weight", 0, None, False), ("train.distill.temperature", POSITIVE, None, False),
    ("train.distill.alpha", 0, 1, False), ("train.optimizer.lr", POSITIVE, None, False),
    ("train.optimizer.weight_decay", 0, None, False), ("train.optimizer.momentum", 0, 1, False),
    ("dataset.misc_multiplier", 0, None, False), ("dataset.val_fraction", 0, 0.99, False),
    ("dataset.unseen_fraction", 0, 0.99, False), ("dataset.image_size", 8, 4096, True),
    ("dataset.resize_size", 8, 4096, True),
    ("model.input_size", 8, 4096, True), ("scaling.budget.lam", 0, 1, False),
    ("scaling.widths.min_width", 1, None, True), ("scaling.widths.round_to", 1, None, True),
    ("compression.steps", 1, None, True), ("compression.step_epochs", 0, None, True),
    ("compression.calib_images", 1, None, True), ("export.verify_images", 1, None, True),
    ("export.calib_images", 1, None, True), ("export.eval_batch_size", 1, None, True),
    ("export.atol", 0, None, False), ("export.min_agreement", 0, 1, False),
    ("export.latency.runs", 1, None, True), ("export.latency.warmup", 0, None, True),
    ("export.latency.threads", 1, None, True), ("openset.tpr", POSITIVE, 1, False),
]
CHOICES = [("scaling.budget.rule", RULES), ("scaling.budget.unit", UNITS),
           ("openset.score", SCORES),
           ("dataset.misc_test", ("sampled", "all")), ("dataset.interpolation", INTERPOLATIONS)]
# a required value the user must give, and an example of it
REQUIRED_HINTS = {"dataset.source.path": "dataset.source.path=/path/to/images",
                  "scaling.policy.path": "scaling.policy.path=/path/to/plan.json",
                  "scaling.policy.factors": "scaling.policy.factors=[1.0,0.5,...]"}


def _missing(cfg: DictConfig) -> None:
    """Mandatory values (``???``) left unset: one message naming them all."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hints = [REQUIRED_HINTS.get(k, f"{k}=...") for k in missing]
        raise RsnetError(f"required setting{'s' * (len(missing) > 1)} not given: "
                         f"{', '.join(missing)}; add e.g. {' '.join(hints)}")


def _check_range(name: str, value, low, high: float | None, integer: bool) -> None:
    if value is None:  # optional settings (image_size, round_to, ...) may stay unset
        return
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    kind = "an integer" if integer else "a number"
    exclusive = low is POSITIVE
    low = 0 if exclusive else low
    lowest = "> 0" if exclusive else f">= {low:g}"
    bounds = lowest if high is None else f"{lowest} and <= {high:g}"
    if not ok or value < low or (exclusive and value == 0) or (high is not None and value > high):
        raise RsnetError(f"{name}={value!r} is invalid: use {kind} {bounds}")


def _check_width_rule(cfg: DictConfig) -> None:
    """scaling.widths.keep_narrow changes the rs / uniform rounding to a multiple: without a
    multiple, or with a search that steps by whole multiples, it would be ignored."""
    widths = cfg.scaling.widths
    if not widths.get("keep_narrow"):
        return
    if widths.round_to is None:
        raise RsnetError("scaling.widths.keep_narrow=true needs a multiple to round to: set "
                         "target=x86_avx512 (or x86_avx2) or scaling.widths.round_to")
    if cfg.compression.name in ("netadapt", "morphnet"):
        raise RsnetError(f"scaling.widths.keep_narrow=true applies to the rs / uniform plans; "
                         f"compression={cfg.compression.name} steps widths by whole multiples of "
                         f"scaling.widths.round_to: drop keep_narrow")


def validate(cfg: DictConfig) -> None:
    """Raise :class:`RsnetError` for the first setting that cannot work."""
    _missing(cfg)
    for name, low, high, integer in RANGES:
        value = OmegaConf.select(cfg, name, default=None)
        _check_range(name, value, low, high, integer)
    for name, allowed in CHOICES:
        value = OmegaConf.select(cfg, name, default=None)
        if value is not None and value not in allowed:
            raise RsnetError(f"{name}={value!r}: use one of {', '.join(map(str, allowed))}")
    budget = cfg.scaling.budget
    if cfg.scaling.policy is not None and budget.rule in ("ratio", "absolute"):
        if budget.value is None:
            raise RsnetError(f"scaling.budget.rule={budget.rule} needs scaling.budget.value")
        high = 1 if budget.rule == "ratio" else None
        _check_range("scaling.budget.value", budget.value, POSITIVE, high, False)
    _check_width_rule(cfg)
    ds = cfg.dataset
    if (ds.resize_size is not None or ds.interpolation is not None) and ds.image_size is None:
        raise RsnetError("dataset.resize_size and dataset.interpolation resize to "
                         "dataset.image_size: set it too (the side of the centre crop)")
    if ds.resize_size is not None and ds.resize_size < ds.image_size:
        raise RsnetError(f"dataset.resize_size={ds.resize_size} is smaller than the crop "
                         f"dataset.image_size={ds.image_size}: use at least {ds.image_size}")
    for i, b in enumerate(cfg.export.latency.batch_sizes or []):
        _check_range(f"export.latency.batch_sizes[{i}]", b, 1, None, True)

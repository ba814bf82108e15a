"""Iterative pruning: the widths after each of k steps from the baseline to the target."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from rsnet.errors import RsnetError
from rsnet.models.layers import check_width

__all__ = ["width_schedule"]


def width_schedule(base_widths: Mapping[str, int], target_widths: Mapping[str, int],
                   steps: int) -> list[dict[str, int]]:
    """Widths after steps 1..k, each layer moving linearly from its base to its target width.

    Step i (1-based) gives every layer ``target + round((base - target) * (k - i) / k)``
    (round half up, exact rational arithmetic), so

    - the last step equals ``target_widths`` exactly, and no step goes below the target;
    - widths never grow from one step to the next;
    - layers with equal base and equal target widths (coupled layers: a residual stream, a
      depthwise conv and its producer) get equal widths at every step, so each step is a
      valid :func:`rsnet.compress.prune_to_widths` target.

    Layers only in ``base_widths`` keep their width; a layer only in ``target_widths`` is
    an error. Usage: ``for w in width_schedule(base, target, k): prune_to_widths(model, w,
    x, ...); fine_tune(model)``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RsnetError(f"compression.steps must be an integer >= 1, got {steps!r}")
    extra = sorted(set(target_widths) - set(base_widths))
    if extra:
        raise RsnetError(f"target widths name layers the baseline does not have: {extra[:5]}")
    base = {n: check_width(w, f"base width of {n}") for n, w in base_widths.items()}
    target = dict(base)
    for name, w in target_widths.items():
        target[name] = check_width(w, f"target width of {name}")
        if target[name] > base[name]:
            raise RsnetError(f"target width {target[name]} of {name} exceeds its base width "
                             f"{base[name]}: pruning can only remove channels")
    schedule = []
    for i in range(1, steps + 1):
        remaining = Fraction(steps - i, steps)
        schedule.append({n: target[n] + int(Fraction(base[n] - target[n]) * remaining
                                            + Fraction(1, 2))
                         for n in base})
    return schedule

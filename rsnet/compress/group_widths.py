"""Width-group arithmetic shared by the search-style methods (NetAdapt, MorphNet).

The widths they change are those of :mod:`rsnet.graph`'s coupled groups (a residual stream,
an inner conv, a depthwise conv with its producer, an inception branch): one width per
group id, turned into per-layer widths with ``ModelGraph.layer_widths`` for
:func:`rsnet.compress.prune_to_widths`. A group's width moves in steps of its ``multiple_of``
(grouped convs, channel shuffles) and of ``round_to`` when set, never below ``min_width``;
option-A shortcuts add the constraints ``small <= big`` (a zero-pad cannot shrink), which
:func:`repair` restores by widening the padded side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph

__all__ = ["width_step", "floor_width", "round_up", "repair", "floor_widths"]


def width_step(graph: ModelGraph, gid: int, round_to: int | None = None) -> int:
    """The smallest change of group ``gid``'s width: lcm(multiple_of, round_to)."""
    return math.lcm(graph.groups[gid].multiple_of, int(round_to or 1))


def round_up(width: int, step: int) -> int:
    """``width`` rounded up to a multiple of ``step`` (at least ``step``)."""
    return max(step, -(-int(width) // step) * step)


def floor_width(graph: ModelGraph, gid: int, min_width: int = 1, round_to: int | None = None) -> int:
    """The narrowest width group ``gid`` may have: a multiple of its step, >= min_width, <= base."""
    base = graph.groups[gid].base_width
    return min(base, round_up(max(1, int(min_width)), width_step(graph, gid, round_to)))


def repair(graph: ModelGraph, widths: Mapping[int, int], round_to: int | None = None
           ) -> dict[int, int]:
    """``widths`` with every pad constraint ``small <= big`` restored by widening ``big``.

    Only constraints whose ``big`` side is one group's width (option-A shortcuts: the
    stream after the shortcut) can be repaired; the widened width is rounded up to the
    group's step and capped at its baseline width. RsnetError if that is not enough.
    """
    out = {int(g): int(w) for g, w in widths.items()}
    for _ in range(len(graph.constraints) + 1):  # each pass fixes the widths one level deeper
        changed = False
        w = graph.width_vector(out)
        for c in graph.constraints:
            small, big = c.small.value(w), c.big.value(w)
            if small <= big:
                continue
            if c.big.const or len(c.big.coefs) != 1 or next(iter(c.big.coefs.values())) != 1:
                raise RsnetError(f"{c.where}: the widths pad {small} channels to {big}; "
                                 f"rsnet cannot widen that side automatically")
            (gid,) = c.big.coefs
            new = min(graph.groups[gid].base_width, round_up(math.ceil(small),
                                                              width_step(graph, gid, round_to)))
            if new < small:
                raise RsnetError(f"{c.where}: the widths pad {small} channels to at most {new}")
            out[gid] = new
            w = graph.width_vector(out)
            changed = True
        if not changed:
            break
    problems = graph.violations(out)
    if problems:
        raise RsnetError(f"the widths cannot be built: {'; '.join(problems[:3])}")
    return out


def floor_widths(graph: ModelGraph, min_width: int = 1, round_to: int | None = None
                 ) -> dict[int, int]:
    """Every group at its floor width, with the pad constraints repaired: the narrowest model."""
    return repair(graph, {g.id: floor_width(graph, g.id, min_width, round_to) for g in graph.groups},
                  round_to)

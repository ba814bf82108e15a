"""Segment algebra: widths as union-find tokens, channels as lists of token segments.

Every conv / linear output starts a *token*, a union-find element standing for one width
(its baseline channel count, whether it is fixed, what it must be a multiple of). A
tensor's dim-1 channels are described by

- :class:`Chan`: an ordered list of segments ``(token, multiplier)`` (that many times the
  token's width) or ``(None, n)`` (n channels of fixed width). A concatenation lists its
  inputs' segments; flattening ``(C, H, W)`` multiplies each multiplier by ``H * W``.
- :class:`Split`: dims 1 and 2 hold a channel dim cut into ``groups`` equal pieces (the
  ``view`` of a channel shuffle), in group-major or channel-major order.

:class:`Coupling` makes segment lists equal (*unify*: couple tokens) or cuts one into
equal parts; where that is impossible it *fixes* the tokens involved, so the analysis may
lose freedom but never produces a wrong width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

__all__ = ["Seg", "Segs", "simplify", "DEFAULT_REASON", "Tokens", "Chan", "Split", "Desc",
           "Coupling"]

Seg = tuple[Union[int, None], Union[int, Fraction]]
Segs = tuple[Seg, ...]


def simplify(x: int | Fraction) -> int | Fraction:
    """Fractions with denominator 1 become ints (cheaper arithmetic, readable output)."""
    return int(x) if Fraction(x).denominator == 1 else Fraction(x)


#: Why a width is fixed when the caller gives no reason.
DEFAULT_REASON = "coupled to a width the analysis cannot change"


class Tokens:
    """Union-find over widths. A root knows its baseline width, whether it is fixed and why
    (``reason``: the first cause recorded, a readable sentence naming the module)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.base: list[int] = []
        self.fixed: list[bool] = []
        self.reason: list[str | None] = []
        self.multiple: list[int] = []
        self.has_layer: list[bool] = []  # False for tokens that stand for a pad output only
        self.origin: list[str] = []

    def new(self, base: int, origin: str, fixed: bool = False, layer: bool = True,
            reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.base.append(int(base))
        self.fixed.append(fixed)
        self.reason.append((reason or DEFAULT_REASON) if fixed else None)
        self.multiple.append(1)
        self.has_layer.append(layer)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, t: int) -> int:
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.base[ra] != self.base[rb]:  # callers check compatibility first
            raise AssertionError(f"coupling tokens of widths {self.base[ra]} and {self.base[rb]}")
        self.parent[rb] = ra
        if not self.fixed[ra] and self.fixed[rb]:
            self.reason[ra] = self.reason[rb]
        self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
        self.multiple[ra] = math.lcm(self.multiple[ra], self.multiple[rb])
        self.has_layer[ra] = self.has_layer[ra] or self.has_layer[rb]

    def fix(self, t: int, reason: str | None = None) -> None:
        r = self.find(t)
        if not self.fixed[r]:
            self.fixed[r] = True
            self.reason[r] = reason or DEFAULT_REASON

    def need_multiple(self, t: int, k: int) -> None:
        """The width of ``t`` must be a multiple of ``k`` (fixed if baseline is not)."""
        r = self.find(t)
        if self.base[r] % k:
            self.fix(r, f"its width {self.base[r]} must be a multiple of {k} (a grouped conv or "
                        f"an equal split) and is not")
        else:
            self.multiple[r] = math.lcm(self.multiple[r], k)


@dataclass(frozen=True)
class Chan:
    """Channels of dim 1 as segments; ``spatial`` > 1 after flattening H*W positions into it."""

    segs: Segs
    spatial: int = 1


@dataclass(frozen=True)
class Split:
    """dims 1, 2 hold a channel dim cut in ``groups`` equal pieces, each ``piece``.

    channel_major False: shape (B, groups, C/groups, ...); True: (B, C/groups, groups, ...).
    """

    piece: Segs
    groups: int
    channel_major: bool


Desc = Union[Chan, Split, tuple, None]


class Coupling:
    """Operations on segment lists over one :class:`Tokens` table."""

    def __init__(self) -> None:
        self.tokens = Tokens()

    def norm(self, segs: Segs) -> Segs:
        """Segments with current roots, adjacent equal roots (or constants) merged."""
        out: list[list] = []
        for t, m in segs:
            if m == 0:
                continue
            r = None if t is None else self.tokens.find(t)
            if out and out[-1][0] == r:
                out[-1][1] += m
            else:
                out.append([r, m])
        return tuple((r, simplify(m)) for r, m in out)

    def seg_width(self, seg: Seg) -> int | Fraction:
        t, m = seg
        return m if t is None else m * self.tokens.base[self.tokens.find(t)]

    def width(self, segs: Segs) -> int:
        return int(sum(self.seg_width(s) for s in segs))

    def fix_segs(self, segs: Segs, reason: str | None = None) -> None:
        for t, _ in segs:
            if t is not None:
                self.tokens.fix(t, reason)

    def fix_desc(self, d: Desc, reason: str | None = None) -> None:
        if isinstance(d, Chan):
            self.fix_segs(d.segs, reason)
        elif isinstance(d, Split):
            self.fix_segs(d.piece, reason)
        elif isinstance(d, tuple):
            for x in d:
                self.fix_desc(x, reason)

    def _compatible(self, a: Segs, b: Segs) -> bool:
        a, b = self.norm(a), self.norm(b)
        if len(a) != len(b):
            return False
        for (ta, ma), (tb, mb) in zip(a, b):
            if (ta is None) != (tb is None) or ma != mb:
                return False
            if ta is not None and self.tokens.base[ta] != self.tokens.base[tb]:
                return False
        return True

    def unify(self, seg_lists: list[Segs], reason: str | None = None) -> bool:
        """Make the segment lists equal by coupling tokens; False (all fixed, for ``reason``)
        if impossible."""
        first = self.norm(seg_lists[0])
        if all(self._compatible(first, s) for s in seg_lists[1:]):
            for s in seg_lists[1:]:
                for (ta, _), (tb, _) in zip(first, self.norm(s)):
                    if ta is not None:
                        self.tokens.union(ta, tb)
            return True
        for s in seg_lists:
            self.fix_segs(s, reason)
        return False

    def split_equal(self, segs: Segs, n: int, reason: str | None = None) -> list[Segs] | None:
        """Cut ``segs`` into ``n`` equal parts that stay equal at any widths, or None.

        Corresponding segments of the parts are coupled (a chunk boundary inside one
        token's channels makes that token a multiple of the part count); on failure every
        token is fixed (for ``reason``).
        """
        segs = self.norm(segs)
        total = self.width(segs)
        if n < 1 or total % n:
            self.fix_segs(segs, reason)
            return None
        size = total // n
        parts: list[list[Seg]] = [[]]
        room = size
        for t, m in segs:
            left = self.seg_width((t, m))
            while left > 0:
                take = min(left, room)
                base = 1 if t is None else self.tokens.base[t]
                parts[-1].append((t, simplify(Fraction(take) / base) if t is not None else take))
                left -= take
                room -= take
                if room == 0 and len(parts) < n:
                    parts.append([])
                    room = size
        pieces = [tuple(p) for p in parts]
        if not self.unify(pieces, reason):
            return None
        for t, m in pieces[0]:
            if t is not None and Fraction(m).denominator > 1:
                self.tokens.need_multiple(t, Fraction(m).denominator)
        return [self.norm(p) for p in pieces]

"""The cost budget of the scaled network (method.md section 3).

Rules (``scaling.budget.rule``), with Phi the baseline's cost (its C-way classifier included)
in ``scaling.budget.unit`` (params, macs, or latency: milliseconds measured on a runtime, see
rsnet.plan.latency) and N the number of outputs (misc included):

- ``thesis``:     Phi * (lambda + N / C)
- ``thesis_alt``: Phi * (lambda + (1 - lambda) * N / C)
- ``ratio``:      Phi * value
- ``absolute``:   value
"""

from __future__ import annotations

from dataclasses import dataclass

from rsnet.errors import RsnetError

RULES = ("thesis", "thesis_alt", "ratio", "absolute")
UNITS = ("params", "macs", "latency")


@dataclass(frozen=True)
class Budget:
    rule: str
    unit: str
    value: float  # the target cost, in ``unit``
    baseline: float  # Phi, in ``unit``
    num_outputs: int  # N
    num_base_classes: int  # C
    lam: float | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def make_budget(rule: str, unit: str, baseline_cost: float, num_outputs: int, num_base_classes: int,
                lam: float = 0.045, value: float | None = None) -> Budget:
    if rule not in RULES:
        raise RsnetError(f"scaling.budget.rule={rule!r}: use one of {', '.join(RULES)}")
    if unit not in UNITS:
        raise RsnetError(f"scaling.budget.unit={unit!r}: use params, macs or latency")
    if rule in ("ratio", "absolute") and value is None:
        raise RsnetError(f"scaling.budget.rule={rule} needs scaling.budget.value")
    if num_outputs > num_base_classes:
        raise RsnetError(f"N = {num_outputs} outputs exceed C = {num_base_classes} classes: "
                         f"check dataset.num_classes and scaling.budget.num_base_classes")
    share = num_outputs / num_base_classes
    target = {"thesis": lambda: baseline_cost * (lam + share),
              "thesis_alt": lambda: baseline_cost * (lam + (1 - lam) * share),
              "ratio": lambda: baseline_cost * value,
              "absolute": lambda: float(value)}[rule]()
    return Budget(rule, unit, float(target), float(baseline_cost), num_outputs, num_base_classes,
                  lam if rule.startswith("thesis") else None)

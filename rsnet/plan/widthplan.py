"""WidthPlan: the widths of every micro-layer of a scaled network, and why (``plan.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rsnet.errors import RsnetError
from rsnet.metrics import count_macs, count_params
from rsnet.fileio import atomic_write_json


@dataclass
class MicroWidth:
    name: str  # module name of the conv / linear
    macro: int | None  # index of its macro-layer (None: fixed, e.g. the classifier)
    base_width: int
    width: int
    fixed: str | None = None  # why the width cannot change (rsnet.graph), None if it can


@dataclass
class MacroWidth:
    name: str
    factor: float
    base_out_width: int
    out_width: int


@dataclass
class WidthPlan:
    model: str
    input_size: int
    num_outputs: int
    policy: str
    micro: list[MicroWidth]
    macro: list[MacroWidth]
    predicted: dict  # {"params": int, "macs": int} of the model built at this plan
    baseline: dict  # {"params", "macs"} of the C-way baseline
    budget: dict | None = None  # rsnet.plan.budget.Budget.as_dict()
    units: list[list[int]] = field(default_factory=list)  # macro indices sharing one factor
    solve_time_s: float = 0.0  # graph analysis + solving, seconds
    # a latency budget's estimate and its check (rsnet.plan.latency.LatencyCost.summary)
    latency: dict | None = None

    def widths(self) -> dict[str, int]:
        """Module name -> width, for every micro-layer."""
        return {m.name: m.width for m in self.micro}

    def held(self) -> list[MicroWidth]:
        """Layers the plan leaves at full width because the analysis cannot change them
        (e.g. a Gunn2D layer's segments, a channel shuffle), the classifier left out."""
        return [m for m in self.micro if m.fixed and m.macro is not None]

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> WidthPlan:
        try:
            raw = json.loads(Path(path).read_text())
            raw["micro"] = [MicroWidth(**m) for m in raw["micro"]]
            raw["macro"] = [MacroWidth(**m) for m in raw["macro"]]
            return cls(**raw)
        except FileNotFoundError as e:
            raise RsnetError(f"plan file {path} not found: check scaling.policy.path") from e
        except (ValueError, KeyError, TypeError) as e:
            raise RsnetError(f"plan file {path} is not a WidthPlan ({e}); check scaling.policy.path") from e

    def table(self) -> str:
        """A readable markdown table: one row per macro-layer with its micro-layer widths."""
        rows = ["| # | macro-layer | factor | out width | micro-layer widths (execution order) |",
                "|---:|---|---:|---:|---|"]
        for i, m in enumerate(self.macro):
            widths = ", ".join(f"{u.name.removeprefix(m.name + '.').removesuffix('.conv')} {u.width}"
                               for u in self.micro if u.macro == i)
            rows.append(f"| {i} | {m.name} | {m.factor:g} | {m.base_out_width} -> {m.out_width} | {widths} |")
        p, b = self.predicted, self.baseline
        lines = [f"WidthPlan `{self.policy}` for {self.model} ({self.num_outputs} outputs, "
                 f"{self.input_size} px)", ""] + rows + [""]
        held = self.held()
        if held:
            lines.append(f"full width (cannot be scaled): {len(held)} layers, e.g. "
                         + "; ".join(f"{m.name} ({m.fixed})" for m in held[:3]))
        lines.append(f"params {p['params']:,} (baseline {b['params']:,}, x{p['params'] / b['params']:.3f}); "
                     f"MACs {p['macs']:,} (baseline {b['macs']:,}, x{p['macs'] / b['macs']:.3f})")
        if self.budget:
            bud = self.budget
            value = f"{bud['value']:.3f} ms" if bud["unit"] == "latency" else f"{bud['value']:,.0f}"
            lines.append(f"budget ({bud['rule']}, {bud['unit']}): {value}; "
                         f"used {p[bud['unit']] / bud['value']:.2%}")
        if self.latency:
            lat = self.latency
            lines.append(f"latency ({lat['runtime']}, batch 1, {lat['threads']} threads): predicted "
                         f"{lat['predicted_ms']:.3f} ms, measured {lat['measured_ms']:.3f} ms "
                         f"({lat['error']:+.1%}) after {len(lat['rounds'])} solve(s)")
        return "\n".join(lines)


def check_plan_cost(model, plan: WidthPlan, input_size: int, what: str, params: bool = True) -> None:
    """The model realising a plan must cost exactly what the plan predicted (``params=False``:
    MACs only, for models whose train-only layers the eval-mode plan leaves out)."""
    cost = {"m/params": count_params(model), "m/macs": count_macs(model, input_size)}
    if cost["m/macs"] != plan.predicted["macs"] or (params and cost["m/params"] != plan.predicted["params"]):
        raise RsnetError(f"the model {what} costs {cost} but the plan predicted {plan.predicted}: "
                         f"a bug in rsnet's graph analysis or pruning, please report it")

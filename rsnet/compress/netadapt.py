"""NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile
Applications", ECCV 2018): iterative, resource-driven filter pruning.

Algorithm 1 of the paper, on rsnet's width groups (:mod:`rsnet.compress.group_widths`):

1. ``Res_0``: the resource (latency in ms from :mod:`rsnet.deploy.latency_table`, or MACs / params
   from the graph's exact cost) of the starting model; the target ``T``.
2. Step i: the reduction ``dR_i = init_reduction * decay ** (i - 1)`` (denru01/netadapt's
   schedule), the step's target ``max(Res_{i-1} - dR_i, T)``.
3. Every width group proposes its *largest* width (fewest filters removed, in steps of its
   multiple) whose model meets the step's target; a group that cannot (its floor, or a pad
   constraint, comes first) makes no proposal. When no group can, the step's reduction is
   halved until one can (logged).
4. Each proposal prunes the current model to that width (``prune``: the importance
   criterion, L1 by default, via :func:`rsnet.compress.prune_to_widths`), is fine-tuned
   short-term (``finetune``) and scored on held-out data (``evaluate``); the highest score
   wins (ties: the smaller resource, then the lower group id) and is the next step's model.
5. Repeat until ``Res_i <= T``; long-term fine-tuning is the pipeline's training stage.

Every finished step leaves ``checkpoints/netadapt_step{i}.pt`` (weights + widths) and its
record in ``netadapt.json``; a rerun reloads the last finished step and goes on from there.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph
from rsnet.compress.checkpoint import load_pruned, save_pruned
from rsnet.compress.group_widths import floor_width, width_step
from rsnet.fileio import atomic_write_json

__all__ = ["Schedule", "Proposal", "propose", "NetAdaptLog", "netadapt"]

log = logging.getLogger(__name__)

Resource = Callable[[list[int]], float]  # width vector (one width per group id) -> cost


@dataclass(frozen=True)
class Schedule:
    """Targets in the resource's unit: final ``target``, first step's ``init_reduction``,
    its per-step ``decay``, and ``max_steps`` (RsnetError when exceeded)."""

    target: float
    init_reduction: float
    decay: float
    max_steps: int

    def reduction(self, step: int) -> float:
        """``dR_step``, step counted from 1."""
        return self.init_reduction * self.decay ** (step - 1)


@dataclass
class Proposal:
    """Group ``group`` pruned from ``width_from`` to ``width_to`` costs ``resource``; its
    held-out ``score`` after short-term fine-tuning (None until evaluated)."""

    group: int
    width_from: int
    width_to: int
    resource: float
    score: float | None = None


def propose(graph: ModelGraph, widths: Mapping[int, int], resource: Resource, step_target: float,
            min_width: int = 1, round_to: int | None = None) -> list[Proposal]:
    """One proposal per group that can meet ``step_target``: its largest such width.

    Widths go down from the current one in steps of :func:`width_step` to the group's
    floor; a width that breaks a pad constraint ends the group's search (narrower ones
    break it too).
    """
    out = []
    for g in graph.groups:
        now = int(widths[g.id])
        step = width_step(graph, g.id, round_to)
        floor = floor_width(graph, g.id, min_width, round_to)
        w = now - step
        while w >= floor:
            trial = {**widths, g.id: w}
            if graph.violations(trial):
                break
            cost = resource(graph.width_vector(trial))
            if cost <= step_target:
                out.append(Proposal(g.id, now, w, cost))
                break
            w -= step
    return out


@dataclass
class NetAdaptLog:
    """``netadapt.json``: the settings, the start, and one record per finished step."""

    resource: str
    unit: str
    start: float
    target: float
    init_reduction: float
    decay: float
    steps: list[dict] = field(default_factory=list)
    done: bool = False
    extra: dict = field(default_factory=dict)  # measured latencies, table statistics

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> NetAdaptLog:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (ValueError, TypeError) as e:
            raise RsnetError(f"{path} is not a NetAdapt log ({e}); delete it (or pass "
                             f"overwrite=true) to start the search again") from e


def _choose(model: nn.Module, graph: ModelGraph, widths: dict[int, int], proposals: list[Proposal],
            step: int, prune: Callable, finetune: Callable, evaluate: Callable, unit: str
            ) -> tuple[Proposal, nn.Module]:
    """Prune, fine-tune short-term and score every proposal (``Proposal.score`` is set);
    returns the best (highest score, then smaller resource, then lower group id) and its model."""
    best, best_model = None, None
    for p in proposals:
        layer_widths = {k: int(v) for k, v in graph.layer_widths({**widths, p.group: p.width_to}).items()}
        candidate = prune(copy.deepcopy(model), layer_widths, step)
        finetune(candidate, step, p.group)
        p.score = float(evaluate(candidate))
        log.info("NetAdapt step %d: group %d (%s) %d -> %d: %.4g %s, score %.4f", step, p.group,
                 graph.groups[p.group].members[0], p.width_from, p.width_to, p.resource, unit, p.score)
        if best is None or (p.score, -p.resource, -p.group) > (best.score, -best.resource, -best.group):
            best, best_model = p, candidate
    return best, best_model


def netadapt(model: nn.Module, graph: ModelGraph, widths: Mapping[int, int], resource: Resource,
             schedule: Schedule, prune: Callable[[nn.Module, dict[str, int], int], nn.Module],
             finetune: Callable[[nn.Module, int, int], None], evaluate: Callable[[nn.Module], float],
             record: NetAdaptLog, log_path: Path, ckpt_dir: Path,
             fresh: Callable[[], nn.Module], example,
             prepare: Callable[[nn.Module], nn.Module] = lambda m: m, min_width: int = 1,
             round_to: int | None = None, on_step: Callable[[], None] | None = None
             ) -> tuple[nn.Module, dict[int, int]]:
    """Run NetAdapt from ``model`` at group ``widths`` until ``resource <= schedule.target``.

    Args:
        model: the starting network (a trained baseline with its N-way head).
        graph: the rsnet graph of its architecture; ``widths``: its group widths.
        resource: width vector -> cost (ms, MACs or params).
        prune: ``(copy of model, layer widths, seed) -> pruned model`` (ready to train).
        finetune: ``(model, step, group)``: short-term fine-tuning, in place.
        evaluate: held-out score of a model (higher is better).
        record / log_path: the step log (``record.steps`` already finished are resumed:
            their checkpoints are reloaded with ``fresh`` and ``example``, then ``prepare``d).
        ckpt_dir: where ``netadapt_step{i}.pt`` go.
        on_step: called after each step is saved (e.g. to save a latency table).

    Returns the final model and its group widths. RsnetError when the target needs more
    than ``schedule.max_steps`` steps or no group can reduce the resource any further.
    """
    widths = {int(g): int(w) for g, w in widths.items()}
    current = record.start
    if record.steps:  # resume after the last finished step
        last = record.steps[-1]
        path = ckpt_dir / f"netadapt_step{last['step']}.pt"
        model = prepare(load_pruned(path, fresh, example))
        widths = {int(g): int(w) for g, w in last["widths"].items()}
        current = last["resource"]
        log.info("NetAdapt: resuming after step %d (%s %.4g %s)", last["step"], record.resource,
                 current, record.unit)
    step = len(record.steps)
    while current > schedule.target:
        step += 1
        if step > schedule.max_steps:
            raise RsnetError(f"NetAdapt did not reach the target {schedule.target:.4g} "
                             f"{record.unit} in compression.netadapt.max_steps={schedule.max_steps} "
                             f"steps ({current:.4g} {record.unit} now); raise max_steps or "
                             f"compression.netadapt.init_reduction")
        t0 = time.perf_counter()
        reduction = schedule.reduction(step)
        while True:
            step_target = max(current - reduction, schedule.target)
            proposals = propose(graph, widths, resource, step_target, min_width, round_to)
            if proposals:
                break
            if reduction < 1e-6 * record.start:
                raise RsnetError(f"NetAdapt: no width group can reduce the {record.resource} "
                                 f"below {current:.4g} {record.unit} (target {schedule.target:.4g}); "
                                 f"raise the target (compression.netadapt.target_ratio or "
                                 f"target_ms) or lower scaling.widths.min_width")
            reduction /= 2
            log.warning("NetAdapt step %d: no group can cut that much; reduction halved to %.4g %s",
                        step, reduction, record.unit)
        best, model = _choose(model, graph, widths, proposals, step, prune, finetune, evaluate,
                              record.unit)
        widths, current = {**widths, best.group: best.width_to}, best.resource
        save_pruned(ckpt_dir / f"netadapt_step{step}.pt", model, graph.layer_widths(widths),
                    {"step": step, "group": best.group})
        record.steps.append({
            "step": step, "group": best.group, "layers": graph.groups[best.group].members,
            "width_from": best.width_from, "width_to": best.width_to, "reduction": reduction,
            "step_target": step_target, "resource": best.resource, "score": best.score,
            "widths": {str(g): w for g, w in sorted(widths.items())},
            "proposals": [asdict(p) for p in proposals], "time_s": time.perf_counter() - t0})
        record.save(log_path)
        if on_step is not None:
            on_step()
        log.info("NetAdapt step %d: chose group %d (%d -> %d): %.4g %s (target %.4g), score %.4f",
                 step, best.group, best.width_from, best.width_to, current, record.unit,
                 schedule.target, best.score)
    return model, widths

"""Does rsnet carve a given CNN? Plan half its parameters with ``rs`` and prune to the plan.

:func:`carve_check` runs what ``scaling=rs compression=prune`` runs (analysis with
``prunable=True``, the rs plan for a 0.5 parameter ratio, ``prune_to_widths`` with the l1
criterion) on an untrained model and reports one of:

- ``carved``: the pruned model has exactly the planned widths and the planned parameters
  and MACs (MACs only for a model with aux heads, which the eval-mode plan leaves out);
- ``refused``: rsnet stopped with its own message (an RsnetError) before carving: the
  model does not trace or run at that size, or the constructs it is built from leave no
  plan within the budget (the message names them);
- ``failed``: anything else (a crash inside rsnet or torch-pruning, or a carve that misses
  its plan): a bug.

``python scripts/zoo.py carve`` sweeps every torchvision classification model (and the aux-head
variants of GoogLeNet and Inception-v3) and writes
``results/any_cnn.csv`` and ``docs/any_cnn.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rsnet.plan.budget import make_budget
from rsnet.errors import RsnetError
from rsnet.graph import ModelGraph, analyze
from rsnet.metrics import count_macs, count_params
from rsnet.models.torchvision_models import available_models, torchvision_model
from rsnet.plan import WidthPlan
from rsnet.compress import Magnitude, current_widths, prune_to_widths
from rsnet.compress.dependency import train_only_layers
from rsnet.plan.policies import ResourceScalable, Scaler, WidthRule

__all__ = ["CarveResult", "carve_check", "torchvision_case", "torchvision_cases"]

CLASSES = 10
RATIO = 0.5


@dataclass
class CarveResult:
    model: str
    input_px: int
    params: int | None = None
    status: str = "failed"
    stage: str = "build"  # where it stopped: build, analyze, plan, carve, done
    carved_params: int | None = None
    plan_s: float | None = None
    carve_s: float | None = None
    reason: str = ""

    def row(self) -> dict:
        return asdict(self)


# Extra cases: the aux heads torchvision_model leaves off by default (they run in training
# mode only, outside the eval-mode trace); Inception-v3's aux head needs its native 299 px.
AUX_CASES = {"googlenet+aux": ("googlenet", 64), "inception_v3+aux": ("inception_v3", 299)}


def torchvision_cases() -> list[str]:
    """Every torchvision classifier by name, plus :data:`AUX_CASES`."""
    return available_models() + list(AUX_CASES)


def torchvision_case(case: str) -> tuple[Callable[[], nn.Module], int]:
    """A builder (``CLASSES`` outputs) and a small input size the model runs at."""
    kwargs: dict = {}
    if case in AUX_CASES:
        name, size = AUX_CASES[case]
        kwargs["aux_logits"] = True
    elif case.startswith("vit_"):  # ViTs take their image size as an argument
        name, size = case, 56 if case == "vit_h_14" else 64
        kwargs["image_size"] = size
    else:
        name, size = case, {"inception_v3": 96, "maxvit_t": 224}.get(case, 64)
    return lambda: torchvision_model(name, num_classes=CLASSES, **kwargs), size


def plan_params_ratio(graph: ModelGraph, ratio: float = RATIO, classes: int = CLASSES) -> WidthPlan:
    """The rs plan (default settings) for ``ratio`` of the analysed model's parameters."""
    base = dict(zip(("params", "macs"), graph.cost()))
    budget = make_budget("ratio", "params", base["params"], classes, classes, value=ratio)
    return ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)


def carve_check(name: str, build: Callable[[], nn.Module], size: int) -> CarveResult:
    """Plan ``RATIO`` of the parameters of ``build()`` at ``size`` px and carve it (see module)."""
    res = CarveResult(name, size)
    try:
        model = build()
        res.params = count_params(model)
        res.stage = "analyze"
        t0 = time.perf_counter()
        graph = analyze(model, size, prunable=True)
        res.stage = "plan"
        plan = plan_params_ratio(graph)
        res.plan_s = time.perf_counter() - t0
        res.stage = "carve"
        t0 = time.perf_counter()
        x = torch.zeros(1, 3, size, size)
        prune_to_widths(model, plan.widths(), x, Magnitude())
        res.carve_s = time.perf_counter() - t0
        res.carved_params = count_params(model)
        got = (res.carved_params, count_macs(model, size))
        want = (plan.predicted["params"], plan.predicted["macs"])
        aux = set(train_only_layers(model, x))
        if aux:  # aux heads: outside the traced plan, MACs only (as the pipeline's check)
            got, want = got[1:], want[1:]
        widths = {k: w for k, w in current_widths(model).items() if k not in aux}
        if widths != plan.widths() or got != want:
            res.reason = f"carved (params, MACs) {got}, planned {want}"
            return res
        res.status, res.stage = "carved", "done"
    except RsnetError as err:
        res.status, res.reason = "refused", str(err)
    except Exception as err:  # noqa: BLE001 - the point is to record it as a bug
        res.reason = f"{type(err).__name__}: {err}"
    return res

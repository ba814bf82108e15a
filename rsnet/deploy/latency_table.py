"""A latency lookup table measured with ONNX Runtime (NetAdapt's "empirical measurements").

NetAdapt (Yang et al., ECCV 2018, section 3.3) estimates a network's latency as the sum of
per-layer latencies read from tables that were measured on the target platform, indexed by
the layer's input and output channel counts. Here the target platform is the deployment
runtime: ONNX Runtime on this CPU, batch 1, a fixed intra-op thread count.

Each entry is the fastest of a few timed ``session.run`` calls of a single-layer ONNX model
(built with ``onnx.helper``): the conv, with the bias a folded BatchNorm leaves and a Relu
(which ONNX Runtime fuses into it), at the layer's kernel, stride, padding, groups and input
resolution, or the Gemm of a linear layer. Entries are measured lazily, the first time a
(layer, in, out) triple is asked for, and kept (``to_json``; a new table can start from
those ``entries``, so a resumed run reads the same numbers).

Sums of single-layer runs count each ``session.run``'s fixed overhead once per layer and
miss what lies between the layers (residual adds, pooling). :class:`LatencyModel` therefore
anchors the table to one measured whole model: ``estimate(w) = measured(w0) + sum over
layers [table(layer, w) - table(layer, w0)]``, so the overheads cancel and only the layers'
differences are read from the table.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from rsnet.deploy import export_onnx, open_session
from rsnet.graph import Form, ModelGraph
from rsnet.metrics import session_latency

__all__ = ["LayerSpec", "layer_specs", "LatencyTable", "LatencyModel", "measure_model_ms"]

OPSET = 18


@dataclass(frozen=True)
class LayerSpec:
    """One conv / linear layer of the traced model, as the lookup table needs it.

    kind: "conv", "depthwise" or "linear"; in_hw: input height and width (1, 1 for a
    linear layer); groups: the conv's groups at baseline (1 for a plain conv);
    in_form / out_form: its in / out channels as functions of the group widths.
    """

    name: str
    kind: str
    in_hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    in_form: Form
    out_form: Form

    def channels(self, w: Sequence[int]) -> tuple[int, int]:
        """(in, out) channels at the width vector ``w`` (one entry per group)."""
        return int(round(float(self.in_form.value(w)))), int(round(float(self.out_form.value(w))))


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def layer_specs(model: nn.Module, graph: ModelGraph) -> list[LayerSpec]:
    """The specs of every micro-layer of ``graph`` (``model``: the architecture it traced).

    One eval-mode forward at the graph's input size records each layer's input resolution.
    String paddings ("same") are not supported (no model of the zoo uses them).
    """
    modules = dict(model.named_modules())
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for m in graph.micro:
        def hook(mod, inputs, _out, name=m.name):
            x = inputs[0]
            seen.setdefault(name, tuple(x.shape[-2:]) if x.dim() == 4 else (1, 1))
        hooks.append(modules[m.name].register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *graph.input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    specs = []
    for m in graph.micro:
        mod = modules[m.name]
        if isinstance(mod, nn.Conv2d):
            specs.append(LayerSpec(m.name, m.kind, seen.get(m.name, (1, 1)), _pair(mod.kernel_size),
                                   _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation),
                                   int(mod.groups), m.in_form, m.out_form))
        else:
            specs.append(LayerSpec(m.name, "linear", (1, 1), (1, 1), (1, 1), (0, 0), (1, 1), 1,
                                   m.in_form, m.out_form))
    return specs


def _single_layer(spec: LayerSpec, cin: int, cout: int) -> onnx.ModelProto:
    """A one-layer ONNX model of ``spec`` with ``cin`` inputs and ``cout`` outputs (random weights)."""
    rng = np.random.default_rng(0)
    if spec.kind == "linear":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin])
        weight = numpy_helper.from_array(rng.standard_normal((cout, cin), dtype=np.float32), "w")
        bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    else:
        groups = cin if spec.kind == "depthwise" else spec.groups
        if groups < 1 or cin % groups or cout % groups:
            groups = 1  # a grouped conv at widths its groups do not divide: priced as dense
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *spec.in_hw])
        shape = (cout, cin // groups, *spec.kernel)
        weight = numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), "w")
        bias = numpy_helper.from_array(np.zeros(cout, np.float32), "b")
        ph, pw = spec.padding
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=list(spec.kernel),
                                  strides=list(spec.stride), pads=[ph, pw, ph, pw],
                                  dilations=list(spec.dilation), group=groups),
                 helper.make_node("Relu", ["c"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, spec.name or "layer", [x], [y], [weight, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def min_ms(fn, runs: int, warmup: int) -> float:
    """The fastest of ``runs`` timed calls of ``fn()`` (after ``warmup`` untimed ones), in ms.

    Other processes only ever add time to a run, so on a shared machine the minimum of a
    few microsecond-scale runs is a far steadier per-layer figure than the median; the
    table only contributes differences between entries (see :class:`LatencyModel`).
    """
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


class LatencyTable:
    """Milliseconds of each (layer, in channels, out channels), measured on first use.

    threads: ONNX Runtime intra-op threads; runs / warmup: timed and untimed runs per entry
    (the fastest is kept, :func:`min_ms`); entries: a previous table's ``to_json()`` to
    start from.
    """

    def __init__(self, specs: Sequence[LayerSpec], threads: int, runs: int = 50, warmup: int = 5,
                 entries: Mapping[str, float] | None = None) -> None:
        self.specs = list(specs)
        self.threads, self.runs, self.warmup = int(threads), int(runs), int(warmup)
        self.entries: dict[str, float] = dict(entries or {})
        self.unsaved = 0  # entries measured since the caller last saved the table (it resets this)
        self._tmp = tempfile.TemporaryDirectory(prefix="rsnet_lut_")

    @staticmethod
    def key(spec: LayerSpec, cin: int, cout: int) -> str:
        return f"{spec.name}|{cin}|{cout}"

    def layer_ms(self, spec: LayerSpec, cin: int, cout: int) -> float:
        key = self.key(spec, cin, cout)
        if key not in self.entries:
            path = Path(self._tmp.name) / "layer.onnx"
            onnx.save_model(_single_layer(spec, cin, cout), str(path))
            session = open_session(path, self.threads)
            inp = session.get_inputs()[0]
            x = np.random.default_rng(0).standard_normal(
                [1, cin] if spec.kind == "linear" else [1, cin, *spec.in_hw], dtype=np.float32)
            feed = {inp.name: x}
            self.entries[key] = min_ms(lambda: session.run(None, feed), self.runs, self.warmup)
            self.unsaved += 1
        return self.entries[key]

    def total_ms(self, w: Sequence[int]) -> float:
        """Sum of the table's entries for every layer at the width vector ``w``."""
        return sum(self.layer_ms(s, *s.channels(w)) for s in self.specs)

    def to_json(self) -> dict:
        return {"threads": self.threads, "runs": self.runs, "entries": dict(sorted(self.entries.items()))}


class LatencyModel:
    """NetAdapt's latency estimate, anchored to one measured whole model.

    ``estimate(w) = anchor_ms + table.total_ms(w) - table.total_ms(w0)``; ``anchor_ms`` is
    the measured latency of the model at the width vector ``w0``.
    """

    def __init__(self, table: LatencyTable, anchor_ms: float, w0: Sequence[int]) -> None:
        self.table, self.anchor_ms, self.w0 = table, float(anchor_ms), list(w0)
        self._base = table.total_ms(self.w0)

    def __call__(self, w: Sequence[int]) -> float:
        return self.anchor_ms + self.table.total_ms(w) - self._base


def measure_model_ms(model: nn.Module, input_size: int, threads: int, runs: int = 100,
                     warmup: int = 10, sessions: int = 0) -> float:
    """Median ms of ONNX Runtime on ``model`` exported with :func:`rsnet.deploy.export_onnx`
    (fp32, batch 1, ``threads`` intra-op threads): the deployed model's latency. With
    ``sessions`` > 0: the fastest run (:func:`min_ms`, as the table's entries) over that many
    sessions, steadier where a session's threads may land on busy or shared cores."""
    with tempfile.TemporaryDirectory(prefix="rsnet_lat_") as tmp:
        path = export_onnx(copy.deepcopy(model), Path(tmp) / "model.onnx", input_size)
        if not sessions:
            return session_latency(open_session(path, threads), input_size, 1, runs, warmup)
        x = np.random.default_rng(0).standard_normal((1, 3, input_size, input_size), np.float32)
        best = math.inf
        for _ in range(sessions):
            session = open_session(path, threads)
            feed = {session.get_inputs()[0].name: x}
            best = min(best, min_ms(lambda: session.run(None, feed), runs, warmup))
        return best

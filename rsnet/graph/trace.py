"""Tracing a model with torch.fx and propagating shapes (and per-node MACs) through it."""

from __future__ import annotations

import types
from collections.abc import Iterable

import torch
from torch import nn
from torch.fx import GraphModule, Interpreter, Node, Tracer
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata
from torch.utils.flop_counter import FlopCounterMode

from rsnet.errors import RsnetError

__all__ = ["trace", "propagate"]

# Layers the analysis understands by type. Subclasses defined outside torch.nn stay leaves
# too: rsnet's ShiftBatchNorm2d calls F.batch_norm on its own buffers, and traced into it
# would hide its per-channel shift behind an opaque function call.
ALWAYS_LEAF = (
    nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm,
)


class _Tracer(Tracer):
    """torch.fx tracer whose leaves also include the user's ``leaf_modules``."""

    def __init__(self, leaf_names: frozenset[str], leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self.leaf_names = leaf_names
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names:
            return True
        if isinstance(m, ALWAYS_LEAF + self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _failing_module(model: nn.Module, err: BaseException) -> str | None:
    """Qualified name of the innermost module of ``model`` on the error's traceback."""
    names = {id(m): n for n, m in model.named_modules()}
    found = None
    tb: types.TracebackType | None = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = names[id(owner)]
        tb = tb.tb_next
    return found


def trace(model: nn.Module, leaf_names: Iterable[str] = (),
          leaf_types: tuple[type, ...] = ()) -> GraphModule:
    """fx-trace ``model`` (already in the wanted mode); RsnetError naming the failing module."""
    tracer = _Tracer(frozenset(leaf_names), tuple(leaf_types))
    try:
        graph = tracer.trace(model)
    except Exception as err:  # noqa: BLE001 - any trace failure is reported the same way
        where = _failing_module(model, err)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if where:  # a submodule: it can become an opaque leaf
            kind = type(model.get_submodule(where)).__name__
            raise RsnetError(
                f"torch.fx cannot trace {type(model).__name__}: module '{where}' ({kind}) "
                f"failed ({reason}). Pass leaf_modules=['{where}'] (scaling.leaf_modules) to "
                f"treat it as one opaque layer (a channel passthrough if it has no parameters "
                f"and keeps its input's channels, otherwise a fixed-width layer)") from err
        raise RsnetError(
            f"torch.fx cannot trace {type(model).__name__}: its own forward failed ({reason}); "
            f"leaf_modules cannot help here: the forward needs data-independent control flow"
        ) from err
    name = type(model).__name__
    return GraphModule(tracer.root, graph, name)


class _ShapeMacsProp(ShapeProp):
    """ShapeProp that also records each node's MACs (FlopCounterMode FLOPs / 2).

    run_node is overridden to keep ShapeProp's metadata but not its habit of printing a
    traceback before re-raising: the caller turns the error into an RsnetError.
    """

    def __init__(self, gm: GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(gm)
        self.counter = counter
        self.node_macs: dict[Node, int] = {}
        self.failed: Node | None = None

    def run_node(self, n: Node):
        before = self.counter.get_total_flops()
        try:
            result = Interpreter.run_node(self, n)
        except Exception:
            self.failed = n
            raise
        self.node_macs[n] = (self.counter.get_total_flops() - before) // 2
        found = False

        def extract(obj):
            nonlocal found
            if isinstance(obj, torch.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


def propagate(gm: GraphModule, example: torch.Tensor, size_setting: str) -> dict[Node, int]:
    """Run ``gm`` on ``example``: sets node.meta['tensor_meta']; returns MACs per node."""
    counter = FlopCounterMode(display=False)
    prop = _ShapeMacsProp(gm, counter)
    threads = torch.get_num_threads()
    try:
        # One image through a CNN gains nothing from threads, and on a loaded machine
        # intra-op threads make this pass 50x slower (measured on 2 busy cores).
        if example.device.type == "cpu":
            torch.set_num_threads(1)
        with torch.no_grad(), counter:
            prop.propagate(example)
    except Exception as err:  # noqa: BLE001
        where = prop.failed.target if prop.failed is not None else "?"
        raise RsnetError(f"the model does not run at {size_setting} (node {where}: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                         ) from err
    finally:
        torch.set_num_threads(threads)
    return prop.node_macs

"""Channel propagation: which coupled groups each tensor's channels come from.

:class:`ChannelPass` walks the shape-propagated fx graph in order and gives every tensor a
descriptor (:mod:`rsnet.graph.segments`). Operations that need equal widths (add, mul,
...) unify their operands' tokens; operations it cannot express fix the tokens involved.
Along the way it records the micro-layers and the cost terms (parameters, MACs) as
products of segment lists, resolved into polynomials of group widths at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from torch import nn
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from rsnet.graph.segments import Chan, Coupling, Desc, Segs, Split, simplify

__all__ = ["MicroRecord", "Term", "PadRecord", "ChannelPass"]


@dataclass
class MicroRecord:
    """A conv/linear call as the pass saw it; ``out_segs`` None means a fixed-width output."""

    name: str
    kind: str
    node: Node
    base_width: int
    in_width: int
    in_segs: Segs
    out_segs: Segs | None
    fixed_reason: str | None = None  # why the output width is fixed (out_segs None)


@dataclass
class Term:
    """A cost contribution ``coef * width(a) * width(b)`` (a missing factor is 1)."""

    node: Node | None
    measure: str  # "params" or "macs"
    coef: int | Fraction
    a: Segs | None = None
    b: Segs | None = None


@dataclass
class PadRecord:
    """An option-A style channel pad: ``inner`` channels padded up to ``outer``."""

    where: str
    inner: Segs
    outer: Segs


# Names (function __name__ or method name) of the operations handled by rule.
_ELEMENTWISE = {
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "truediv",
    "floordiv", "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_",
    "maximum", "minimum", "fmax", "fmin", "where", "pow", "lerp", "addcmul", "addcdiv",
    "masked_fill", "masked_fill_", "expand_as", "hypot", "atan2", "remainder", "mod",
}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
            "reshape_as"}
_PERMUTE = {"transpose", "permute", "swapaxes", "swapdims"}
_REDUCE = {"mean", "sum", "amax", "amin", "nansum", "nanmean"}
_CAT = {"cat", "concat", "concatenate"}
_SPLIT = {"chunk", "split"}
# Modules whose parameters are one value per channel of dim 1.
_CHANNELWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _arg(node: Node, index: int, key: str, default: Any = None) -> Any:
    """Argument ``index`` (positional, counting the tensor/self) or keyword ``key``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _where(node: Node) -> str:
    """The module whose forward ran ``node`` (a call_module node: that module)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    return path if isinstance(path, str) and path else "the model's forward"


def _at(node: Node) -> str:
    """``op`` in module, for the reasons of fixed widths."""
    if node.op == "call_module":
        return str(node.target)
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", node.name)
    return f"`{name}` in {_where(node)}"


def _swaps_channel_groups(node: Node) -> bool:
    """A transpose / permute that swaps dims 1 and 2 (the middle step of a channel shuffle)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name not in _PERMUTE:
        return False
    if name == "permute":
        dims = node.args[1:] if len(node.args) > 2 else _arg(node, 1, "dims")
        return isinstance(dims, (list, tuple)) and list(dims[:3]) == [0, 2, 1]
    a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
    return {a, b} == {1, 2}


#: Why the pruner-facing analysis (``prunable=True``) fixes a channel shuffle's widths.
SHUFFLE_REASON = ("channel shuffle: rsnet.compress (torch-pruning) cannot select channels through "
                  "it, so the widths it shuffles stay at full width when the plan is pruned")


class ChannelPass(Coupling):
    """Walks a shape-propagated GraphModule; see the module docstring.

    Results: ``tokens``, ``desc`` (node -> descriptor), ``micro`` (records in execution
    order), ``terms`` (cost), ``pads``, ``symbolic_params`` (ids of parameters whose count
    is a term), ``first_call`` (module name -> first call_module node).
    """

    def __init__(self, gm: GraphModule, node_macs: dict[Node, int], fixed: set[str],
                 classifier: str | None, prunable: bool = False) -> None:
        super().__init__()
        self.prunable = prunable  # also fix what the pruner cannot realise (channel shuffles)
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.node_macs = node_macs
        self.fixed_names = fixed
        self.classifier = classifier
        self.desc: dict[Node, Desc] = {}
        self.micro: list[MicroRecord] = []
        self.terms: list[Term] = []
        self.pads: list[PadRecord] = []
        self.symbolic_params: set[int] = set()
        self.symbolic_macs: set[Node] = set()
        self.first_call: dict[str, Node] = {}
        self._module_inputs: dict[str, Segs] = {}
        self._records: dict[str, MicroRecord] = {}

    # -- descriptors --------------------------------------------------------------------

    def const_desc(self, node: Node) -> Desc:
        """Fixed-width descriptor(s) from a node's shape metadata."""
        def one(meta: Any) -> Desc:
            if isinstance(meta, TensorMetadata):
                return Chan(((None, int(meta.shape[1])),)) if len(meta.shape) >= 2 else None
            if isinstance(meta, (tuple, list)):
                return tuple(one(m) for m in meta)
            return None
        return one(node.meta.get("tensor_meta"))

    def tensor_inputs(self, node: Node) -> list[Node]:
        """Input nodes that produced tensors (or tuples of them), in argument order."""
        found: list[Node] = []
        map_aggregate((node.args, node.kwargs),
                      lambda a: found.append(a) if isinstance(a, Node)
                      and "tensor_meta" in a.meta and a not in found else None)
        return found

    def opaque(self, node: Node, why: str = "an operation the width analysis cannot follow"
               ) -> Desc:
        """An operation the analysis cannot express: fix its inputs (saying ``why``), output
        fixed width."""
        for a in self.tensor_inputs(node):
            self.fix_desc(self.desc.get(a), f"{_at(node)}: {why}")
        return self.const_desc(node)

    def chan(self, node: Node) -> Chan | None:
        """The node's descriptor as a Chan (a Split is fixed and read as fixed channels)."""
        d = self.desc.get(node)
        if isinstance(d, Chan):
            return d
        if isinstance(d, Split):
            self.fix_desc(d, f"{_at(node)}: channels viewed as groups are used as a plain tensor")
            shape = _shape(node)
            return Chan(((None, shape[1]),)) if shape and len(shape) >= 2 else None
        return None

    # -- the pass -----------------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.desc[node] = self.visit(node)
            macs = self.node_macs.get(node, 0)
            if macs and node not in self.symbolic_macs:
                self.terms.append(Term(node, "macs", macs))

    def visit(self, node: Node) -> Desc:
        if node.op == "placeholder":
            return self.const_desc(node)
        if node.op == "get_attr":
            return None
        if node.op == "output":
            # The model's outputs keep their widths (num_classes, or a conv head's channels).
            map_aggregate(node.args, lambda a: self.fix_desc(self.desc.get(a), "a model output "
                                                             "keeps its width")
                          if isinstance(a, Node) else None)
            return None
        if node.op == "call_module":
            return self.visit_module(node)
        if self.node_macs.get(node, 0):  # functional conv / matmul: not a micro-layer
            return self.opaque(node, "a functional conv / matmul (not an nn.Conv2d / nn.Linear)")
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        if name == "getitem":
            return self.visit_getitem(node)
        if name in _CAT:
            return self.visit_cat(node)
        if name in _SPLIT:
            return self.visit_split(node, name)
        if name == "pad" and node.op == "call_function":
            return self.visit_pad(node)
        if name in _RESHAPE:
            return self.visit_reshape(node)
        if name in _PERMUTE:
            return self.visit_permute(node, name)
        if name in _REDUCE:
            return self.visit_reduce(node)
        if name in _ELEMENTWISE:
            return self.visit_elementwise(node)
        return self.visit_generic(node)

    def visit_generic(self, node: Node) -> Desc:
        """Unknown op: a passthrough if it has one tensor input and keeps its channels."""
        if "tensor_meta" not in node.meta:
            return None  # sizes, ints, ...
        inputs = self.tensor_inputs(node)
        if not inputs:
            return self.const_desc(node)  # torch.zeros(...) and the like
        if len(inputs) > 1:
            return self.opaque(node, "an operation on several tensors the analysis does not know")
        x = inputs[0]
        d, i_shape, o_shape = self.desc.get(x), _shape(x), _shape(node)
        if i_shape is None or o_shape is None:
            return self.opaque(node)
        if o_shape == i_shape and not isinstance(d, tuple):
            return d
        if isinstance(d, Chan) and len(o_shape) == len(i_shape) >= 2 \
                and o_shape[:2] == i_shape[:2]:
            return d  # pooling, interpolation, spatial padding
        return self.opaque(node, "changes the channels in a way the analysis does not know")

    def visit_elementwise(self, node: Node) -> Desc:
        """add / mul / ...: operands that cover the output's channel dim are unified."""
        o_shape = _shape(node)
        if o_shape is None:
            return None
        if len(o_shape) < 2:
            return self.opaque(node)
        coupled: list[Desc] = []
        for a in self.tensor_inputs(node):
            s = _shape(a)
            if s is None:
                return self.opaque(node)
            k = 1 - (len(o_shape) - len(s))  # the operand's dim aligned with channels
            if k < 0 or (s[k] == 1 and o_shape[1] != 1):
                continue  # broadcast along channels: no coupling
            d = self.desc.get(a)
            if k != 1 or not isinstance(d, (Chan, Split)):
                return self.opaque(node, "combines channels with a parameter or constant of "
                                         "channel size")
            coupled.append(d)
        if not coupled:
            return self.opaque(node)
        return self.unify_descs(node, coupled)

    def unify_descs(self, node: Node, descs: list[Desc]) -> Desc:
        first = descs[0]
        why = f"{_at(node)}: joins tensors whose widths cannot be made equal"
        if all(isinstance(d, Chan) for d in descs):
            same_spatial = all(d.spatial == first.spatial for d in descs)
            if same_spatial and self.unify([d.segs for d in descs], why):
                return Chan(self.norm(first.segs), first.spatial)
        elif all(isinstance(d, Split) and (d.groups, d.channel_major)
                 == (first.groups, first.channel_major) for d in descs):
            if self.unify([d.piece for d in descs], why):
                return Split(self.norm(first.piece), first.groups, first.channel_major)
        for d in descs:
            self.fix_desc(d, why)
        return self.const_desc(node)

    def visit_cat(self, node: Node) -> Desc:
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        o_shape = _shape(node)
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int) or o_shape is None:
            return self.opaque(node)
        descs = [self.desc.get(t) if isinstance(t, Node) else None for t in tensors]
        if any(not isinstance(d, (Chan, Split)) for d in descs) or len(o_shape) < 2:
            return self.opaque(node)
        dim %= len(o_shape)
        if dim != 1:
            if dim == 2 and any(isinstance(d, Split) for d in descs):
                return self.opaque(node)
            return self.unify_descs(node, descs)  # batch / spatial concat: equal channels
        if not all(isinstance(d, Chan) for d in descs):
            return self.opaque(node)
        spatial = {d.spatial for d in descs}
        segs = self.norm(tuple(s for d in descs for s in d.segs))
        return Chan(segs, spatial.pop() if len(spatial) == 1 else 1)

    def visit_split(self, node: Node, name: str) -> Desc:
        x = node.args[0]
        d = self.desc.get(x) if isinstance(x, Node) else None
        metas = node.meta.get("tensor_meta")
        i_shape = _shape(x)
        if not isinstance(metas, (tuple, list)) or i_shape is None or len(i_shape) < 2:
            return self.opaque(node)
        dim = _arg(node, 2, "dim", 0) % len(i_shape)
        if dim != 1:
            if isinstance(d, Chan) or (isinstance(d, Split) and dim != 2):
                return tuple(d for _ in metas)
            return self.opaque(node)
        sizes = [int(m.shape[1]) for m in metas]
        # chunk cuts in proportion; split follows proportions only when its size is
        # computed from the tensor (a Node), not a hard-coded number of channels.
        proportional = name == "chunk" or isinstance(_arg(node, 1, "split_size_or_sections"), Node)
        if not (isinstance(d, Chan) and d.spatial == 1 and proportional and len(set(sizes)) == 1):
            return self.opaque(node, "splits the channels into hard-coded or unequal parts")
        pieces = self.split_equal(d.segs, len(sizes),
                                  f"{_at(node)}: its equal parts cannot be kept equal")
        if pieces is None:
            return self.const_desc(node)
        return tuple(Chan(p) for p in pieces)

    def visit_getitem(self, node: Node) -> Desc:
        src, idx = node.args[0], node.args[1]
        d = self.desc.get(src) if isinstance(src, Node) else None
        if isinstance(d, tuple):
            if isinstance(idx, int):
                return d[idx]
            return self.opaque(node)
        i_shape, o_shape = _shape(src), _shape(node)
        if i_shape is None:  # indexing a size or other non-tensor
            return self.const_desc(node) if o_shape is not None else None
        if not isinstance(d, Chan) or o_shape is None:
            return self.opaque(node)
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(it is None or not isinstance(it, (int, slice, type(Ellipsis))) for it in items):
            return self.opaque(node)
        explicit = sum(it is not Ellipsis for it in items)
        full: list[Any] = []
        for it in items:
            full.extend([slice(None)] * (len(i_shape) - explicit) if it is Ellipsis else [it])
        full.extend([slice(None)] * (len(i_shape) - len(full)))
        if full[0] != slice(None) or len(full) < 2:
            return self.opaque(node)  # indexing the batch
        if full[1] == slice(None):
            return d  # spatial subsampling (option-A shortcut) keeps the channels
        if isinstance(full[1], int):
            return self.const_desc(node)  # one channel picked: its width no longer matters
        return self.opaque(node, "takes a hard-coded channel slice")

    def visit_pad(self, node: Node) -> Desc:
        """F.pad. A channel pad (option-A shortcut) makes a new width coupled by the add."""
        x = node.args[0]
        pad = _arg(node, 1, "pad")
        mode = _arg(node, 2, "mode", "constant")
        d, i_shape, o_shape = self.desc.get(x), _shape(x), _shape(node)
        if i_shape is None or o_shape is None or not isinstance(pad, (tuple, list)) \
                or not all(isinstance(p, int) for p in pad):
            return self.opaque(node)

        def pair(dim: int) -> tuple[int, int]:
            j = len(i_shape) - 1 - dim  # pads are listed from the last dim backwards
            return (pad[2 * j], pad[2 * j + 1]) if 2 * j + 1 < len(pad) else (0, 0)

        if pair(0) != (0, 0) or len(i_shape) < 2:
            return self.opaque(node)
        if pair(1) == (0, 0):
            return self.visit_generic(node)
        if not isinstance(d, Chan) or d.spatial != 1 or mode != "constant":
            return self.opaque(node)
        stack = node.meta.get("nn_module_stack") or {}
        where = next(reversed(stack.values()))[0] if stack else node.name
        if not isinstance(where, str):
            where = node.name
        # The padded width is a width of its own, tied to whatever it is added to (the
        # stage's residual stream); the pad amount follows as outer - inner channels.
        token = self.tokens.new(o_shape[1], f"pad:{where}", layer=False)
        outer = ((token, 1),)
        self.pads.append(PadRecord(where, d.segs, outer))
        return Chan(outer)

    def visit_reshape(self, node: Node) -> Desc:
        x = node.args[0]
        return self.reshape(node, self.desc.get(x), _shape(x), _shape(node))

    def reshape(self, node: Node, d: Desc, i: tuple | None, o: tuple | None) -> Desc:
        """view / reshape / flatten by comparing shapes (batch dim kept)."""
        if i is None or o is None:
            return self.opaque(node)
        if isinstance(d, Split):
            if o == i:
                return d
            if len(o) == len(i) - 1 and o[0] == i[0] and o[1] == i[1] * i[2] and o[2:] == i[3:]:
                if d.channel_major:  # channel shuffle: pieces interleaved channel by channel
                    return Chan(self.norm(tuple((t, m * d.groups) for t, m in d.piece)))
                return Chan(self.norm(d.piece * d.groups))
            return self.opaque(node)
        if not isinstance(d, Chan) or len(i) < 2 or len(o) < 2 or o[0] != i[0]:
            return self.opaque(node)
        if o[1] == i[1] and math.prod(o[2:]) == math.prod(i[2:]):
            return d  # only the spatial dims change
        for k in range(3, len(i) + 1):  # flatten dims 1 .. k-1 into dim 1
            if o[1] == math.prod(i[1:k]) and o[2:] == i[k:]:
                f = math.prod(i[2:k])
                return Chan(tuple((t, m * f) for t, m in d.segs), d.spatial * f)
        if len(o) == len(i) + 1 and o[1] * o[2] == i[1] and o[3:] == i[2:] and d.spatial == 1:
            if self.prunable and any(_swaps_channel_groups(u) for u in node.users):
                self.fix_segs(d.segs, f"{_at(node)}: {SHUFFLE_REASON}")
                d = Chan(((None, i[1]),))  # shuffled as fixed channels
            pieces = self.split_equal(d.segs, o[1],  # channel dim -> (groups, C / groups)
                                      f"{_at(node)}: its channel groups cannot be kept equal")
            if pieces is None:
                return self.const_desc(node)
            return Split(pieces[0], o[1], channel_major=False)
        return self.opaque(node)

    def visit_permute(self, node: Node, name: str) -> Desc:
        x = node.args[0]
        d, i_shape = self.desc.get(x), _shape(x)
        if i_shape is None:
            return self.opaque(node)
        rank = len(i_shape)
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 else _arg(node, 1, "dims")
            dims = list(dims) if isinstance(dims, (list, tuple)) else None
        else:
            a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
            dims = None
            if isinstance(a, int) and isinstance(b, int):
                dims = list(range(rank))
                dims[a % rank], dims[b % rank] = dims[b % rank], dims[a % rank]
        if dims is None or not all(isinstance(v, int) for v in dims) or len(dims) != rank:
            return self.opaque(node)
        dims = [v % rank for v in dims]
        if isinstance(d, Chan) and dims[:2] == [0, 1]:
            return d
        if isinstance(d, Split) and dims[0] == 0:
            if dims[1:3] == [1, 2]:
                return d
            if dims[1:3] == [2, 1]:
                return Split(d.piece, d.groups, not d.channel_major)
        return self.opaque(node)

    def visit_reduce(self, node: Node) -> Desc:
        x = node.args[0]
        d, i_shape, o_shape = self.desc.get(x), _shape(x), _shape(node)
        dim = _arg(node, 1, "dim")
        if i_shape is None or o_shape is None:
            return self.opaque(node)
        if dim is None:
            return None if len(o_shape) < 2 else self.opaque(node)  # full reduction
        dims = dim if isinstance(dim, (list, tuple)) else [dim]
        if not all(isinstance(v, int) for v in dims) or len(i_shape) < 2:
            return self.opaque(node)
        dims = {v % len(i_shape) for v in dims}
        if 0 in dims:
            return self.opaque(node)
        if 1 in dims:  # channels reduced: any width works, the result has fixed width
            return self.const_desc(node)
        if isinstance(d, Chan) or (isinstance(d, Split) and 2 not in dims):
            return d
        return self.opaque(node)

    # -- modules ------------------------------------------------------------------------

    def visit_module(self, node: Node) -> Desc:
        name = str(node.target)
        m = self.modules[name]
        first = name not in self.first_call
        self.first_call.setdefault(name, node)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rec = self._records.get(name)
            if not first and (rec is None or rec.out_segs is None):
                return self.opaque(node, "its first call already had a fixed width")
            if isinstance(m, nn.Conv2d):
                return self.visit_conv(node, name, m, first)
            return self.visit_linear(node, name, m, first)
        inputs = self.tensor_inputs(node)
        has_params = any(True for _ in m.parameters())
        if len(inputs) != 1:
            return self.opaque(node)
        x = inputs[0]
        d, i_shape, o_shape = self.desc.get(x), _shape(x), _shape(node)
        if self.channelwise(m, d, i_shape, o_shape):
            if not self._same_input(name, d.segs, node):
                return self.const_desc(node)
            if first:  # one parameter per channel (BN scale and shift, or only a shift)
                for p in m.parameters():
                    self.symbolic_params.add(id(p))
                    self.terms.append(Term(node, "params", 1, d.segs))
                if isinstance(m, nn.GroupNorm):
                    for t, _ in d.segs:
                        if t is not None:
                            self.tokens.need_multiple(t, m.num_groups)
            return d
        if has_params and not (isinstance(m, nn.PReLU) and m.num_parameters == 1):
            # a fixed-width layer (params counted as constants)
            return self.opaque(node, f"a {type(m).__name__} with parameters the analysis does "
                                     f"not model")
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node, d, i_shape, o_shape)
        if isinstance(m, nn.ChannelShuffle) and isinstance(d, Chan) and d.spatial == 1:
            if self.prunable:
                self.fix_segs(d.segs, f"{_at(node)}: {SHUFFLE_REASON}")
                d = Chan(((None, i_shape[1]),))  # shuffled as fixed channels
            pieces = self.split_equal(d.segs, m.groups, f"{_at(node)}: its channel groups "
                                                        f"cannot be kept equal")
            if pieces is None:
                return self.const_desc(node)
            return Chan(self.norm(tuple((t, mm * m.groups) for t, mm in pieces[0])))
        return self.visit_generic(node)

    def channelwise(self, m: nn.Module, d: Desc, i_shape: tuple | None,
                    o_shape: tuple | None) -> bool:
        """A norm layer whose parameters are all one value per channel of dim 1."""
        if not isinstance(d, Chan) or i_shape is None or o_shape != i_shape or len(i_shape) < 2:
            return False
        ok_type = (isinstance(m, _CHANNELWISE)
                   or (isinstance(m, nn.PReLU) and m.num_parameters > 1)
                   or (isinstance(m, nn.LayerNorm) and len(i_shape) == 2))
        params = list(m.parameters())
        return ok_type and all(p.dim() == 1 and p.numel() == i_shape[1] for p in params)

    def _same_input(self, name: str, segs: Segs, node: Node) -> bool:
        """A module called again must see the same widths as at its first call."""
        prev = self._module_inputs.setdefault(name, segs)
        return prev is segs or self.unify([prev, segs], f"{name} is called again on a tensor "
                                                        f"whose width cannot be made equal")

    def _record(self, node: Node, name: str, kind: str, m: nn.Module, in_segs: Segs,
                out_segs: Segs | None, first: bool, reason: str | None = None) -> None:
        if first:
            base = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            width = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features
            rec = MicroRecord(name, kind, node, base, width, in_segs, out_segs, reason)
            self.micro.append(rec)
            self._records[name] = rec

    def visit_conv(self, node: Node, name: str, m: nn.Conv2d, first: bool) -> Desc:
        x = self.chan(node.args[0]) if isinstance(node.args[0], Node) else None
        o_shape = _shape(node)
        if x is None or o_shape is None or x.spatial != 1 or len(node.args) != 1:
            why = "a conv whose input the analysis cannot follow"
            self._record(node, name, "conv", m, ((None, m.in_channels),), None, first,
                         f"{name}: {why}")
            return self.opaque(node, why)
        if not self._same_input(name, x.segs, node):
            x = Chan(((None, m.in_channels),))
        in_segs = self.norm(x.segs)
        kk = math.prod(m.kernel_size)
        positions = math.prod(o_shape[2:])
        g = m.groups
        if g > 1 and g == m.in_channels:
            # Depthwise (or channel multiplier): out channels follow the input's, one
            # k x k filter each.
            kind = "depthwise"
            out = tuple((t, c * (m.out_channels // g)) for t, c in in_segs)
            if name in self.fixed_names:
                self.fix_segs(in_segs, f"scaling.fixed names {name}")
            elif self.prunable and m.out_channels != g:
                # the pruner would keep the group count; removing an input channel must
                # remove one whole group (its k outputs) instead
                self.fix_segs(in_segs, f"{name}: a depthwise conv with channel multiplier "
                                       f"{m.out_channels // g} (rsnet.compress cannot remove "
                                       f"its groups)")
            weight: tuple[int | Fraction, Segs, Segs | None] = (kk, out, None)
        else:
            kind = "conv"
            if first:
                token = self.tokens.new(m.out_channels, name, fixed=name in self.fixed_names,
                                        reason=f"scaling.fixed names {name}")
            else:
                token = self._records[name].out_segs[0][0]
            out = ((token, 1),)
            if g > 1 and self.prunable and not (len(in_segs) == 1 and in_segs[0][1] == 1):
                # the pruner keeps the group count by removing the same positions of every
                # group, which it can only do on one coupled group's channels, not a concat
                self.fix_segs(in_segs, f"{name}: a grouped conv reading several groups' "
                                       f"channels (rsnet.compress cannot keep its groups equal)")
            if g > 1:  # grouped conv: widths must stay divisible by the group count
                self.tokens.need_multiple(token, g)
                for t, _ in in_segs:
                    if t is None:
                        continue
                    self.tokens.need_multiple(t, g)
            weight = (Fraction(kk, g), in_segs, out)
        self._record(node, name, kind, m, in_segs, out, first)
        coef, a, b = weight
        return self._weight_terms(node, m, Term(node, "macs", simplify(coef * positions), a, b),
                                  simplify(coef), a, b, in_segs, out, first)

    def _weight_terms(self, node: Node, m: nn.Module, macs: Term, coef, a, b, in_segs, out,
                      first: bool) -> Desc:
        """Record a conv / linear's MACs and (on its first call) parameter terms.

        A layer whose MACs the symbolic form does not reproduce (e.g. an unusual subclass)
        gets fixed widths and constant costs instead: never a wrong cost.
        """
        if self._eval(macs) != self.node_macs.get(node, 0):
            why = f"{_at(node)}: its MACs do not follow its channel counts (an unusual layer)"
            self.fix_segs(in_segs, why)
            self.fix_segs(out, why)
            return self.const_desc(node)
        self.terms.append(macs)
        self.symbolic_macs.add(node)
        if first:
            self.terms.append(Term(node, "params", coef, a, b))
            self.symbolic_params.add(id(m.weight))
            if m.bias is not None:
                self.terms.append(Term(node, "params", 1, out))
                self.symbolic_params.add(id(m.bias))
        return Chan(out)

    def visit_linear(self, node: Node, name: str, m: nn.Linear, first: bool) -> Desc:
        x = self.chan(node.args[0]) if isinstance(node.args[0], Node) else None
        i_shape, o_shape = _shape(node.args[0]), _shape(node)
        if x is None or i_shape is None or len(i_shape) != 2 or len(node.args) != 1:
            # Only (batch, features) inputs have their features in dim 1.
            why = "a linear layer on a tensor that is not (batch, features)"
            self._record(node, name, "linear", m, ((None, m.in_features),), None, first,
                         f"{name}: {why}")
            return self.opaque(node, why)
        if not self._same_input(name, x.segs, node):
            x = Chan(((None, m.in_features),))
        in_segs = self.norm(x.segs)
        if first:
            fixed = name in self.fixed_names or name == self.classifier
            reason = ("the classifier keeps one output per class" if name == self.classifier
                      else f"scaling.fixed names {name}")
            token = self.tokens.new(m.out_features, name, fixed=fixed, reason=reason)
        else:
            token = self._records[name].out_segs[0][0]
        out = ((token, 1),)
        self._record(node, name, "linear", m, in_segs, out, first)
        rows = math.prod(o_shape[:-1])
        return self._weight_terms(node, m, Term(node, "macs", rows, in_segs, out), 1, in_segs, out,
                                  in_segs, out, first)

    def _eval(self, term: Term) -> int | Fraction:
        """A term's value at the baseline widths."""
        a = 1 if term.a is None else self.width(term.a)
        b = 1 if term.b is None else self.width(term.b)
        return term.coef * a * b



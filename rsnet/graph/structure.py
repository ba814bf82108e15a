"""Cut points, spans, macro-layers and their names (method.md section 2)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.fx import Graph, Node

__all__ = ["data_flow_order", "cut_points", "spans", "assign_macros", "macro_name", "units",
           "chain_units"]


def data_flow_order(graph: Graph) -> list[Node]:
    """Nodes on some input-to-output path, in graph (topological) order.

    Parameters read with get_attr and dead code are left out: an edge from a constant
    read early to a late use would otherwise jump over every cut point in between.
    """
    nodes = list(graph.nodes)
    forward = {n for n in nodes if n.op == "placeholder"}
    for n in nodes:
        if n not in forward and any(a in forward for a in n.all_input_nodes):
            forward.add(n)
    backward = {n for n in nodes if n.op == "output"}
    for n in reversed(nodes):
        if n not in backward and any(u in backward for u in n.users):
            backward.add(n)
    return [n for n in nodes if n in forward and n in backward]


def cut_points(order: Sequence[Node]) -> list[bool]:
    """cut[i]: every input-to-output path passes through order[i].

    With nodes in topological order, node i is a cut point iff no edge (a, b) has
    pos(a) < i < pos(b): a difference array counts the edges jumping over each position.
    """
    pos = {n: i for i, n in enumerate(order)}
    over = [0] * (len(order) + 1)
    for b in order:
        for a in b.all_input_nodes:
            if a in pos and pos[b] - pos[a] > 1:
                over[pos[a] + 1] += 1
                over[pos[b]] -= 1
    cut, running = [], 0
    for i in range(len(order)):
        running += over[i]
        cut.append(running == 0)
    return cut


def spans(order: Sequence[Node], cut: Sequence[bool]) -> list[list[Node]]:
    """Each cut point alone, and each maximal run of nodes between two cut points."""
    out: list[list[Node]] = []
    run: list[Node] = []
    for node, is_cut in zip(order, cut):
        if is_cut:
            if run:
                out.append(run)
                run = []
            out.append([node])
        else:
            run.append(node)
    if run:
        out.append(run)
    return out


def assign_macros(span_list: list[list[Node]], micro_of: dict[Node, str],
                  is_free: Callable[[str], bool]) -> tuple[list[list[str]], dict[Node, int | None]]:
    """Group spans into macro-layers; returns (micro names per macro, node -> macro index).

    A span with a free-width micro-layer closes a macro-layer; spans whose micro-layers
    have no free width (a lone depthwise conv) join the next such span; trailing ones (the
    classifier) belong to none. Nodes without micro-layers (BN, ReLU, add, cat, pooling)
    go with the last micro-layer before them, or with none before the first.
    """
    macros: list[list[str]] = []
    pending: list[int] = []  # indices of spans waiting for a free micro-layer
    span_macro: dict[int, int | None] = {}
    for k, span in enumerate(span_list):
        names = [micro_of[n] for n in span if n in micro_of]
        if not names:
            continue
        pending.append(k)
        if any(is_free(name) for name in names):
            for j in pending:
                span_macro[j] = len(macros)
            macros.append([micro_of[n] for j in pending for n in span_list[j] if n in micro_of])
            pending = []
    for j in pending:
        span_macro[j] = None
    node_macro: dict[Node, int | None] = {}
    current: int | None = None
    for k, span in enumerate(span_list):
        if k in span_macro:
            current = span_macro[k]
        for n in span:
            node_macro[n] = current
    return macros, node_macro


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _under(prefix: str, name: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def macro_name(micro: Sequence[str], all_micro: Sequence[str]) -> str:
    """Readable name: the deepest module holding all of ``micro``, widened to its largest
    ancestor that holds no other micro-layer ("conv1.conv" -> "conv1", but a VGG conv stays
    "features.conv3" because "features" holds the others too)."""
    parts = [n.split(".") for n in micro]
    common: list[str] = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    prefix = ".".join(common)
    if not prefix:
        return f"{micro[0]}..{micro[-1]}" if len(micro) > 1 else micro[0]
    own = set(micro)
    while _parent(prefix) and all(n in own for n in all_micro if _under(_parent(prefix), n)):
        prefix = _parent(prefix)
    return prefix


def units(n_macros: int, shared: Sequence[Sequence[int]]) -> list[list[int]]:
    """Union-find over macro indices: each list in ``shared`` ends up in one unit."""
    parent = list(range(n_macros))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in shared:
        for a, b in zip(group, group[1:]):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    out: dict[int, list[int]] = {}
    for i in range(n_macros):
        out.setdefault(find(i), []).append(i)
    return sorted(out.values())


def chain_units(unit_list: Sequence[Sequence[int]], interacting: Sequence[set[int]]
                ) -> list[list[int]]:
    """Merge units until each set of ``interacting`` macro-layers lies in at most two
    consecutive units (the chain that rsnet.plan.solver's pair tables assume).

    A set is the macro-layers whose widths one cost term or one width comparison reads,
    e.g. a DenseNet transition conv reading the stem and every layer of the block before
    it. A set spanning units a < ... < z is fixed by merging units a .. z-1 into one, which
    then precedes z. Returns the units sorted by first macro index.
    """
    out = sorted((sorted(u) for u in unit_list), key=lambda u: u[0])
    while True:
        unit_of = {m: i for i, u in enumerate(out) for m in u}
        for macros in interacting:
            us = sorted({unit_of[m] for m in macros})
            if len(us) > 2 or (len(us) == 2 and us[1] - us[0] > 1):
                lo, hi = us[0], us[-1] - 1
                merged = sorted(m for u in out[lo:hi + 1] for m in u)
                out = sorted(out[:lo] + [merged] + out[hi + 1:], key=lambda u: u[0])
                break
        else:
            return out

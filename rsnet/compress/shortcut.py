"""Option-A shortcuts that torch-pruning can prune: :class:`IndexShortcut` and its pruner.

He et al.'s option-A shortcut (:class:`rsnet.models.resnet_cifar.PadShortcut`) subsamples
its input and zero-pads the channel dimension: input channel ``i`` lands on output
channel ``i + pad_left``. torch-pruning reads the ``F.pad`` as an elementwise op, so it
couples the two stages' residual streams into one group, although their widths differ.

:class:`IndexShortcut` computes the same function from an explicit channel map, a buffer
``source`` of shape ``(out_channels,)``: output channel ``o`` copies input channel
``source[o]``, or is zero when ``source[o] == in_channels``. Pruning either side only edits
that map (:class:`IndexShortcutPruner`), so the stream before the shortcut and the stream
after it become separate torch-pruning groups, as in :mod:`rsnet.graph`.

While the map is still a plain pad (nothing pruned, or only channels that keep the
kept inputs contiguous) the forward *is* the option-A pad, so torch.fx and
:func:`rsnet.graph.analyze` see the same graph as for :class:`PadShortcut`. Once the map
is a general injection, ``analyze`` reads the gather as an opaque op: the cost it reports
stays exact, but the two streams around the shortcut count as fixed widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rsnet.models.resnet_cifar import PadShortcut

__all__ = ["IndexShortcut", "convert_pad_shortcuts", "index_shortcut_pruner"]


class IndexShortcut(nn.Module):
    """Parameter-free shortcut: subsample spatially, then place channels by an index map.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, ceil(H / stride),
    ceil(W / stride))``.

    Buffers (in the state dict, so a pruned model reloads with its own map):
        source: int64 ``(out_channels,)``; ``source[o]`` is the input channel copied to
            output channel ``o``; the value ``in_channels`` marks a zero channel.
    Attributes (plain ints, derived from the map and kept in sync by the pruner):
        in_channels, out_channels, stride, and ``pad`` = ``(left, right)`` when the map is
        a contiguous zero-pad (then the forward is ``F.pad``), else None.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 source: Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        if source is None:  # centred, as PadShortcut / akamaster
            left = (out_channels - in_channels) // 2
            source = [o - left if 0 <= o - left < in_channels else in_channels
                      for o in range(out_channels)]
        src = torch.as_tensor(source, dtype=torch.long).clone()
        if src.shape != (self.out_channels,):
            raise ValueError(f"source must have shape ({out_channels},), got {tuple(src.shape)}")
        self.register_buffer("source", src)
        self.pad: tuple[int, int] | None = None
        self._sync()

    @classmethod
    def from_pad(cls, pad: PadShortcut, in_channels: int) -> IndexShortcut:
        """The IndexShortcut computing exactly what ``pad`` computes on ``in_channels``."""
        out = pad.pad_left + in_channels + pad.pad_right
        source = [o - pad.pad_left if pad.pad_left <= o < pad.pad_left + in_channels
                  else in_channels for o in range(out)]
        return cls(in_channels, out, pad.stride, source)

    def _sync(self) -> None:
        """Recompute ``pad`` from ``source`` (after pruning or loading a state dict)."""
        src = self.source.tolist()
        # A pad maps 0..in-1 onto one contiguous run of outputs; zeros everywhere else.
        real = [o for o, s in enumerate(src) if s != self.in_channels]
        self.pad = None
        in_order = [src[o] for o in real] == list(range(self.in_channels))
        if len(real) == self.in_channels and in_order:
            left = real[0] if real else self.out_channels
            if real == list(range(left, left + self.in_channels)):
                self.pad = (left, self.out_channels - left - self.in_channels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = x[:, :, ::s, ::s]
        if self.pad is not None:
            # A plain Python branch: torch.fx bakes it in, and rsnet.graph understands F.pad.
            return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))
        # Append one zero channel (index in_channels), then gather the outputs from the map.
        return F.pad(x, (0, 0, 0, 0, 0, 1)).index_select(1, self.source)

    def extra_repr(self) -> str:
        kind = f"pad={self.pad}" if self.pad is not None else \
            f"{int((self.source != self.in_channels).sum())} channels mapped"
        return f"{self.in_channels} -> {self.out_channels}, stride={self.stride}, {kind}"


def _block_in_channels(parent: nn.Module) -> int | None:
    """Input width of a residual block holding a shortcut: its first conv's in_channels."""
    for m in parent.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def convert_pad_shortcuts(model: nn.Module) -> list[str]:
    """Replace every PadShortcut of ``model`` (in place) by an equivalent IndexShortcut.

    The input width of each shortcut is read from the first conv of the block holding it
    (an option-A block's conv1 and shortcut see the same tensor). Returns the names of the
    replaced modules. Idempotent: a model without PadShortcuts is left alone.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, PadShortcut):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        in_channels = _block_in_channels(parent)
        if in_channels is None:
            raise ValueError(f"cannot tell the input width of {name}: its block has no conv")
        new = IndexShortcut.from_pad(module, in_channels)
        tensor = next(iter(parent.parameters()), None)
        setattr(parent, attr, new.to(tensor.device) if tensor is not None else new)
        replaced.append(name)
    return replaced


def index_shortcut_pruner():
    """A torch-pruning pruner (``tp.pruner.function.BasePruningFunc``) for IndexShortcut.

    In and out channels are pruned separately (no intra-layer dependency), which is what
    splits the two residual streams into two groups. Pass it as
    ``customized_pruners={IndexShortcut: index_shortcut_pruner()}``. torch-pruning is
    imported lazily, like :func:`rsnet.models.layers.torch_pruning_pruners`.
    """
    from torch_pruning.pruner.function import BasePruningFunc

    class IndexShortcutPruner(BasePruningFunc):
        """Edits ``source``: drop output rows; zero and renumber references to inputs."""

        def prune_out_channels(self, layer: IndexShortcut, idxs: Sequence[int]) -> nn.Module:
            drop = set(int(i) for i in idxs)
            keep = [o for o in range(layer.out_channels) if o not in drop]
            layer.source = layer.source[torch.tensor(keep, dtype=torch.long,
                                                     device=layer.source.device)]
            layer.out_channels = len(keep)
            layer._sync()
            return layer

        def prune_in_channels(self, layer: IndexShortcut, idxs: Sequence[int]) -> nn.Module:
            drop = set(int(i) for i in idxs)
            n_new = layer.in_channels - len(drop)
            # old input index -> new input index; dropped inputs (and the old zero marker)
            # become the new zero marker n_new.
            remap = torch.full((layer.in_channels + 1,), n_new, dtype=torch.long)
            kept = [i for i in range(layer.in_channels) if i not in drop]
            remap[torch.tensor(kept, dtype=torch.long)] = torch.arange(n_new)
            layer.source = remap.to(layer.source.device)[layer.source]
            layer.in_channels = n_new
            layer._sync()
            return layer

        def get_out_channels(self, layer: IndexShortcut) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: IndexShortcut) -> int:
            return layer.in_channels

    return IndexShortcutPruner()

"""Compression: structured (filter) pruning to exact per-layer widths, built on torch-pruning,
with its importance criteria (:mod:`~rsnet.compress.criteria`) and dependency groups
(:mod:`~rsnet.compress.dependency`); the search methods that choose widths themselves,
NetAdapt (:mod:`~rsnet.compress.netadapt`) and MorphNet (:mod:`~rsnet.compress.morphnet`);
gradual magnitude pruning (:mod:`~rsnet.compress.sparsity`).

- :func:`prune_to_widths`: prune a trained model in place so every conv / linear has the
  width a :class:`rsnet.plan.WidthPlan` gives it (``plan.widths()``), ranking channels
  with a :class:`~rsnet.compress.criteria.Criterion` (``compression/criterion=...``);
- :func:`width_schedule`: intermediate widths for pruning in k steps;
- :func:`reinitialize`: fresh weights for the "pruned architecture from scratch" baseline;
- :func:`save_pruned` / :func:`load_pruned`: tensors + widths on disk, rebuilt in any process;
- :class:`IndexShortcut`: the prunable form of option-A ResNet shortcuts (substituted for
  ``PadShortcut`` automatically by :func:`prune_to_widths`).

The data-driven criteria take calibration batches from
:func:`rsnet.data.calibration.calibration_batches`.
"""

from rsnet.compress.structured import current_widths, prune_to_widths
from rsnet.compress.criteria import Criterion, Magnitude
from rsnet.compress.reinit import reinitialize
from rsnet.compress.checkpoint import load_pruned, pruned_meta, save_pruned
from rsnet.compress.width_schedule import width_schedule
from rsnet.compress.shortcut import IndexShortcut, convert_pad_shortcuts, index_shortcut_pruner

__all__ = ["prune_to_widths", "current_widths", "Criterion", "Magnitude", "reinitialize",
           "width_schedule", "save_pruned", "load_pruned", "pruned_meta", "IndexShortcut",
           "convert_pad_shortcuts", "index_shortcut_pruner"]

"""Structured (filter) pruning to exact per-layer widths, built on torch-pruning.

- :func:`prune_to_widths`: prune a trained model in place so every conv / linear has the
  width a :class:`rsnet.plan.WidthPlan` gives it (``plan.widths()``), ranking channels
  with one of :data:`CRITERIA` (``compression.criterion``);
- :func:`width_schedule`: intermediate widths for pruning in k steps;
- :func:`reinitialize`: fresh weights for the "pruned architecture from scratch" baseline;
- :func:`save_pruned` / :func:`load_pruned`: tensors + widths on disk, rebuilt in any process;
- :class:`IndexShortcut`: the prunable form of option-A ResNet shortcuts (substituted for
  ``PadShortcut`` automatically by :func:`prune_to_widths`);
- :func:`calibration_batches`: a seeded calibration set for the data-driven criteria.
"""

from rsnet.prune.calib import calibration_batches
from rsnet.prune.core import current_widths, prune_to_widths
from rsnet.prune.criteria import CRITERIA, DATA_DRIVEN
from rsnet.prune.init import reinitialize
from rsnet.prune.io import load_pruned, save_pruned
from rsnet.prune.schedule import width_schedule
from rsnet.prune.shortcut import IndexShortcut, convert_pad_shortcuts, index_shortcut_pruner

__all__ = ["prune_to_widths", "current_widths", "CRITERIA", "DATA_DRIVEN", "reinitialize",
           "width_schedule", "save_pruned", "load_pruned", "IndexShortcut",
           "convert_pad_shortcuts", "index_shortcut_pruner", "calibration_batches"]

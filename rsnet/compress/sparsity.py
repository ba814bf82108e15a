"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"; TF-MOT's
PolynomialDecay).

The weights of every ``nn.Conv2d`` and ``nn.Linear`` (not biases, not BatchNorm) are pruned by
magnitude with binary masks while the model trains. The sparsity follows the polynomial-decay
schedule of :func:`polynomial_sparsity`; :class:`MagnitudePruner` recomputes the masks on that
schedule and re-applies them after every optimiser step, so that momentum, weight decay or Adam
can never revive a pruned weight (the thesis dropped its masks while fine-tuning and its
sparsity eroded; method.md section 8).

Unstructured sparsity makes no dense kernel faster: report non-zeros (:func:`sparsity_report`)
and the compressed size, not latency.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rsnet.errors import RsnetError

__all__ = ["PRUNABLE", "polynomial_sparsity", "prunable_layers", "MagnitudePruner",
           "sparsity_report"]

# Module types whose ``weight`` is pruned. Subclasses (e.g. a Conv2d with a custom forward)
# count too, because the check is isinstance.
PRUNABLE = (nn.Conv2d, nn.Linear)
SCOPES = ("layer", "global")


def _check_schedule(initial_sparsity: float, final_sparsity: float, begin_step: int,
                    end_step: int, power: float) -> None:
    """Raise RsnetError naming the ``compression.sparsity.*`` setting of an impossible schedule."""
    key = "compression.sparsity"
    if not 0.0 <= initial_sparsity < 1.0:
        raise RsnetError(f"{key}.initial_sparsity={initial_sparsity} must be in [0, 1)")
    if not 0.0 <= final_sparsity < 1.0:
        raise RsnetError(f"{key}.final_sparsity={final_sparsity} must be in [0, 1) "
                         f"(1 would remove every weight)")
    if initial_sparsity > final_sparsity:
        # Masks only grow, so a decreasing schedule could not be followed.
        raise RsnetError(f"{key}.initial_sparsity={initial_sparsity} is above "
                         f"{key}.final_sparsity={final_sparsity}; pruned weights never come back")
    if begin_step < 0:
        raise RsnetError(f"{key}.begin_step={begin_step} must be >= 0")
    if end_step < begin_step:
        raise RsnetError(f"{key}.end_step={end_step} is before {key}.begin_step={begin_step}")
    if not power > 0:
        raise RsnetError(f"{key}.power={power} must be > 0 (the thesis and Zhu & Gupta use 3)")


def polynomial_sparsity(step: int, initial_sparsity: float, final_sparsity: float,
                        begin_step: int, end_step: int, power: float = 3) -> float:
    """The scheduled fraction of pruned weights after optimiser step ``step``.

    With t0 = begin_step, t1 = end_step, s_i = initial_sparsity, s_f = final_sparsity:

    - t < t0: 0.0 (as in TF-MOT, nothing is pruned before begin_step; s_i is the first
      sparsity actually applied, at t0, not a value that holds before it);
    - t0 <= t <= t1: s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** power, so s_i at t0
      and s_f at t1 (when t0 == t1, one-shot pruning: s_f from t0 on);
    - t > t1: s_f.

    Steps count optimiser updates (0-based), not epochs. Returns a fraction in [0, 1).
    """
    _check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, power)
    if step < begin_step:
        return 0.0
    if step >= end_step:  # also covers begin_step == end_step (no division by zero)
        return float(final_sparsity)
    progress = (step - begin_step) / (end_step - begin_step)
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{qualified module name: module} of every Conv2d / Linear, in registration order.

    A weight shared by several modules (tied weights) is listed once, under its first name,
    so that it gets one mask and is counted once.
    """
    layers: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and isinstance(module.weight, torch.Tensor):
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                layers[name] = module
    return layers


def _stable_prune_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask (bool, same shape as the 1-D ``scores``) that prunes the ``n_prune`` lowest scores.

    A stable sort breaks ties by position (the earlier weight is pruned first), so the count
    is exact and the result deterministic even when many weights share a magnitude (e.g. 0).
    """
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        order = torch.sort(scores, stable=True).indices
        keep[order[:n_prune]] = False
    return keep


class MagnitudePruner:
    """Prunes the Conv2d / Linear weights of ``model`` by magnitude on a polynomial schedule.

    Args:
        model: the model to prune, in place. Its modules are looked up once, here; later
            ``model.to(device)`` calls are fine (the masks follow the weights' device).
        initial_sparsity, final_sparsity: fractions of weights pruned at ``begin_step`` and
            from ``end_step`` on, in [0, 1), initial <= final.
        begin_step, end_step: optimiser-step indices (0-based) where pruning starts and ends.
            End the schedule before training ends so the network can recover.
        frequency: the masks are recomputed every ``frequency`` steps from ``begin_step``
            (100-1000 matter little, Zhu & Gupta), and once more at ``end_step``.
        power: exponent of the schedule (3 in Zhu & Gupta, TF-MOT and the thesis).
        scope: ``"layer"``: every layer is pruned to the scheduled sparsity on its own (to
            within rounding: round(n * s) of its n weights); ``"global"``: the |w| of all
            pruned layers are ranked together and the smallest round(N * s) of all N weights
            go, so layers of small weights lose more (possibly all of them: no floor is kept).
            Magnitudes are compared raw, without any per-layer normalisation.
        prune_classifier: the classifier (the model's last nn.Linear, see
            ``rsnet.models.classifier_name``) is pruned like any layer unless this is False.
        exclude: module names (or prefixes of names, e.g. ``"aux"``) never to prune.

    Ties: weights of equal magnitude are pruned in order of position (within a layer: flat
    index of the weight; global: layer registration order, then flat index). Weights already
    masked rank below every live weight, so a pruned weight stays pruned: masks only grow.

    Use: after every ``optimizer.step()`` call ``step(global_step)``; it updates the masks
    when an update is due and always re-applies them. ``state_dict()`` / ``load_state_dict()``
    checkpoint the masks so that a resumed run continues with the same ones. Optimiser
    state (momentum, Adam moments) of pruned weights is left alone: it is harmless because the
    weight is zeroed again after every step.
    """

    def __init__(self, model: nn.Module, initial_sparsity: float, final_sparsity: float,
                 begin_step: int, end_step: int, frequency: int = 100, power: float = 3,
                 scope: str = "layer", prune_classifier: bool = True,
                 exclude: Iterable[str] = ()):
        _check_schedule(initial_sparsity, final_sparsity, begin_step, end_step, power)
        if int(frequency) != frequency or frequency < 1:
            raise RsnetError(f"compression.sparsity.frequency={frequency} must be an integer >= 1")
        if scope not in SCOPES:
            raise RsnetError(f"compression.sparsity.scope={scope!r}: use one of {list(SCOPES)}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)
        self.power = float(power)
        self.scope = scope

        layers = prunable_layers(model)
        excluded = self._excluded_names(model, layers, prune_classifier, list(exclude))
        self.layers: dict[str, nn.Module] = {n: m for n, m in layers.items() if n not in excluded}
        if not self.layers:
            raise RsnetError(f"{type(model).__name__} has no Conv2d/Linear weight left to prune; "
                             f"check compression.sparsity.exclude / prune_classifier")
        # name -> bool keep-mask of the weight's shape (True = kept); empty until the first update.
        self.masks: dict[str, torch.Tensor] = {}
        self.last_update_step: int | None = None  # schedule step of the last mask update
        self.sparsity = 0.0  # scheduled sparsity of the current masks

    @staticmethod
    def _excluded_names(model: nn.Module, layers: Mapping[str, nn.Module],
                        prune_classifier: bool, exclude: list[str]) -> set[str]:
        excluded: set[str] = set()
        for prefix in exclude:
            hits = {n for n in layers if n == prefix or n.startswith(prefix + ".")}
            if not hits:
                raise RsnetError(f"compression.sparsity.exclude names {prefix!r}, which is not a "
                                 f"Conv2d/Linear (or a module holding one); prunable layers "
                                 f"start with {list(layers)[:5]}")
            excluded |= hits
        if not prune_classifier:
            from rsnet.models import classifier_name  # lazy: keeps this module light to import

            try:
                excluded.add(classifier_name(model))
            except RsnetError as e:
                raise RsnetError(f"compression.sparsity.prune_classifier=false: {e}") from e
        return excluded

    # --- schedule -----------------------------------------------------------------------
    def target_sparsity(self, step: int) -> float:
        """The scheduled sparsity at ``step`` (see :func:`polynomial_sparsity`)."""
        return polynomial_sparsity(step, self.initial_sparsity, self.final_sparsity,
                                   self.begin_step, self.end_step, self.power)

    def due_update_step(self, step: int) -> int | None:
        """The latest scheduled update step <= ``step`` (None before ``begin_step``).

        Update steps: begin_step, begin_step + frequency, ... while < end_step, then end_step.
        """
        if step < self.begin_step:
            return None
        if step >= self.end_step:
            return self.end_step
        return self.begin_step + (step - self.begin_step) // self.frequency * self.frequency

    def step(self, global_step: int) -> bool:
        """Call after each optimiser step; ``global_step`` is that step's 0-based index.

        Updates the masks when a scheduled update is due that has not been made yet (robust
        to skipped or repeated calls: a late call catches up to the latest due update, a
        repeated one does nothing), then applies them. Returns True when the masks changed.
        """
        due = self.due_update_step(global_step)
        updated = due is not None and (self.last_update_step is None or due > self.last_update_step)
        if updated:
            self.update_masks(self.target_sparsity(due))
            self.last_update_step = due
        self.apply()
        return updated

    def settled(self) -> bool:
        """True once the masks are the final ones (the update at ``end_step`` is made): a
        model selected before that would be less sparse than ``final_sparsity``."""
        return self.last_update_step == self.end_step

    # --- masks --------------------------------------------------------------------------
    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Recompute the masks for ``sparsity`` from the current |w| and apply them.

        Masks only grow: a weight pruned before stays pruned, even if ``sparsity`` is lower.
        """
        weights = {n: m.weight.detach() for n, m in self.layers.items()}
        # Already-pruned weights score -1 (below any |w| >= 0) so they are chosen first.
        scores = {}
        for n, w in weights.items():
            s = w.abs().float().flatten()
            if n in self.masks:
                s[~self.masks[n].to(s.device).flatten()] = -1.0
            scores[n] = s
        already = {n: int((s < 0).sum()) for n, s in scores.items()}
        if self.scope == "layer":
            for n, s in scores.items():
                n_prune = max(round(s.numel() * sparsity), already[n])
                self.masks[n] = _stable_prune_mask(s, n_prune).view(weights[n].shape)
        else:
            device = next(iter(scores.values())).device
            flat = torch.cat([s.to(device) for s in scores.values()])
            n_prune = max(round(flat.numel() * sparsity), sum(already.values()))
            keep = _stable_prune_mask(flat, n_prune)
            sizes = [s.numel() for s in scores.values()]
            for (n, w), part in zip(weights.items(), keep.split(sizes)):
                self.masks[n] = part.to(w.device).view(w.shape)
        self.sparsity = float(sparsity)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights (w *= mask). Call after every optimiser step."""
        for n, mask in self.masks.items():
            weight = self.layers[n].weight
            if mask.device != weight.device:  # the model was moved after the masks were made
                mask = self.masks[n] = mask.to(weight.device)
            weight.mul_(mask)

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks (bool, on the CPU) and schedule position, for ``torch.save``."""
        return {"masks": {n: m.cpu() for n, m in self.masks.items()},
                "last_update_step": self.last_update_step, "sparsity": self.sparsity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks saved by :meth:`state_dict` (same model architecture), then apply them."""
        masks = state["masks"]
        unknown = sorted(set(masks) - set(self.layers))
        if unknown:
            raise RsnetError(f"the pruning state in the checkpoint has masks for {unknown[:5]}, "
                             f"which this model does not prune; was it made with other "
                             f"compression.sparsity settings or another model?")
        for n, m in masks.items():
            shape = self.layers[n].weight.shape
            if m.shape != shape:
                raise RsnetError(f"the checkpoint's pruning mask of {n} has shape {tuple(m.shape)} "
                                 f"but the weight has {tuple(shape)}; it belongs to another model")
        if masks and set(masks) != set(self.layers):
            missing = sorted(set(self.layers) - set(masks))
            raise RsnetError(f"the pruning state in the checkpoint has no masks for {missing[:5]}; "
                             f"was it made with other compression.sparsity settings?")
        self.masks = {n: m.to(device=self.layers[n].weight.device, dtype=torch.bool)
                      for n, m in masks.items()}
        self.last_update_step = state["last_update_step"]
        self.sparsity = float(state["sparsity"])
        self.apply()


@torch.no_grad()
def sparsity_report(model: nn.Module, prefix: str = "sparsity") -> dict[str, float | int]:
    """Fractions of exactly-zero weights of every Conv2d / Linear, as flat metric keys.

    ``<prefix>/layer/<name>``: that layer's zero fraction; ``<prefix>/overall``: all these
    weights together (biases and BatchNorm excluded, excluded/unpruned layers included);
    ``<prefix>/weights`` and ``<prefix>/nonzero_weights``: the counts behind ``overall``.
    """
    report: dict[str, float | int] = {}
    total = zeros = 0
    for name, module in prunable_layers(model).items():
        w = module.weight
        z = int((w == 0).sum())
        report[f"{prefix}/layer/{name}"] = z / w.numel()
        total += w.numel()
        zeros += z
    report[f"{prefix}/overall"] = zeros / total if total else 0.0
    report[f"{prefix}/weights"] = total
    report[f"{prefix}/nonzero_weights"] = total - zeros
    return report

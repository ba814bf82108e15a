"""Metrics: top-k, the scope-aware local/global/raw accuracies, parameters, MACs, latency.

Conventions (also in docs/usage.md):
- params: every parameter of the model (BN running statistics are buffers, not counted).
- MACs: multiply-accumulates of convolutions, linear layers and matmuls for one image at
  the model's input size, i.e. torch.utils.flop_counter FLOPs / 2 (the "FLOPs" of the
  pruning literature). BN, activations and pooling are not counted.
- latency: median wall time of one forward pass (eval mode, no grad) after warm-up.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsnet.data.subsets import ClassSubset


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose target is among the k largest logits. logits: (n, classes)."""
    if k == 1:  # argmax, so that ties break exactly as in every other metric
        return (logits.argmax(dim=1) == targets).double().mean().item()
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).double().mean().item()


def scope_metrics(logits: torch.Tensor, targets: torch.Tensor, misc_label: int) -> dict[str, float]:
    """Local / global / raw accuracy of an N-way model with a misc output (method.md section 7),
    deciding by argmax: see :func:`scope_metrics_of_predictions`."""
    return scope_metrics_of_predictions(logits.argmax(dim=1), targets, misc_label)


def scope_metrics_of_predictions(pred: torch.Tensor, targets: torch.Tensor, misc_label: int
                                 ) -> dict[str, float]:
    """Local / global / raw accuracy of (n,) predicted labels against (n,) targets.

    local: N-way accuracy on in-scope images (predicting misc for one is an error);
    global: in-scope vs misc, binary, on all images; raw: N-way accuracy on all images.
    Also the misc share of the set and the scores of a constant "misc" predictor.
    """
    in_scope = targets != misc_label
    share = 1.0 - in_scope.double().mean().item()
    return {
        "acc_local": (pred[in_scope] == targets[in_scope]).double().mean().item(),
        "acc_global": ((pred != misc_label) == in_scope).double().mean().item(),
        "acc_raw": (pred == targets).double().mean().item(),
        "misc_share": share,
        "const_misc_global": share,
        "const_misc_raw": share,
    }


def baseline_scope_metrics(logits: torch.Tensor, orig_labels: torch.Tensor,
                           subset: ClassSubset) -> dict[str, float]:
    """The same three accuracies for the C-way baseline on a subset's images.

    local: C-way top-1 on in-scope images; global: [argmax is an in-scope class] vs
    [image is in scope]; raw: C-way top-1 on all images (misc images judged by their own class).
    """
    pred = logits.argmax(dim=1)
    chosen = torch.tensor(subset.classes)
    in_scope = torch.isin(orig_labels, chosen)
    share = 1.0 - in_scope.double().mean().item()
    return {
        "acc_local": (pred[in_scope] == orig_labels[in_scope]).double().mean().item(),
        "acc_global": (torch.isin(pred, chosen) == in_scope).double().mean().item(),
        "acc_raw": (pred == orig_labels).double().mean().item(),
        "misc_share": share,
        "const_misc_global": share,
        "const_misc_raw": 0.0,
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, channels: int = 3) -> int:
    """Conv + linear (+ matmul) MACs for one (channels, input_size, input_size) image."""
    m = copy.deepcopy(model).eval().float().cpu()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m(torch.zeros(1, channels, input_size, input_size))
    return counter.get_total_flops() // 2


def median_ms(fn, runs: int = 50, warmup: int = 10) -> float:
    """Median wall milliseconds of ``fn()`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latency(model: nn.Module, input_size: int, batch_size: int = 1, runs: int = 50,
                    warmup: int = 10, channels_last: bool = False,
                    dtype: torch.dtype | None = None, threads: int | None = None) -> float:
    """Median milliseconds of one eager forward pass on the CPU (eval mode, no grad).

    ``threads`` fixes torch's intra-op thread count for the measurement (restored after).
    """
    m = copy.deepcopy(model).eval().float().cpu()
    x = torch.randn(batch_size, 3, input_size, input_size)
    if channels_last:
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    else:
        m = m.to(memory_format=torch.contiguous_format)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                     enabled=dtype is not None):
            return median_ms(lambda: m(x), runs, warmup)
    finally:
        torch.set_num_threads(before)


def session_latency(session, input_size: int, batch_size: int = 1, runs: int = 50,
                    warmup: int = 10, channels: int = 3) -> float:
    """Median milliseconds of one ONNX Runtime run (the session fixes its own thread count)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch_size, channels, input_size, input_size),
                                                 dtype=np.float32)
    feed = {session.get_inputs()[0].name: x}
    return median_ms(lambda: session.run(None, feed), runs, warmup)


def cost_metrics(model: nn.Module, input_size: int, prefix: str) -> dict:
    """``{prefix}/params`` and ``{prefix}/macs`` (one image of ``input_size`` px)."""
    return {f"{prefix}/params": count_params(model), f"{prefix}/macs": count_macs(model, input_size)}

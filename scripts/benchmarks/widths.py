"""bench widths: Psi and Psi' per deployment target, their MACs and latency on two runtimes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from rsnet import progress
from rsnet.models import build_model

from .common import _f, compose_cfg, ort_predictor

def planned_pair(experiment: str, target: str, classes: int, base_classes: int):
    """(Psi, Psi', input size) of ``experiment`` for ``target``: the C-way baseline and the
    N-way model at the plan stage's widths (fresh weights: latency does not depend on them).
    ``target`` is a target name, optionally followed by overrides of the width rule
    ("x86_avx512 scaling.widths.keep_narrow=true")."""
    from rsnet.graph import analyze
    from rsnet.metrics import count_macs, count_params
    from rsnet.models.widths import build_at_widths
    from rsnet.stages.plan import solve

    name, *overrides = target.split()
    cfg = compose_cfg(f"experiment={experiment}", f"target={name}", *overrides,
                      f"dataset.num_classes={classes}", "model.checkpoint=null")
    sc, size = cfg.scaling, cfg.model.input_size
    torch.manual_seed(0)
    psi = build_model(cfg.model, base_classes).eval()
    graph = analyze(build_model(cfg.model, classes), size, fixed=list(sc.fixed),
                    tie=[list(t) for t in sc.tie], leaf_modules=list(sc.leaf_modules))
    base = {"params": count_params(psi), "macs": count_macs(psi, size)}
    plan = solve(sc, graph, base, classes, base_classes)
    prime = build_at_widths(cfg.model, classes, plan.widths(), psi)
    for net in (psi, prime):
        _trained_like_bn(net)
    return psi.eval(), prime.eval(), size


@torch.no_grad()
def _trained_like_bn(net: torch.nn.Module) -> None:
    """BatchNorm parameters and statistics drawn as after training, not a fresh layer's ones
    and zeros (int8 calibration then sees realistic per-channel scales)."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def bench_widths(args) -> dict:
    """Psi and Psi' (rs, N = --classes) of each thesis family for each deployment target
    (its channel multiple): parameters, MACs, and fp32 latency at batch --latency-batch on ONNX
    Runtime and OpenVINO with 2 threads, timed in --repeats interleaved rounds (every model and
    runtime once per round; the median over rounds of each round's median; Psi' / Psi is taken
    round by round, and its median and range over the rounds are reported). --int8 adds the
    static int8 (QDQ) file of each on both runtimes and its speed-up over the same runtime's
    fp32."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsnet-bench-widths-") as tmp:
        for experiment in args.experiments:
            rows += _time_widths(experiment, args, Path(tmp))
    for r in rows:  # Psi' against its own family's Psi, round by round (paired in time)
        psi = next(p for p in rows if p["experiment"] == r["experiment"] and p["model"] == "Psi")
        r["macs_ratio"] = r["macs"] / psi["macs"]
        for rt in ("ort", "openvino"):
            key = f"{rt}_fp32_b{args.latency_batch}_rounds_ms"
            per_round = np.array(r[key]) / np.array(psi[key])
            r[f"{rt}_latency_ratio"] = float(np.median(per_round))
            r[f"{rt}_latency_over_macs"] = r[f"{rt}_latency_ratio"] / r["macs_ratio"]
            r[f"{rt}_latency_over_macs_range"] = [float(per_round.min() / r["macs_ratio"]),
                                                  float(per_round.max() / r["macs_ratio"])]
    return {"rows": rows}


def _time_widths(experiment: str, args, tmp: Path) -> list[dict]:
    """One family's rows of :func:`bench_widths`: its files in ``tmp``, timed interleaved."""
    from rsnet.deploy.onnx_io import export_onnx
    from rsnet.deploy.quant import quantize_int8
    from rsnet.deploy.runtimes import OpenVINO, predictor_latency
    from rsnet.metrics import count_macs, count_params

    models = {}
    for target in args.targets:
        psi, prime, size = planned_pair(experiment, target, args.classes, args.base_classes)
        models.setdefault("Psi", psi)
        models[f"Psi' {target}"] = prime
    preds, ops = {}, {}
    for k, (label, net) in enumerate(models.items()):
        files = {"fp32": export_onnx(net, tmp / f"{experiment}_{k}.onnx", size)}
        if args.int8:  # ranges from random images: the speed, not the accuracy, of int8
            calib = [np.random.default_rng(i).standard_normal((32, 3, size, size), np.float32)
                     for i in range(4)]
            files["int8"] = quantize_int8(files["fp32"], tmp / f"{experiment}_{k}_int8.onnx", calib)
        ops[label] = {p: ort_graph_ops(f) for p, f in files.items()}
        for precision, path in files.items():
            preds[(label, f"ort_{precision}")] = ort_predictor(path)
            preds[(label, f"openvino_{precision}")] = OpenVINO().open(
                path, threads=2, batch_size=args.latency_batch)
    times = {k: [] for k in preds}
    for _ in progress.bar(range(args.repeats), desc=f"{experiment} rounds"):
        for k, pred in preds.items():
            times[k].append(predictor_latency(pred, size, args.latency_batch, runs=20, warmup=3))
    rows, b = [], args.latency_batch
    for label, net in models.items():
        row = {"experiment": experiment, "model": label, "params": count_params(net),
               "macs": count_macs(net, size),
               "min_width_multiple": None if label == "Psi" else _multiple(net),
               "ort_graph_ops": ops[label],
               **{f"{key}_b{b}_ms": float(np.median(t)) for (m, key), t in times.items()
                  if m == label},
               **{f"{key}_b{b}_rounds_ms": t for (m, key), t in times.items() if m == label}}
        for rt in ("ort", "openvino"):
            if f"{rt}_int8_b{b}_ms" in row:
                row[f"{rt}_int8_speedup"] = row[f"{rt}_fp32_b{b}_ms"] / row[f"{rt}_int8_b{b}_ms"]
        rows.append(row)
    return rows


def ort_graph_ops(path: Path) -> dict[str, int]:
    """{op type: count} of the graph ONNX Runtime runs for ``path`` after its optimisations
    (what fused and what stayed: e.g. fp32 islands in an int8 graph)."""
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def _multiple(net: torch.nn.Module) -> int:
    """The largest of 16, 8, 4, 2 that divides every hidden conv width (1 if none)."""
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    return next((k for k in (16, 8, 4, 2) if all(w % k == 0 for w in widths)), 1)


def widths_markdown(result: dict) -> str:
    rows = result["rows"]
    b = next(k for k in rows[0] if k.startswith("ort_fp32_b")).split("_b")[1].removesuffix("_ms")
    lines = [f"| experiment | model | multiple | params | MACs | MACs / Psi | ORT b{b} (ms) | "
             f"ORT latency / Psi | ORT (latency / Psi) / (MACs / Psi) | OpenVINO b{b} (ms) | "
             f"OpenVINO latency / Psi | OpenVINO (latency / Psi) / (MACs / Psi) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['model']} | {_f(r['min_width_multiple'], 'd')} | "
                     f"{r['params']:,} | {r['macs']:,} | {r['macs_ratio']:.3f} | "
                     f"{r[f'ort_fp32_b{b}_ms']:.2f} | {r['ort_latency_ratio']:.3f} | "
                     f"{_over_macs(r, 'ort')} | {r[f'openvino_fp32_b{b}_ms']:.2f} | "
                     f"{r['openvino_latency_ratio']:.3f} | {_over_macs(r, 'openvino')} |")
    if "ort_int8_speedup" in rows[0]:
        lines += ["", f"| experiment | model | ORT int8 b{b} (ms) | ORT int8 speed-up | "
                  f"OpenVINO int8 b{b} (ms) | OpenVINO int8 speed-up |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['experiment']} | {r['model']} | {r[f'ort_int8_b{b}_ms']:.2f} | "
                  f"{r['ort_int8_speedup']:.2f}x | {r[f'openvino_int8_b{b}_ms']:.2f} | "
                  f"{r['openvino_int8_speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def _over_macs(row: dict, rt: str) -> str:
    """A row's (latency / Psi) / (MACs / Psi): the median over rounds and its range."""
    low, high = row.get(f"{rt}_latency_over_macs_range", (None, None))
    spread = f" ({low:.2f}-{high:.2f})" if low is not None and row["model"] != "Psi" else ""
    return f"{row[f'{rt}_latency_over_macs']:.2f}{spread}"

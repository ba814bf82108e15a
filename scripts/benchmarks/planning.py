"""bench plan and bench latency: the rs plans and their solve time; the latency budget."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rsnet.errors import RsnetError
from rsnet.models import build_model

from .common import compose_cfg

THESIS_N5 = [5.0] * 8 + [4.0] * 4  # method.md section 4


def bench_plan(args) -> dict:
    """Planning time and the rs plans: the thesis setting and the CPU-scale (64 px) one."""
    from rsnet.plan.budget import make_budget
    from rsnet.graph import analyze
    from rsnet.metrics import count_macs, count_params
    from rsnet.plan.policies import ResourceScalable, Scaler, WidthRule

    settings = [("googlenet_rs", 227, 1000, False), ("googlenet_rs", 64, 200, True),
                ("mobilenet_v1", 64, 200, True)]
    rows = []
    for name, size, classes, bn_scale in settings:
        over = [f"model={name}", f"model.input_size={size}"]
        if name == "googlenet_rs":
            over.append(f"model.arch.bn_scale={str(bn_scale).lower()}")
        mcfg = OmegaConf.merge(compose_cfg(*over).model, {"checkpoint": None})
        baseline = build_model(mcfg, classes)
        base = {"params": count_params(baseline), "macs": count_macs(baseline, size)}
        for lam in (0.045, 0.25):
            for n in (5, 10, 15, 20):
                t0 = time.perf_counter()
                graph = analyze(build_model(mcfg, n), size)
                t1 = time.perf_counter()
                budget = make_budget("thesis", "params", base["params"], n, classes, lam)
                plan = ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)
                t2 = time.perf_counter()
                rows.append({"model": name, "input": size, "C": classes, "bn_scale": bn_scale,
                             "lambda": lam, "N": n, "factors": [m.factor for m in plan.macro],
                             "params": plan.predicted["params"], "macs": plan.predicted["macs"],
                             "budget": budget.value, "used": plan.predicted["params"] / budget.value,
                             "analyze_s": t1 - t0, "solve_s": t2 - t1})
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def plan_markdown(result: dict) -> str:
    lines = ["| model | px | C | lambda | N | factors per macro-layer | params | budget used | "
             "analyse + solve (s) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['input']} | {r['C']} | {r['lambda']} | {r['N']} | "
                     f"{' '.join(f'{f:g}' for f in r['factors'])} | {r['params']:,} | "
                     f"{r['used']:.2%} | {r['analyze_s']:.2f} + {r['solve_s']:.2f} |")
    return "\n".join(lines)


def bench_latency(args) -> dict:
    """The latency budget (``scaling.budget.unit=latency``): per experiment and budget (a
    ratio of the C-way Psi's measured ms at batch 1), the pipeline's plan stage on fresh
    weights (its layer table carried from one budget to the next), the plan's prediction,
    the plan as built measured by the stage, and measured again here from plan.json."""
    import shutil

    from rsnet.deploy.latency_table import measure_model_ms
    from rsnet.models.widths import build_at_widths
    from rsnet.pipeline import run
    from rsnet.plan.latency import SESSIONS
    from rsnet.plan import WidthPlan

    rows, runs = [], compose_cfg().export.latency.runs
    with tempfile.TemporaryDirectory(prefix="rsnet_latency_") as tmp:
        for experiment in args.experiments:
            lut = None
            for ratio in args.ratios:
                cfg = compose_cfg(f"experiment={experiment}", f"target={args.target}",
                                  f"dataset.num_classes={args.classes}", "model.checkpoint=null",
                                  "recipe=scratch", "scaling.budget.unit=latency", "scaling.budget.rule=ratio",
                                  f"scaling.budget.value={ratio}", "stop_after=plan",
                                  "progress=false")
                run_dir = Path(tmp) / f"{experiment}_{ratio}"
                run_dir.mkdir()
                if lut is not None:  # the same layers: the entries measured so far
                    shutil.copy(lut, run_dir / "latency_lut.json")
                row = {"experiment": experiment, "target": args.target, "N": args.classes,
                       "budget_ratio": ratio}
                t0 = time.perf_counter()
                try:
                    run(cfg, run_dir)
                except RsnetError as e:  # a budget below the narrowest plan: a row that says so
                    if "no width plan fits" not in str(e):
                        raise
                    rows.append({**row, "failed": str(e)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                row["plan_s"] = time.perf_counter() - t0
                lut = run_dir / "latency_lut.json"
                plan = WidthPlan.load(run_dir / "plan.json")
                torch.manual_seed(0)
                full = build_model(cfg.model, args.classes)
                built = build_at_widths(cfg.model, args.classes, plan.widths(), full).eval()
                runs, threads = cfg.export.latency.runs, cfg.scaling.budget.threads
                row.update({"budget_ms": plan.budget["value"], "psi_ms": plan.budget["baseline"],
                            "factors": [m.factor for m in plan.macro],
                            "params": plan.predicted["params"], "macs": plan.predicted["macs"],
                            "params_ratio": plan.predicted["params"] / plan.baseline["params"],
                            "macs_ratio": plan.predicted["macs"] / plan.baseline["macs"],
                            **{k: v for k, v in plan.latency.items() if k != "rounds"},
                            "solves": len(plan.latency["rounds"]), "rounds": plan.latency["rounds"],
                            "remeasured_ms": measure_model_ms(built, cfg.model.input_size,
                                                              threads, runs, sessions=SESSIONS)})
                row["remeasured_error"] = row["remeasured_ms"] / row["predicted_ms"] - 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "session_spread": session_spread(args.experiments[0], runs)}


def session_spread(experiment: str, runs: int, sessions: int = 5) -> list[dict]:
    """How far one model's batch-1 latency moves between ONNX Runtime sessions: the fastest run
    of each of ``sessions`` sessions, for 1 and 2 threads (Psi of ``experiment``, fresh weights)."""
    from rsnet.deploy.latency_table import measure_model_ms

    cfg = compose_cfg(f"experiment={experiment}", "model.checkpoint=null")
    torch.manual_seed(0)
    classes = 200
    psi = build_model(cfg.model, classes).eval()
    out = []
    for threads in (1, 2):
        ms = [measure_model_ms(psi, cfg.model.input_size, threads, runs, sessions=1)
              for _ in range(sessions)]
        out.append({"experiment": experiment, "classes": classes, "threads": threads,
                    "fastest_ms_per_session": ms, "max_over_min": max(ms) / min(ms)})
        print(json.dumps(out[-1]), flush=True)
    return out


def latency_markdown(result: dict) -> str:
    lines = ["| experiment | N | target | budget (x Psi) | budget ms | predicted ms | measured ms "
             "(stage / again) | error (stage / again) | solves | MACs x Psi | plan s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['experiment']} | {r['N']} | {r['target']} | {r['budget_ratio']} | "
                         f"{r['failed']} |||||||")
            continue
        lines.append(f"| {r['experiment']} | {r['N']} | {r['target']} | {r['budget_ratio']} | "
                     f"{r['budget_ms']:.3f} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} / "
                     f"{r['remeasured_ms']:.3f} | {r['error']:+.1%} / {r['remeasured_error']:+.1%} | "
                     f"{r['solves']} | {r['macs_ratio']:.3f} | {r['plan_s']:.0f} |")
    for s in result.get("session_spread", []):
        lines.append(f"\n{s['experiment']} Psi ({s['classes']} classes), {s['threads']} thread(s): "
                     f"fastest run per ONNX Runtime session "
                     f"{', '.join(f'{m:.3f}' for m in s['fastest_ms_per_session'])} ms "
                     f"(max / min {s['max_over_min']:.2f})")
    return "\n".join(lines)

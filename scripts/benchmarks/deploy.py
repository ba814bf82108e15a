"""bench deploy: the pipeline's export stage on every runtime, per run, against the first run."""

from __future__ import annotations

import json

from .common import REPO, _f, compose_cfg

DEPLOY_KEYS = ("model/params", "model/macs", "test/acc", "onnx/test/acc", "int8/test/acc",
               "int8/top1_agreement", "export/max_abs_diff", "export/onnx_bytes", "int8/bytes",
               "int8/size_ratio", "latency/threads", "openvino/precision", "openvino/test/acc",
               "openvino_int8/test/acc", "executorch/test/acc", "executorch_int8/test/acc",
               "executorch/bytes", "executorch_int8/bytes")
RUNTIMES = [("PyTorch eager", "torch", "test/acc", None), ("ONNX Runtime", "ort", "onnx/test/acc", "int8/test/acc"),
            ("OpenVINO", "openvino", "openvino/test/acc", "openvino_int8/test/acc"),
            ("ExecuTorch", "executorch", "executorch/test/acc", "executorch_int8/test/acc")]


def bench_deploy(args) -> dict:
    """The pipeline up to its export stage, per run (every runtime:
    export/runtimes=[openvino,executorch]);
    the deployment metrics of each, and every run's latency relative to the first run (Psi)."""
    from rsnet.pipeline import run

    rows = []
    for spec in args.runs:
        experiment, *overrides = spec.split()
        if not any(o.startswith("export/runtimes") for o in overrides):
            overrides.append("export/runtimes=[openvino,executorch]")
        cfg = compose_cfg(f"experiment={experiment}", "progress=false", *overrides)
        if not cfg.export.int8:
            raise SystemExit(f"bench deploy: run {spec!r} has export={cfg.export.name}; add export=int8")
        run_dir = REPO / "outputs" / "bench" / "deploy" / "_".join(spec.split())
        m = run(cfg, run_dir)
        row = {"run": spec, "run_dir": str(run_dir.relative_to(REPO)),
               **{k: m.get(k) for k in DEPLOY_KEYS},
               **{k: v for k, v in m.items() if k.startswith("latency/") and k.endswith("_ms")},
               **{k: v for k, v in m.items() if k.endswith("/unsupported")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": deploy_ratios(rows)}


def deploy_ratios(rows: list[dict]) -> list[dict]:
    """Adds to each row ``int8_speedup/<runtime>_int8_b<B>`` (the same runtime's fp32 latency
    over its int8 latency) and ``vs_first/<key>`` (latency and MACs over the first row's)."""
    for r in rows:
        for k in [k for k in r if k.startswith("latency/") and "_int8_b" in k]:
            fp32 = r.get(k.replace("_int8_b", "_fp32_b"))
            r[k.replace("latency/", "int8_speedup/").removesuffix("_ms")] = fp32 / r[k] if fp32 else None
        for k in [k for k in r if k.startswith("latency/") and k.endswith("_ms")]:
            ref = rows[0].get(k)
            r[k.replace("latency/", "vs_first/").removesuffix("_ms")] = r[k] / ref if ref else None
        r["vs_first/macs"] = r["model/macs"] / rows[0]["model/macs"]
    return rows


def deploy_markdown(result: dict) -> str:
    """Per run and runtime: accuracy, fp32 and int8 latency, int8's speed-up over the same
    runtime's fp32; then each run's latency and MACs as a fraction of the first run's."""
    rows = result["rows"]
    batches = sorted({int(k.split("_b")[-1].removesuffix("_ms")) for r in rows for k in r
                      if k.startswith("latency/torch_fp32_b")})
    lines = ["| run | runtime | acc fp32 | acc int8 | " + " | ".join(
        f"b{b} fp32 (ms) | b{b} int8 (ms) | b{b} int8 speed-up" for b in batches) + " |",
        "|---|---|---:|---:|" + "---:|" * (3 * len(batches))]
    for r in rows:
        for label, key, acc, acc8 in RUNTIMES:
            if f"latency/{key}_fp32_b{batches[0]}_ms" not in r:
                continue
            cells = []
            for b in batches:
                cells += [_f(r.get(f"latency/{key}_fp32_b{b}_ms"), ".2f"),
                          _f(r.get(f"latency/{key}_int8_b{b}_ms"), ".2f"),
                          _f(r.get(f"int8_speedup/{key}_int8_b{b}"), ".2f") + ("x" if r.get(f"int8_speedup/{key}_int8_b{b}") else "")]
            lines.append(f"| `{r['run']}` | {label} | {_f(r.get(acc), '.4f')} | "
                         f"{_f(r.get(acc8), '.4f') if acc8 else '-'} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        lines += ["", f"Latency as a fraction of `{rows[0]['run']}`'s on the same runtime and batch "
                  "(MACs: the fraction of its MACs):", "",
                  "| run | MACs | " + " | ".join(f"{label} fp32 b{b} | {label} int8 b{b}"
                                               for label, key, _, _ in RUNTIMES[1:] for b in batches) + " |",
                  "|---|---:|" + "---:|" * (2 * len(batches) * (len(RUNTIMES) - 1))]
        for r in rows[1:]:
            cells = [_f(r.get(f"vs_first/{key}_{kind}_b{b}"), ".3f") for _, key, _, _ in RUNTIMES[1:]
                     for b in batches for kind in ("fp32", "int8")]
            lines.append(f"| `{r['run']}` | {r['vs_first/macs']:.3f} | " + " | ".join(cells) + " |")
    flags = result["machine"].get("cpu_flags") or {}
    lines += [f"- `{r['run']}`: {k.split('_int8/')[0]} int8 does not run: {v}" for r in rows
              for k, v in r.items() if k.endswith("/unsupported")]
    lines += ["", "CPU: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())]
    return "\n".join(lines)

"""The report stage: ``metrics.json`` (flat, namespaced keys) and ``summary.md``.

Built from the stages' artifacts only (never from logs). ``metrics.json`` is written last,
atomically: its presence means the run finished.
"""

from __future__ import annotations

from pathlib import Path

from rsnet.data import DataBundle
from rsnet.train import selection_score
from rsnet.fileio import atomic_write_json, atomic_write_text


def history_metrics(history: list[dict], select_on: str) -> dict:
    """Training summary: epochs, training images seen, mean throughput, time, and the selected
    epoch's validation row (``select_on``: the best value, the lowest for a loss, among the
    selectable epochs: not those before a pruning schedule reached its final sparsity)."""
    if not history:
        return {"train/epochs": 0, "train/images_seen": 0}
    # none selectable: fit kept the last epoch's weights
    selectable = [r for r in history if r.get("train/selectable", 1)] or history[-1:]
    best = max(selectable, key=lambda r: selection_score(r, select_on))
    return {
        "train/epochs": len(history),
        # what a comparison at equal compute counts (images_per_s is seen / epoch_s)
        "train/images_seen": round(sum(r["train/images_per_s"] * r["train/epoch_s"] for r in history)),
        "train/images_per_s": sum(r["train/images_per_s"] for r in history) / len(history),
        "train/time_s": sum(r["train/epoch_s"] for r in history),
        "train/final_loss": history[-1]["train/loss"],
        "val/best_epoch": best["epoch"],
        **{k: v for k, v in best.items() if k.startswith("val/")},
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


ROWS = [("params", "params"), ("MACs", "macs"), ("test acc (top-1)", "test/acc"),
        ("test acc (top-5)", "test/acc5"), ("local acc", "test/acc_local"),
        ("global acc", "test/acc_global"), ("raw acc", "test/acc_raw"),
        ("misc share of test set", "test/misc_share"),
        ("constant-misc global / raw", None), ("sparsity of conv + linear weights", "sparsity/overall"),
        ("latency b1 fp32 (ms)", "latency/torch_fp32_b1_ms")]


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


# the gzip-compressed size (level 9) of a file whose plain size is the key: the zeros of an
# unstructured-sparse model compress, so this is its stored size
GZIP_OF = {"export/onnx_bytes": "export/onnx_gzip_bytes", "int8/bytes": "int8/gzip_bytes"}
RUNTIME_LABELS = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "executorch": "ExecuTorch"}


def _runtimes(metrics: dict) -> list[str]:
    """The deployment runtimes a run measured, ONNX Runtime first."""
    names = {k.split("/")[1].rsplit("_fp32_b", 1)[0] for k in metrics
             if k.startswith("latency/") and "_fp32_b" in k}
    return ["ort"] + sorted(names - {"ort", "torch", "baseline_torch"})


def deployment_lines(metrics: dict) -> list[str]:
    """The export stage's table: PyTorch eager and every runtime's fp32 / int8 (size, accuracy,
    latency), and what int8 gives over the same runtime's fp32."""
    if "export/onnx_bytes" not in metrics:
        return []
    batches = sorted(int(k.split("_b")[1].split("_")[0]) for k in metrics
                     if k.startswith("latency/torch_fp32_b"))
    rows = [("baseline, PyTorch eager fp32", "baseline_torch_fp32", None, None)] \
        if "latency/baseline_torch_fp32_b1_ms" in metrics else []
    rows.append(("PyTorch eager fp32", "torch_fp32", None, "test/acc"))
    int8 = "int8/bytes" in metrics
    for rt in _runtimes(metrics):
        label = RUNTIME_LABELS.get(rt, rt)
        fp32_acc, int8_acc = ("onnx/test/acc", "int8/test/acc") if rt == "ort" else \
            (f"{rt}/test/acc", f"{rt}_int8/test/acc")
        precision = metrics.get(f"{rt}/precision")
        own = f"{rt}/bytes" in metrics  # its own files (ExecuTorch's .pte), else the ONNX ones
        rows.append((f"{label} fp32" + (f" (runs {precision})" if precision else ""),
                     f"{rt}_fp32", f"{rt}/bytes" if own else "export/onnx_bytes", fp32_acc))
        if int8:
            how = "PT2E" if own else metrics["int8/calib_method"]
            rows.append((f"{label} int8 ({how})", f"{rt}_int8",
                         f"{rt}_int8/bytes" if own else "int8/bytes", int8_acc))
    lines = ["", f"## Deployment ({metrics.get('latency/threads')} threads)", "",
             f"ONNX opset {metrics['export/opset']}, verified on {metrics['export/verify_images']:,} "
             f"test images: max |logit difference| {metrics['export/max_abs_diff']:.2e}, top-1 "
             f"agreement {metrics['export/top1_agreement']:.4f}. Latency: median ms per batch. "
             "PyTorch's test acc is the evaluate stage's (in train.precision).", "",
             "| model | file bytes | gzip -9 bytes | test acc | "
             + " | ".join(f"batch {b} (ms)" for b in batches) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(batches)]
    for label, key, size, acc in rows:
        lat = " | ".join(_ms(metrics.get(f"latency/{key}_b{b}_ms")) for b in batches)
        lines.append(f"| {label} | {_fmt(metrics.get(size)) if size else '-'} | "
                     f"{_fmt(metrics.get(GZIP_OF.get(size))) if size else '-'} | "
                     f"{_fmt(metrics.get(acc)) if acc else '-'} | {lat} |")
    lines += _gzip_lines(metrics)
    if int8:
        lines += ["", f"int8: {metrics['int8/size_ratio']:.3f}x the fp32 file, top-1 agreement with "
                  f"fp32 {metrics['int8/top1_agreement']:.4f} on the test set (ONNX Runtime)."]
        for rt in _runtimes(metrics):  # int8 against the same runtime's fp32: a fair speed-up
            ratios = [(b, metrics.get(f"latency/{rt}_fp32_b{b}_ms"), metrics.get(f"latency/{rt}_int8_b{b}_ms"))
                      for b in batches]
            text = ", ".join(f"{f / q:.2f}x at batch {b}" for b, f, q in ratios if f and q)
            if text:
                lines.append(f"- {RUNTIME_LABELS.get(rt, rt)}: int8 speed-up over its own fp32: {text}.")
            if f"{rt}_int8/unsupported" in metrics:
                lines.append(f"- {RUNTIME_LABELS.get(rt, rt)}: the int8 file does not run: "
                             f"{metrics[f'{rt}_int8/unsupported']}")
    return lines


def _gzip_lines(metrics: dict) -> list[str]:
    """What gzip -9 makes of the ONNX files: the zeros of a sparse model compress."""
    ratios = [f"{what} file to {metrics[gz] / metrics[size]:.3f} of its bytes"
              for what, size in (("the fp32", "export/onnx_bytes"), ("the int8", "int8/bytes"))
              if (gz := GZIP_OF[size]) in metrics and metrics.get(size)]
    return ["", "gzip -9 compresses " + " and ".join(ratios) + "."] if ratios else []


OPENSET_ROWS = [("local acc, argmax", "test/acc_local"), ("local acc, calibrated misc", "test/cal/acc_local"),
                ("global acc, calibrated misc", "test/cal/acc_global"),
                ("raw acc, calibrated misc", "test/cal/acc_raw")] + [
    (f"{label} {split}, {score}", f"openset/{split}/{key}_{score}")
    for split in ("seen", "unseen") for label, key in (("AUROC", "auroc"), ("FPR@95TPR", "fpr95"))
    for score in ("misc", "msp", "energy")]


def openset_lines(metrics: dict) -> list[str]:
    """Psi as an N-way model (its C logits mapped onto the N outputs) beside the final model:
    accuracies with the misc threshold calibrated on validation, and misc detection."""
    if "openset/threshold" not in metrics:
        return []
    lines = ["", "## Misc detection (open set)", "",
             f"Misc is decided by the `{metrics['openset/score']}` score above a threshold that keeps "
             f"{metrics['openset/tpr']:.0%} of the in-scope validation images "
             f"({metrics['openset/threshold']:.4g}). AUROC / FPR@95TPR: in-scope test images against "
             "the test split's misc images (seen) and the held-out classes' test images (unseen).", "",
             "| metric | baseline as N-way | final |", "|---|---:|---:|"]
    for label, key in OPENSET_ROWS:
        if key in metrics or f"baseline/mapped/{key}" in metrics:
            lines.append(f"| {label} | {_fmt(metrics.get(f'baseline/mapped/{key}'))} | "
                         f"{_fmt(metrics.get(key))} |")
    return lines


def summary_markdown(metrics: dict, data: DataBundle, history: list[dict]) -> str:
    n, c = data.num_outputs, len(data.base_class_names)
    scope = (f"{n} outputs: {n - 1} classes + misc" if data.misc_label is not None else f"{n} classes")
    lines = [f"# rsnet run `{metrics['run/name']}`", "",
             f"- model: `{metrics['model/name']}`; dataset: `{metrics['dataset/name']}` "
             f"({c} classes); task: {scope}",
             f"- classes: {', '.join(data.class_names)}",
             f"- images train / val / test: {metrics['data/train_images']:,} / "
             f"{metrics['data/val_images']:,} / {metrics['data/test_images']:,}", "",
             "## Baseline vs final model (test set)", "",
             f"The baseline is the loaded {c}-way model: its `test acc` is on the full test set; "
             "local/global/raw are on the subset's test images (method.md section 7).", "",
             f"| metric | baseline ({c}-way) | final ({n}-way) |", "|---|---:|---:|"]
    for label, key in ROWS:
        if key is None:
            b = f"{_fmt(metrics.get('baseline/test/const_misc_global'))} / " \
                f"{_fmt(metrics.get('baseline/test/const_misc_raw'))}"
            f = f"{_fmt(metrics.get('test/const_misc_global'))} / {_fmt(metrics.get('test/const_misc_raw'))}"
        elif key in ("params", "macs"):
            b, f = _fmt(metrics.get(f"baseline/{key}")), _fmt(metrics.get(f"model/{key}"))
        else:
            b, f = _fmt(metrics.get(f"baseline/{key}")), _fmt(metrics.get(key))
        lines.append(f"| {label} | {b} | {f} |")
    if "plan/policy" in metrics:
        lines += ["", "## Width plan", "",
                  f"- policy `{metrics['plan/policy']}`; factors per macro-layer: {metrics['plan/factors']}",
                  f"- predicted params {metrics['plan/params']:,}, MACs {metrics['plan/macs']:,} "
                  f"(built model: {metrics.get('model/params', 0):,} / {metrics.get('model/macs', 0):,})"]
        if "prune/criterion" in metrics:
            lines.append(f"- carved out of the trained baseline: criterion `{metrics['prune/criterion']}`, "
                         f"init `{metrics['prune/init']}`, {metrics['prune/steps']} step(s)")
        else:
            lines.append("- built at the plan's widths and trained from scratch")
        if "plan/budget" in metrics:
            lines.append(f"- budget {metrics['plan/budget']:,.0f} {metrics['plan/budget_unit']}, "
                         f"used {metrics['plan/budget_used']:.2%}; see plan.json")
    lines += openset_lines(metrics)
    lines += deployment_lines(metrics)
    if history:
        lines += ["", f"## Training ({len(history)} epochs, selected epoch "
                  f"{metrics.get('val/best_epoch')} on validation)", "",
                  "| epoch | train loss | train acc | val acc | lr | images/s |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['epoch']} | {r['train/loss']:.4f} | {r['train/acc']:.4f} | "
                  f"{r['val/acc']:.4f} | {r['lr']:.2e} | {r['train/images_per_s']:.0f} |"
                  for r in history]
    return "\n".join(lines) + "\n"


def write(run_dir: Path, metrics: dict, data: DataBundle, history: list[dict]) -> None:
    atomic_write_text(run_dir / "summary.md", summary_markdown(metrics, data, history))
    atomic_write_json(run_dir / "metrics.json", metrics)

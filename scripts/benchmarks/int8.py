"""bench int8: int8 against the same runtime's fp32 on trained models and finished runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from rsnet import progress
from rsnet.data import build_data
from rsnet.errors import RsnetError
from rsnet.models import build_model

from .common import compose_cfg, ort_predictor

INT8_RUNTIMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "executorch": "ExecuTorch"}
REBUILD_ATOL = 1e-3  # a run's rebuilt model against its exported ONNX file (max |logit diff|)


def bench_int8(args) -> dict:
    """int8 on trained models: for the released Psi of each of --experiments (C-way, the full
    test set) and for each finished run directory of --run-dirs (its exported export/model.onnx
    and model_int8.onnx, its own test split), test accuracy of fp32 and int8 on each of
    --runtimes, and batch --latency-batch latency of each, timed in --repeats interleaved
    rounds (2 threads); int8's speed-up over the same runtime's fp32 and its accuracy change.
    ExecuTorch runs its own programs, made from the model the ONNX files hold (post-activation
    BNs folded, as the export stage hands it to every runtime), int8 calibrated on the same
    images as the ONNX int8 file."""
    from rsnet.deploy.fold import fold_post_activation_bn
    from rsnet.deploy.onnx_io import MainLogits, export_onnx
    from rsnet.deploy.quant import quantize_int8

    if not args.experiments and not args.run_dirs:
        raise RsnetError("bench int8: nothing to measure: name --experiments or --run-dirs")
    models = []  # (label, {runtime: {"fp32": path, "int8": path}}, data bundle, input size)
    with tempfile.TemporaryDirectory(prefix="rsnet-bench-int8-") as tmp:
        for experiment in args.experiments:  # Psi as released, quantized as export=int8 does
            cfg = compose_cfg(f"experiment={experiment}", "dataset.num_classes=null",
                              "dataset.unseen_fraction=0")
            data = build_data(cfg.dataset)
            net = fold_post_activation_bn(
                MainLogits(build_model(cfg.model, len(data.base_class_names))).eval())
            size, ex, calib = cfg.model.input_size, cfg.export, _int8_calibration(cfg, data)
            fp32 = export_onnx(net, Path(tmp) / f"{experiment}.onnx", size, fold=False)
            int8 = quantize_int8(fp32, Path(tmp) / f"{experiment}_int8.onnx",
                                 [x.numpy() for x in calib], ex.calib_method, ex.per_channel)
            files = _runtime_files({"fp32": fp32, "int8": int8}, net, size, calib, args, Path(tmp))
            models.append((f"{experiment} Psi ({cfg.model.checkpoint})", files, data, size))
        for k, run_dir in enumerate(map(Path, args.run_dirs)):
            models.append(_run_dir_model(run_dir, Path(tmp) / f"run{k}", args))
        return {"rows": _int8_rows(models, args)}


def _int8_calibration(cfg, data) -> list[torch.Tensor]:
    """The export stage's int8 calibration batches (export.calib_images training images drawn
    with the run's seed, batches of 32): every runtime's int8 sees the same images."""
    from rsnet.data.calibration import calibration_batches

    return [x for x, _ in calibration_batches(data.train, cfg.export.calib_images, data.mean,
                                              data.std, batch_size=32, seed=cfg.seed,
                                              setting="export.calib_images")]


def _runtime_files(onnx: dict[str, Path], net, size: int, calib: list[torch.Tensor], args,
                   out: Path) -> dict[str, dict[str, Path]]:
    """The files each of --runtimes runs for one model: ONNX Runtime and OpenVINO the ONNX
    files ``onnx``; ExecuTorch its own programs, made in ``out`` from ``net`` (the model the
    ONNX files hold) for batches up to --latency-batch, int8 calibrated on ``calib``."""
    from rsnet.deploy.runtimes import ExecuTorch

    files = {}
    for rt in args.runtimes:
        if rt == "executorch":
            out.mkdir(parents=True, exist_ok=True)
            files[rt] = ExecuTorch().files({p: out / f.name for p, f in onnx.items()}, net, size,
                                           args.latency_batch, calib)
        else:
            files[rt] = dict(onnx)
    return files


def _run_dir_model(run_dir: Path, out: Path, args) -> tuple:
    """A finished run's entry of :func:`bench_int8`: its exported ONNX files, and for
    ExecuTorch programs (in ``out``, not in the run directory) made from its rebuilt model."""
    onnx = {"fp32": run_dir / "export" / "model.onnx", "int8": run_dir / "export" / "model_int8.onnx"}
    missing = [str(f) for f in onnx.values() if not f.is_file()]
    if missing:
        raise RsnetError(f"bench int8: {run_dir} has no {', '.join(missing)}: a finished "
                         f"run with export=int8 is needed")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data, size = build_data(cfg.dataset), cfg.model.input_size
    net = rebuilt_run_model(run_dir, cfg, data) if "executorch" in args.runtimes else None
    files = _runtime_files(onnx, net, size, _int8_calibration(cfg, data), args, out)
    scaled = (run_dir / "plan.json").is_file() or (run_dir / "checkpoints" / "pruned.pt").is_file()
    network = "Psi'" if scaled else "full width"  # a plan or a carved structure, or neither
    return f"{cfg.name} {network} ({run_label(run_dir.name)})", files, data, size


def rebuilt_run_model(run_dir: Path, cfg, data) -> torch.nn.Module:
    """The trained model of a finished run as its export stage handed it to every runtime
    (main logits, post-activation BNs folded), rebuilt by :func:`rsnet.stages.runs.trained_run_model`.
    ExecuTorch's programs are made from a torch model, not from the ONNX file, so a rebuild
    that does not give export/model.onnx's logits on a few test images (:func:`_check_rebuild`)
    is refused rather than silently benchmarked."""
    from rsnet.deploy.fold import fold_post_activation_bn
    from rsnet.deploy.onnx_io import MainLogits
    from rsnet.stages.runs import trained_run_model

    net = trained_run_model(run_dir, cfg, data, "bench int8")
    net = fold_post_activation_bn(MainLogits(net).eval())
    _check_rebuild(net, run_dir, data)
    return net


@torch.no_grad()
def _check_rebuild(net: torch.nn.Module, run_dir: Path, data, images: int = 16) -> None:
    """RsnetError unless ``net`` gives the logits of the run's export/model.onnx (ONNX
    Runtime) on its first ``images`` test images within :data:`REBUILD_ATOL`."""
    from rsnet.data.loader import BatchLoader
    from rsnet.deploy.onnx_io import onnx_logits, open_session

    x, _ = next(iter(BatchLoader(data.test, images, data.mean, data.std)))
    diff = (net(x) - onnx_logits(open_session(run_dir / "export" / "model.onnx", 2), [x])).abs().max().item()
    if not diff <= REBUILD_ATOL:  # NaN included
        raise RsnetError(f"bench int8: the model rebuilt from {run_dir} (its config.yaml, plan or "
                         f"pruned structure, checkpoints/model.pt) does not reproduce its "
                         f"export/model.onnx: max |logit diff| {diff:.3g} on {len(x)} test images "
                         f"(allowed {REBUILD_ATOL:g}); its ExecuTorch programs would not be this "
                         f"run's model")


def run_label(dirname: str) -> str:
    """A sweep run directory's name, short: each override's last key (a flag's group for
    ``enabled``), model.checkpoint left out (e.g. ``num_classes=10,recipe=carve,distill=True``)."""
    parts = []
    for item in dirname.split(","):
        key, eq, value = item.partition("=")
        if not eq:  # not an override: a directory named by hand
            parts.append(item)
            continue
        if key == "model.checkpoint":
            continue
        *parents, leaf = key.split(".")
        parts.append(f"{parents[-1] if leaf == 'enabled' and parents else leaf}={value}")
    return ",".join(parts)


def int8_predictor(runtime: str, path: Path, batch_size: int | None = None):
    """``path`` on one of --runtimes with 2 threads; ``batch_size`` fixes the batch where the
    runtime plans for one (OpenVINO, ExecuTorch; an ONNX Runtime session runs any batch)."""
    from rsnet.deploy.runtimes import ExecuTorch, OpenVINO

    if runtime == "ort":
        return ort_predictor(path)
    return {"openvino": OpenVINO, "executorch": ExecuTorch}[runtime]().open(
        path, threads=2, batch_size=batch_size)


def _int8_rows(models, args) -> list[dict]:
    """:func:`bench_int8`'s rows: accuracy per runtime and precision, then interleaved timing.
    A file another runtime cannot run (e.g. an int8 op its backend lacks) is recorded as
    ``<runtime>_<precision>_unsupported`` with None for its numbers and the rest still runs;
    ONNX Runtime, which ran every file at export, failing on one is an error."""
    from rsnet.deploy.runtimes import predict_logits, predictor_latency
    from rsnet.data.loader import BatchLoader
    from rsnet.train import split_metrics

    b, rows, preds = args.latency_batch, [], {}
    for label, files, data, size in progress.bar(models, desc="accuracy"):
        row = {"model": label, "test_images": len(data.test), "outputs": data.num_outputs}
        for rt in args.runtimes:
            for precision, path in files[rt].items():
                try:  # ONNX Runtime's session runs any batch: it is also the timed one
                    pred = int8_predictor(rt, path)
                    preds[(label, rt, precision)] = pred if rt == "ort" else int8_predictor(rt, path, b)
                except RsnetError as e:
                    if rt == "ort":  # the reference runtime ran these files at export: a fault
                        raise
                    row[f"{rt}_{precision}_acc"], row[f"{rt}_{precision}_unsupported"] = None, str(e)
                    continue
                batches = (x for x, _ in BatchLoader(data.test, 250, data.mean, data.std))
                m = split_metrics(predict_logits(pred, batches, 250), data.test, data.misc_label)
                row[f"{rt}_{precision}_acc"] = m["acc"]
                if "acc_local" in m:
                    row[f"{rt}_{precision}_acc_local"] = m["acc_local"]
        rows.append(row)
    times = {k: [] for k in preds}
    sizes = {label: size for label, _, _, size in models}
    for _ in progress.bar(range(args.repeats), desc="latency rounds"):
        for (label, rt, precision), pred in preds.items():
            times[(label, rt, precision)].append(
                predictor_latency(pred, sizes[label], b, runs=20, warmup=3))
    for row in rows:
        for rt in args.runtimes:
            ms = {p: float(np.median(times[(row["model"], rt, p)])) if (row["model"], rt, p) in times
                  else None for p in ("fp32", "int8")}
            row.update({f"{rt}_{p}_b{b}_ms": v for p, v in ms.items()})
            both = None not in ms.values()
            row[f"{rt}_int8_speedup"] = ms["fp32"] / ms["int8"] if both else None
            row[f"{rt}_int8_acc_change"] = row[f"{rt}_int8_acc"] - row[f"{rt}_fp32_acc"] if both else None
    return rows


def int8_markdown(result: dict) -> str:
    """A row per model and runtime ("-" where the runtime cannot run a file, named below)."""
    rows = result["rows"]
    b = next(k for k in rows[0] if "_fp32_b" in k).split("_b")[-1].removesuffix("_ms")
    lines = [f"| model | test images | runtime | fp32 acc | int8 acc | int8 - fp32 (points) | "
             f"fp32 b{b} (ms) | int8 b{b} (ms) | int8 speed-up |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]

    def cell(v, fmt: str, scale: float = 1, unit: str = "") -> str:
        return "-" if v is None else f"{scale * v:{fmt}}{unit}"

    for r in rows:
        for rt, name in INT8_RUNTIMES.items():
            if f"{rt}_fp32_acc" not in r:  # not among the run's --runtimes
                continue
            lines.append(f"| {r['model']} | {r['test_images']:,} | {name} | "
                         f"{cell(r[f'{rt}_fp32_acc'], '.2f', 100, ' %')} | "
                         f"{cell(r[f'{rt}_int8_acc'], '.2f', 100, ' %')} | "
                         f"{cell(r[f'{rt}_int8_acc_change'], '+.2f', 100)} | "
                         f"{cell(r[f'{rt}_fp32_b{b}_ms'], '.2f')} | {cell(r[f'{rt}_int8_b{b}_ms'], '.2f')} | "
                         f"{cell(r[f'{rt}_int8_speedup'], '.2f', unit='x')} |")
    notes = [f"- {r['model']}: {INT8_RUNTIMES[k.split('_')[0]]} cannot run its {k.split('_')[1]} "
             f"file: {v}" for r in rows for k, v in r.items() if k.endswith("_unsupported")]
    return "\n".join(lines + ([""] + notes if notes else []))

"""Stage export: ONNX (verified against PyTorch), ONNX Runtime accuracy, calibrated int8,
latency of PyTorch eager and ONNX Runtime (export/, export_metrics.json)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Protocol

import torch
from hydra.utils import instantiate

from rsnet.data import DataBundle
from rsnet.data.loader import BatchLoader
from rsnet.deploy import export_onnx, gzip_bytes, onnx_logits, open_session, quantize_int8
from rsnet.deploy.fold import fold_post_activation_bn
from rsnet.deploy.onnx_io import MainLogits
from rsnet.deploy.runtimes import DeployRuntime, predict_logits, predictor_latency
from rsnet.errors import RsnetError
from rsnet.metrics import measure_latency, session_latency
from rsnet.data.calibration import calibration_batches
from rsnet.stages.context import Context, cached_json
from rsnet.train import split_metrics

log = logging.getLogger(__name__)


def _split_batches(data: DataBundle, split: str, batch_size: int):
    """Normalised fp32 CPU batches of a split, in order, without augmentation."""
    return (x for x, _ in BatchLoader(getattr(data, split), batch_size, data.mean, data.std))


class Exporter(Protocol):
    """A deployment export: conf/export/<name>.yaml names it by ``exporter._target_`` (none:
    no exporter). ``export`` writes its files under export/ and returns flat metrics."""

    def export(self, ctx: Context, threshold: float | None) -> dict: ...


class OnnxExport:
    """export=onnx / int8: :func:`export`."""

    def export(self, ctx: Context, threshold: float | None) -> dict:
        return export(ctx, threshold)


def run(ctx: Context) -> None:
    ex = ctx.cfg.export.exporter
    if ex is not None:
        exporter: Exporter = instantiate(ex)
        ctx.metrics.update(cached_json(
            ctx.run_dir / "export_metrics.json",
            lambda: exporter.export(ctx, ctx.metrics.get("openset/threshold"))))


def export(ctx: Context, threshold: float | None = None) -> dict:
    """ONNX export (export/model.onnx), verified against PyTorch fp32 on seeded test images;
    test accuracy with ONNX Runtime; with ``export.int8`` the calibrated int8 model
    (export/model_int8.onnx) and its accuracy and agreement; the files' sizes, plain and
    gzip-compressed (level 9: what an unstructured-sparse model's zeros save in storage);
    latency of PyTorch eager fp32 and ONNX Runtime fp32 / int8 at
    ``export.latency.batch_sizes`` with a fixed thread count, and of the trained baseline in
    PyTorch eager fp32 beside them (``latency/baseline_...``).
    Every runtime of ``export.runtimes`` (e.g. OpenVINO) is verified, evaluated and timed on
    the same files the same way (:func:`runtime_metrics`).
    The misc threshold calibrated on validation (``threshold``) travels in the files' metadata,
    so a deployed model says misc as the evaluation did.
    """
    cfg, model, data = ctx.cfg, ctx.model, ctx.data
    ex = cfg.export
    out_dir = ctx.run_dir / "export"
    net = MainLogits(copy.deepcopy(model)).float().cpu().eval().to(memory_format=torch.contiguous_format)
    size, lat = cfg.model.input_size, ex.latency
    # PyTorch first: ONNX Runtime's idle thread pools would compete with it
    torch_latency = {"latency/threads": lat.threads, **_torch_latency(net, size, lat, "torch")}
    if ctx.baseline is not None:  # Psi in the same runtime, threads and batch sizes
        base = MainLogits(copy.deepcopy(ctx.baseline)).float().cpu().eval()
        torch_latency.update(_torch_latency(base, size, lat, "baseline_torch"))
    meta = {"class_names": data.class_names, "misc_label": data.misc_label, "input_size": size,
            "mean": list(data.mean), "std": list(data.std), "model": cfg.model.name,
            "dataset": cfg.dataset.name, "run": cfg.name}
    if cfg.dataset.resize_size or cfg.dataset.interpolation:  # torchvision's resize and crop
        meta.update({"resize_size": cfg.dataset.resize_size,
                     "interpolation": cfg.dataset.interpolation})
    if threshold is not None:
        meta.update({"misc_score": cfg.openset.score, "misc_threshold": threshold})
    # what every deployed file holds: post-activation BNs folded (exact; verified against net)
    deployed = fold_post_activation_bn(net)
    fp32 = export_onnx(deployed, out_dir / "model.onnx", size, ex.opset, ex.dynamic_batch, meta,
                       compact=ex.compact, fold=False)
    session = open_session(fp32, ex.latency.threads)
    # verification: PyTorch fp32 and ONNX Runtime on the same seeded test images
    batches = calibration_batches(data.test, ex.verify_images, data.mean, data.std,
                                  batch_size=ex.eval_batch_size, seed=cfg.seed,
                                  setting="export.verify_images")
    verify_x = [x for x, _ in batches]
    with torch.no_grad():
        ref = torch.cat([net(x) for x in verify_x])
    out = {"export/format": "onnx", "export/opset": ex.opset, "export/verify_images": len(ref),
           "export/onnx_bytes": fp32.stat().st_size, "export/onnx_gzip_bytes": gzip_bytes(fp32)}
    try:
        out.update(_verified("the ONNX export", ref, onnx_logits(session, verify_x), ex, "export"))
    except RsnetError:
        fp32.unlink()
        raise
    fp32_test = onnx_logits(session, _split_batches(data, "test", ex.eval_batch_size))
    out.update({f"onnx/test/{k}": v for k, v in
                split_metrics(fp32_test, data.test, data.misc_label).items()})
    sessions = {"fp32": session}
    files, calib_x = {"fp32": fp32}, None
    if ex.int8:
        calib = calibration_batches(data.train, ex.calib_images, data.mean, data.std,
                                    batch_size=32, seed=cfg.seed, setting="export.calib_images")
        int8 = quantize_int8(fp32, out_dir / "model_int8.onnx", [x.numpy() for x, _ in calib],
                             ex.calib_method, ex.per_channel, ex.compact)
        files["int8"], calib_x = int8, [x for x, _ in calib]
        sessions["int8"] = open_session(int8, ex.latency.threads)
        int8_test = onnx_logits(sessions["int8"], _split_batches(data, "test", ex.eval_batch_size))
        out.update({f"int8/test/{k}": v for k, v in
                    split_metrics(int8_test, data.test, data.misc_label).items()})
        out.update({"int8/top1_agreement": (int8_test.argmax(1) == fp32_test.argmax(1)).double().mean().item(),
                    "int8/bytes": int8.stat().st_size, "int8/gzip_bytes": gzip_bytes(int8),
                    "int8/size_ratio": int8.stat().st_size / fp32.stat().st_size,
                    "int8/calib_method": ex.calib_method, "int8/calib_images": ex.calib_images,
                    "int8/per_channel": ex.per_channel})
    for b in lat.batch_sizes:
        for kind, sess in sessions.items():
            out[f"latency/ort_{kind}_b{b}_ms"] = session_latency(sess, size, b, lat.runs, lat.warmup)
    del sessions, session  # their thread pools would compete with the next runtime's
    for spec in (ex.runtimes or {}).values():
        runtime: DeployRuntime = instantiate(spec)
        # ONNX, or its own format planned for the largest timed batch
        own = runtime.files(files, deployed, size, max(lat.batch_sizes), calib_x)
        out.update(runtime_metrics(runtime, own, ref, verify_x, data, size, ex))
    return {**out, **torch_latency}


def _torch_latency(net: torch.nn.Module, size: int, lat, key: str) -> dict:
    return {f"latency/{key}_fp32_b{b}_ms": measure_latency(net, size, b, lat.runs, lat.warmup,
                                                            threads=lat.threads)
            for b in lat.batch_sizes}


def _verified(what: str, ref: torch.Tensor, got: torch.Tensor, ex, prefix: str,
              consequence: str = "the file was removed") -> dict:
    """``{prefix}/max_abs_diff`` and ``{prefix}/top1_agreement`` of ``got`` against PyTorch's
    ``ref``; an RsnetError when they miss export.atol / export.min_agreement."""
    diff = (ref - got).abs().max().item()
    agree = (ref.argmax(1) == got.argmax(1)).double().mean().item()
    if diff > ex.atol or agree < ex.min_agreement:
        raise RsnetError(f"{what} disagrees with PyTorch on {len(ref)} test images: max "
                         f"|logit diff| {diff:.3g} (export.atol={ex.atol}), top-1 agreement "
                         f"{agree:.4f} (export.min_agreement={ex.min_agreement}); {consequence}. "
                         f"Loosen those settings only if you trust the difference")
    return {f"{prefix}/max_abs_diff": diff, f"{prefix}/top1_agreement": agree}


def runtime_metrics(runtime: DeployRuntime, files: dict[str, Path], ref: torch.Tensor,
                    verify_x: list[torch.Tensor], data: DataBundle, size: int, ex) -> dict:
    """One deployment runtime on its files (``{"fp32": path, "int8": path}``): fp32 verified
    against PyTorch like the ONNX export, test metrics of each file, int8's top-1 agreement
    with the runtime's own fp32, latency at every batch size with the same threads, and the
    size of files in the runtime's own format. Keys: ``<name>/...``, ``<name>_int8/...``,
    ``latency/<name>_{fp32,int8}_b<B>_ms``."""
    name, threads, lat = runtime.name, ex.latency.threads, ex.latency
    chunk = max(lat.batch_sizes)  # no runtime is asked for more images at once
    fp32 = runtime.open(files["fp32"], threads)
    out = {f"{name}/precision": fp32.info.get("precision")}
    own_format = files["fp32"].suffix != ".onnx"
    try:
        out.update(_verified(
            f"{name} running {files['fp32'].name}", ref, predict_logits(fp32, verify_x, chunk), ex, name,
            "its files were removed" if own_format else
            f"the file passed ONNX Runtime's check, so it stays; drop {name} from "
            f"export/runtimes to deploy without it"))
    except RsnetError:
        if own_format:
            for path in files.values():
                path.unlink(missing_ok=True)
        raise
    tests = {}
    for kind, path in files.items():
        try:
            pred = fp32 if kind == "fp32" else runtime.open(path, threads)
        except RsnetError as e:  # e.g. an int8 op its backend lacks: the fp32 results stand
            log.warning("%s cannot run %s: %s", name, path.name, e)
            if own_format:
                path.unlink(missing_ok=True)
            out[f"{name}_{kind}/unsupported"] = str(e)
            continue
        tests[kind] = predict_logits(pred, _split_batches(data, "test", ex.eval_batch_size), chunk)
        key = name if kind == "fp32" else f"{name}_{kind}"
        if path.suffix != ".onnx":  # its own format (the ONNX files' sizes are export/*)
            out[f"{key}/bytes"] = path.stat().st_size
        out.update({f"{key}/test/{k}": v for k, v in
                    split_metrics(tests[kind], data.test, data.misc_label).items()})
        for b in lat.batch_sizes:  # a static batch: the shape the runtime plans for
            out[f"latency/{name}_{kind}_b{b}_ms"] = predictor_latency(
                runtime.open(path, threads, b), size, b, lat.runs, lat.warmup)
    if "int8" in tests:
        out[f"{name}_int8/top1_agreement"] = \
            (tests["int8"].argmax(1) == tests["fp32"].argmax(1)).double().mean().item()
    return out

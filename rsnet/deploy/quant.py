"""Static post-training int8 quantization with ONNX Runtime (QDQ format).

Weights int8 (per channel by default, symmetric), activations uint8 with ranges calibrated on
sample batches. The fp32 model is first prepared with ORT's ``quant_pre_process`` (shape
inference and graph optimisation, e.g. folding BN into convolutions), as ORT recommends.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from rsnet.deploy.onnx_io import compact_names, quiet_loggers, save_model, strip_debug_info
from rsnet.errors import RsnetError

CALIB_METHODS = ("minmax", "entropy", "percentile", "distribution")


@contextmanager
def _tempdir(path: str):
    """Python's default temporary folder set to ``path`` for the block (restored after)."""
    before = tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield
    finally:
        tempfile.tempdir = before


def unshare_initializers(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` in which no initializer feeds two node inputs, or None if none does.

    The exporter shares equal constants between layers (a fresh BatchNorm's weight and running
    variance are all ones, its bias and mean all zeros), and ORT's quantizer then fails on a
    shared tensor ("Input tensor must have at least 3 dimensions")."""
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                uses[name] = uses.get(name, 0) + 1
    if all(n <= 1 for n in uses.values()):
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    seen: dict[str, int] = {}
    for node in copy.graph.node:
        for k, name in enumerate(node.input):
            if uses.get(name, 0) > 1:
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1:  # every use after the first gets its own copy
                    clone = onnx.TensorProto()
                    clone.CopyFrom(inits[name])
                    clone.name = f"{name}_use{seen[name]}"
                    copy.graph.initializer.append(clone)
                    node.input[k] = clone.name
    return copy


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib: Sequence[np.ndarray],
                  method: str = "minmax", per_channel: bool = True, compact: bool = True) -> Path:
    """Write the int8 version of ``fp32_path`` to ``out_path``, calibrated on ``calib`` batches.

    ``method``: minmax (ranges seen), entropy (KL-optimal thresholds), percentile (99.999th
    percentile of |x|) or distribution. ORT holds all calibration activations in memory, so
    keep the calibration set modest (hundreds of images). The fp32 model's
    ``rsnet.*`` metadata is carried over.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if method not in methods:
        raise RsnetError(f"export.calib_method={method!r}: use one of {', '.join(CALIB_METHODS)}")
    if not calib:
        raise RsnetError("int8 calibration needs images: set export.calib_images > 0")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    source = onnx.load(str(fp32_path))
    unshared = unshare_initializers(source)
    input_name = source.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib)

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, np.float32)}

    # temporary work beside the result (the run directory), never in /tmp: what a killed run
    # leaves there is removed by the next attempt
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_path.parent.glob(".rsnet-quant-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".rsnet-quant-", dir=out_path.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # ONNX Runtime's own temporary files (the calibration's augmented model) go there too
        with quiet_loggers("onnxruntime", "root"), _tempdir(tmp):
            if unshared:  # quantize a copy whose constants are one per use
                fp32_path = Path(tmp) / "unshared.onnx"
                onnx.save(unshared, str(fp32_path))
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method])
        model = onnx.load(str(quantized))
    strip_debug_info(model)
    if compact:
        compact_names(model)
    del model.metadata_props[:]  # the quantizer's own notes; keep the source model's
    model.metadata_props.extend(source.metadata_props)
    save_model(model, out_path)
    return out_path

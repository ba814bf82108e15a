"""Deployment runtimes that run rsnet's exported ONNX files (fp32 and QDQ int8) on the CPU.

ONNX Runtime is the reference (the export is verified with it, rsnet.deploy.onnx_io); the
others are chosen by ``export/runtimes=[openvino]`` (conf/export/runtimes/, one YAML file and
one class here each) and measured beside it with the same images, thread count and batch
sizes. A runtime is an object with the :class:`DeployRuntime` protocol: ``open(path, threads,
batch_size)`` returns a :class:`Predictor`, a callable from a normalised float32 batch
``(n, 3, S, S)`` to its logits ``(n, classes)``.

- :class:`OpenVINO`: Intel's CPU runtime (``pip install -e ".[openvino]"``) reading the ONNX
  file directly; ``precision`` is its inference precision hint (``f32``; OpenVINO's own
  default on AMX CPUs is ``bf16``), the precision it actually runs is reported
  (``Predictor.info``). The QDQ int8 file runs on its int8 kernels.
- :class:`ExecuTorch`: PyTorch's runtime for phones and embedded boards
  (``pip install -e ".[executorch]"``), run here through its Python bindings. It has its own
  files (``files``): ``model.pte`` lowered to the XNNPACK backend from the PyTorch model
  (torch.export, dynamic batch), and ``model_int8.pte`` quantized with PT2E and XNNPACK's
  quantizer (int8 per-channel weights, int8 activations calibrated on the same images as
  ONNX Runtime's int8).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from rsnet.errors import RsnetError
from rsnet.metrics import median_ms

__all__ = ["DeployRuntime", "Predictor", "OpenVINO", "ExecuTorch", "predict_logits",
           "predictor_latency", "require"]


@dataclass
class Predictor:
    """A loaded model: ``predictor(x)`` gives the logits of a normalised float32 batch."""
    run: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)  # e.g. the precision the runtime runs in

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, np.float32))


class DeployRuntime(Protocol):
    name: str  # in the metric keys: latency/<name>_fp32_b1_ms, <name>/test/acc, ...

    def files(self, onnx: dict[str, Path], net: nn.Module, input_size: int, max_batch: int,
              calib: list[torch.Tensor] | None) -> dict[str, Path]:
        """The files this runtime runs, ``{"fp32": path, "int8": path}`` (int8 only with
        ``calib``): the exported ONNX files ``onnx``, or its own made from ``net`` (fp32,
        eval mode) next to them, for batches of up to ``max_batch`` images."""

    def open(self, path: Path, threads: int, batch_size: int | None = None) -> Predictor:
        """The model at ``path`` on ``threads`` threads; ``batch_size`` fixes the batch
        (a static shape, for timing) where the runtime gains from it."""

    def file_for(self, onnx_path: Path) -> Path:
        """The file this runtime runs for an exported ONNX file (written beside it)."""


class _OnnxConsumer:
    """A runtime that runs the exported ONNX files themselves."""

    def files(self, onnx, net, input_size, max_batch, calib):
        return dict(onnx)

    def file_for(self, onnx_path: Path) -> Path:
        return Path(onnx_path)


def require(module: str, runtime: str, extra: str):
    """``import module``, or an RsnetError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RsnetError(f"the {runtime} runtime needs the {module!r} package, which is not "
                         f"installed: pip install -e \".[{extra}]\" (or drop {runtime} from "
                         f"export/runtimes)") from e


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise RsnetError(f"ONNX model {path} not found: export one with export=onnx or export=int8 "
                         f"(written to <run dir>/export/)")
    return path


@dataclass(frozen=True)
class OpenVINO(_OnnxConsumer):
    """OpenVINO's CPU plugin on the exported ONNX file."""
    precision: str = "f32"  # INFERENCE_PRECISION_HINT: f32 | bf16 | f16
    name: str = "openvino"

    def open(self, path: Path, threads: int, batch_size: int | None = None) -> Predictor:
        ov = require("openvino", self.name, "openvino")
        path = _check_file(path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
            if batch_size is not None:
                shape = list(model.input(0).get_partial_shape())
                model.reshape([batch_size, *[d.get_length() for d in shape[1:]]])
            compiled = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision})
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise RsnetError(f"OpenVINO cannot run {path} ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:200]}); re-export it") from e
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            return request.infer({0: x})[compiled.output(0)].copy()

        precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        return Predictor(run, {"precision": precision.get_type_name()})


_EXECUTORCH_THREADS: int | None = None  # what ExecuTorch's thread pool was last set to


@dataclass(frozen=True)
class ExecuTorch:
    """ExecuTorch with the XNNPACK backend, on ``.pte`` files it builds from the model,
    planned for batches of up to ``max_batch`` images (or the largest batch asked for);
    larger inputs run in chunks of ``max_batch``."""
    max_batch: int = 32
    name: str = "executorch"

    def files(self, onnx, net, input_size, max_batch, calib):
        require("executorch", self.name, "executorch")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        # the example at the largest batch (ExecuTorch plans its buffers from the example), a
        # number unlike the other sizes (an equal one would be traced as the same symbol)
        batch = max(2, max_batch, self.max_batch)
        while batch in (3, input_size):
            batch += 1
        x = torch.zeros(batch, 3, input_size, input_size)
        shapes = ({0: torch.export.Dim("batch", min=1, max=batch)},)

        def lower(model: nn.Module, path: Path) -> Path:
            program = torch.export.export(model, (x,), dynamic_shapes=shapes)
            path.write_bytes(to_edge_transform_and_lower(
                program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
            return path

        with torch.no_grad():
            files = {"fp32": lower(net, self.file_for(onnx["fp32"]))}
            if calib is not None:
                files["int8"] = lower(self._quantized(net, x, shapes, calib),
                                      self.file_for(onnx["int8"]))
        return files

    def file_for(self, onnx_path: Path) -> Path:
        return Path(onnx_path).with_suffix(".pte")  # model.pte, model_int8.pte

    @staticmethod
    def _quantized(net: nn.Module, x: torch.Tensor, shapes, calib: list[torch.Tensor]) -> nn.Module:
        """PT2E static quantization for XNNPACK: per-channel int8 weights, int8 activations."""
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(net, (x,), dynamic_shapes=shapes).module(),
                                quantizer)
        for batch in calib:
            prepared(batch)
        return convert_pt2e(prepared)

    def open(self, path: Path, threads: int, batch_size: int | None = None) -> Predictor:
        require("executorch", self.name, "executorch")
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        path = Path(path)
        if not path.is_file():
            raise RsnetError(f"ExecuTorch program {path} not found: export one with "
                             f"export/runtimes=[executorch] (written to <run dir>/export/)")
        try:
            method = Runtime.get().load_program(path).load_method("forward")
        except Exception as e:  # noqa: BLE001 - the bindings raise RuntimeError and others
            raise RsnetError(f"ExecuTorch cannot load {path} ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0][:200]}); re-export it, or, if "
                             f"it was just exported, its backend cannot run this model") from e
        global _EXECUTORCH_THREADS
        if _EXECUTORCH_THREADS != int(threads):
            # XNNPACK's process-wide thread pool; the reset frees the old pool under any method
            # already loaded (a second reset with methods alive crashed the process), so it
            # happens only when the count changes: once per process in rsnet
            _unsafe_reset_threadpool(int(threads))
            _EXECUTORCH_THREADS = int(threads)
        step = max(self.max_batch, batch_size or 0)  # a timed batch runs whole

        def execute(x: np.ndarray) -> np.ndarray:
            # the output lives in the method's planned memory, reused by its next run: copy it
            # (kept as a view, it corrupted the heap a few runs later)
            return method.execute([torch.from_numpy(x)])[0].clone().numpy()

        def run(x: np.ndarray) -> np.ndarray:
            return np.concatenate([execute(x[i:i + step]) for i in range(0, len(x), step)])

        return Predictor(run, {"precision": "f32"})


def predict_logits(predictor: Predictor, batches: Iterable[torch.Tensor | np.ndarray],
                   chunk: int | None = None) -> torch.Tensor:
    """Logits (float32, CPU) of ``predictor`` on normalised input batches, concatenated;
    ``chunk`` splits larger batches (a runtime planned for at most that many images)."""
    out = []
    for x in batches:
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        step = chunk or len(x)
        out += [torch.from_numpy(predictor(x[i:i + step])) for i in range(0, len(x), step)]
    return torch.cat(out)


def predictor_latency(predictor: Predictor, input_size: int, batch_size: int, runs: int,
                      warmup: int, channels: int = 3) -> float:
    """Median milliseconds of one run of ``predictor`` on a random batch."""
    x = np.random.default_rng(0).standard_normal((batch_size, channels, input_size, input_size),
                                                 dtype=np.float32)
    return median_ms(lambda: predictor(x), runs, warmup)

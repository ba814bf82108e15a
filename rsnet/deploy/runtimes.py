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
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from rsnet.errors import RsnetError
from rsnet.metrics import median_ms

__all__ = ["DeployRuntime", "Predictor", "OpenVINO", "predict_logits", "predictor_latency",
           "require"]


@dataclass
class Predictor:
    """A loaded model: ``predictor(x)`` gives the logits of a normalised float32 batch."""
    run: Callable[[np.ndarray], np.ndarray]
    info: dict = field(default_factory=dict)  # e.g. the precision the runtime runs in

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(np.ascontiguousarray(x, np.float32))


class DeployRuntime(Protocol):
    name: str  # in the metric keys: latency/<name>_fp32_b1_ms, <name>/test/acc, ...

    def open(self, path: Path, threads: int, batch_size: int | None = None) -> Predictor:
        """The model at ``path`` on ``threads`` threads; ``batch_size`` fixes the batch
        (a static shape, for timing) where the runtime gains from it."""


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
class OpenVINO:
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


def predict_logits(predictor: Predictor, batches: Iterable[torch.Tensor | np.ndarray]
                   ) -> torch.Tensor:
    """Logits (float32, CPU) of ``predictor`` on normalised input batches, concatenated."""
    return torch.cat([torch.from_numpy(predictor(x.numpy() if isinstance(x, torch.Tensor) else x))
                      for x in batches])


def predictor_latency(predictor: Predictor, input_size: int, batch_size: int, runs: int,
                      warmup: int, channels: int = 3) -> float:
    """Median milliseconds of one run of ``predictor`` on a random batch."""
    x = np.random.default_rng(0).standard_normal((batch_size, channels, input_size, input_size),
                                                 dtype=np.float32)
    return median_ms(lambda: predictor(x), runs, warmup)

"""Classify image files with a model exported by rsnet (ONNX Runtime on the CPU, or another
deployment runtime of rsnet.deploy.runtimes with ``--runtime``).

    rsnet-classify outputs/runs/<run>/export/model_int8.onnx photo1.jpg photo2.png --top 3
    rsnet-classify --runtime openvino MODEL.onnx IMAGE [IMAGE ...]
    python -m rsnet.deploy.classify MODEL.onnx IMAGE [IMAGE ...]

The model file carries its class names (the misc class, when the model has one, is named
``misc``: "none of the classes this model was sized for"), input size and normalisation, so
nothing else is needed. A model with a misc class also carries the misc threshold calibrated
on validation (rsnet/openset.py): an image whose out-of-scope score exceeds it is answered
``misc``, else its most likely in-scope class (``--argmax`` answers by plain argmax instead). Images are decoded as in training: shorter side resized to the
input size (or to the ``resize_size`` the model carries), centre crop, RGB.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rsnet.data.sources import ImageSize, decode_image
from rsnet.deploy.onnx_io import open_session, read_metadata
from rsnet.deploy.runtimes import DeployRuntime, ExecuTorch, OpenVINO
from rsnet.errors import RsnetError
from rsnet.openset import decide

REQUIRED = ("class_names", "input_size", "mean", "std")
# --runtime: None = ONNX Runtime
RUNTIMES = {"ort": None, "openvino": OpenVINO(), "executorch": ExecuTorch()}


class Classifier:
    """An exported rsnet model, ready to classify images.

    >>> clf = Classifier("export/model_int8.onnx")
    >>> clf.classify(["cat.jpg"], top=2)  # [[("cat", 0.91), ("misc", 0.05)]]
    >>> Classifier("export/model_int8.onnx", runtime=OpenVINO())  # on OpenVINO instead

    The metadata is read from the ONNX file with ONNX Runtime whichever runtime then runs
    the model: OpenVINO runs that file, ExecuTorch the ``.pte`` program exported beside it
    (model.pte for model.onnx, model_int8.pte for model_int8.onnx).
    """

    def __init__(self, path: str | Path, threads: int | None = None, use_threshold: bool = True,
                 runtime: DeployRuntime | None = None):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        meta = read_metadata(self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.predictor = None if runtime is None else \
            runtime.open(runtime.file_for(self.path), threads or 1)
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise RsnetError(f"{self.path} carries no rsnet metadata ({', '.join(missing)} missing): "
                             f"use a model exported by rsnet (export=onnx or export=int8)")
        self.class_names: list[str] = meta["class_names"]
        self.misc_label: int | None = meta.get("misc_label")
        self.input_size: int = int(meta["input_size"])
        self.image_size = ImageSize(self.input_size, meta.get("resize_size"), meta.get("interpolation"))
        self.mean = np.asarray(meta["mean"], np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(meta["std"], np.float32).reshape(1, -1, 1, 1)
        # the calibrated misc decision (absent in models without misc or exported before it)
        self.misc_score: str | None = meta.get("misc_score") if use_threshold else None
        self.misc_threshold: float | None = meta.get("misc_threshold") if use_threshold else None

    def preprocess(self, files: Sequence[str | Path]) -> np.ndarray:
        """(n, 3, S, S) float32, normalised as in training."""
        images = []
        for f in files:
            try:
                images.append(decode_image(Path(f), self.image_size))
            except Exception as e:  # noqa: BLE001 - PIL raises many types
                raise RsnetError(f"cannot read image {f} ({type(e).__name__}: {e})") from e
        x = np.stack(images).astype(np.float32) / 255.0
        return (x - self.mean) / self.std

    def logits(self, files: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """The model's logits (n, classes) for image files."""
        out = [self._run(self.preprocess(files[i:i + batch_size]))
               for i in range(0, len(files), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.predictor is not None:
            return self.predictor(x)
        return self.session.run(None, {self.input_name: x})[0]

    @staticmethod
    def _softmax(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def probabilities(self, files: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        """Softmax probabilities (n, classes) for image files."""
        return self._softmax(self.logits(files, batch_size))

    def decisions(self, logits: np.ndarray) -> np.ndarray:
        """(n,) answered labels: the calibrated misc decision where the model carries one,
        else the argmax."""
        if self.misc_threshold is None or self.misc_label is None:
            return logits.argmax(1)
        return decide(torch.from_numpy(logits), self.misc_label, self.misc_score or "misc",
                      float(self.misc_threshold)).numpy()

    def classify(self, files: Sequence[str | Path], top: int = 1) -> list[list[tuple[str, float]]]:
        """Per file, the answer first, then the next most likely classes: ``top`` (class name,
        probability) pairs."""
        logits = self.logits(files)
        probs, answers = self._softmax(logits), self.decisions(logits)
        out = []
        for p, a in zip(probs, answers):
            rest = [j for j in np.argsort(-p) if j != a][:top - 1]
            out.append([(self.class_names[j], float(p[j])) for j in [int(a), *rest]])
        return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsnet-classify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an ONNX file exported by rsnet (fp32 or int8)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=1, help="classes to show per image")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads")
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="ort",
                   help="the runtime that runs the model (openvino: pip install -e \".[openvino]\")")
    p.add_argument("--argmax", action="store_true",
                   help="answer by plain argmax, ignoring the calibrated misc threshold")
    args = p.parse_args(argv)
    if args.top < 1:
        p.error(f"--top {args.top}: give at least 1")
    try:
        clf = Classifier(args.model, args.threads, use_threshold=not args.argmax,
                         runtime=RUNTIMES[args.runtime])
        results = clf.classify(args.images, args.top)
    except RsnetError as e:
        print(f"rsnet error: {e}", file=sys.stderr)
        return 2
    for f, res in zip(args.images, results):
        print(f"{f}\t" + "\t".join(f"{name} {prob:.3f}" for name, prob in res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ONNX export of a PyTorch classifier, and reading it back with ONNX Runtime.

The exported file is self-describing: its ``metadata_props`` hold what a user needs to
classify images with it (class names, misc label, input size, normalisation), so a deployed
model is one file. The exporter's debug metadata (per-node stack traces with local paths)
is removed before saving.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from rsnet.deploy.fold import fold_post_activation_bn
from rsnet.errors import RsnetError

log = logging.getLogger(__name__)

META_PREFIX = "rsnet."
# Above this many bytes of weights a model goes to ONNX's external-data format (the protobuf
# limit of a single file is 2 GiB).
SINGLE_FILE_LIMIT = 1_800_000_000


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.WARNING):
    """Raise the level of chatty third-party loggers (onnx_ir, onnxscript, ORT) for a block."""
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, lvl in zip(loggers, before):
            lg.setLevel(lvl)


class MainLogits(nn.Module):
    """The model's main logits only (drops auxiliary heads should a model return a tuple)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


def strip_debug_info(model: onnx.ModelProto) -> None:
    """Drop per-node doc strings and metadata (torch.onnx writes stack traces there)."""
    for node in model.graph.node:
        node.ClearField("doc_string")
        node.ClearField("metadata_props")


def compact_names(model: onnx.ModelProto) -> None:
    """Rename every internal tensor to a short id (``t0``, ``t1``, ...) and drop node names.

    The graph's inputs and outputs keep their names. Saves the bytes that long names cost:
    a few percent of an fp32 file and about a tenth of an int8 QDQ file, whose quantize /
    dequantize nodes repeat each weight's name several times.
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        node.name = ""
    for info in graph.value_info:
        info.name = short(info.name)


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, object]) -> None:
    """Store ``metadata`` (JSON-encoded values) under ``rsnet.<key>`` in the model's properties."""
    keep = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in metadata.items():
        model.metadata_props.add(key=META_PREFIX + key, value=json.dumps(value))


def save_model(model: onnx.ModelProto, path: Path, external: bool = False) -> None:
    """Check and save (atomically for single files)."""
    onnx.checker.check_model(model, full_check=not external)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
        return
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)


def export_onnx(model: nn.Module, path: str | Path, input_size: int, opset: int = 18,
                dynamic_batch: bool = True, metadata: Mapping[str, object] | None = None,
                channels: int = 3, compact: bool = True, fold: bool = True) -> Path:
    """Export ``model`` (eval mode, fp32, CPU) to ``path`` with torch.onnx's dynamo exporter.

    Input ``input`` (batch, channels, input_size, input_size) float32, normalised as in
    training; output ``logits``. The batch dimension is dynamic unless ``dynamic_batch`` is
    false. One file unless the weights exceed :data:`SINGLE_FILE_LIMIT`. ``compact``
    shortens internal tensor names (:func:`compact_names`). ``fold`` first folds BatchNorms
    that follow an activation into their convolutions (exact; on a copy:
    :mod:`rsnet.deploy.fold`), so an int8 graph has no float islands there.
    """
    path = Path(path)
    if fold:
        model = fold_post_activation_bn(model.eval())
    net = MainLogits(model).eval().float().cpu().to(memory_format=torch.contiguous_format)
    example = (torch.zeros(2, channels, input_size, input_size),)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    external = sum(p.numel() * p.element_size() for p in net.parameters()) > SINGLE_FILE_LIMIT
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out, torch.no_grad(), \
                quiet_loggers("onnx_ir", "onnxscript", "torch.onnx"):
            program = torch.onnx.export(net, example, dynamo=True, opset_version=opset,
                                        dynamic_shapes=dynamic, input_names=["input"],
                                        output_names=["logits"], verbose=False)
        log.debug("torch.onnx: %s", out.getvalue())
        proto = program.model_proto
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise RsnetError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                         f"set export=none to skip the export stage") from e
    strip_debug_info(proto)
    if compact:
        compact_names(proto)
    set_metadata(proto, metadata or {})
    save_model(proto, path, external)
    return path


def gzip_bytes(path: str | Path) -> int:
    """Bytes of ``path`` compressed with gzip at level 9 (its header's time zeroed, so the
    size depends on the content alone): the stored size of a model whose zeros compress, e.g.
    an unstructured-sparse one. Only this file: a ``.data`` file of external weights is not
    counted (as in ``export/onnx_bytes``)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def open_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path``; a missing or corrupt file is an RsnetError."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise RsnetError(f"ONNX model {path} not found: export one with export=onnx or export=int8 "
                         f"(written to <run dir>/export/)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise RsnetError(f"{path} is not a readable ONNX model ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200]}); re-export it") from e


def read_metadata(session) -> dict:
    """The ``rsnet.*`` metadata of an exported model (decoded), as written by :func:`export_onnx`."""
    raw = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}


def onnx_logits(session, batches: Iterable[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Logits (float32, CPU) of ``session`` on normalised input batches, concatenated."""
    name = session.get_inputs()[0].name
    out = []
    for x in batches:
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        out.append(torch.from_numpy(session.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]))
    return torch.cat(out)

"""Deployment: verified ONNX export, static int8 quantization, latency, and classification
of image files with an exported model (ONNX Runtime on the CPU)."""

from rsnet.deploy.onnx_io import export_onnx, gzip_bytes, onnx_logits, open_session, read_metadata
from rsnet.deploy.quant import CALIB_METHODS, quantize_int8

__all__ = ["export_onnx", "gzip_bytes", "onnx_logits", "open_session", "read_metadata",
           "quantize_int8", "CALIB_METHODS"]

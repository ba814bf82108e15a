"""What this machine's CPU can do fast: the instruction sets that decide whether bf16 and
int8 pay (AVX512-BF16 / AMX for bf16, VNNI / AMX for int8). Linux reads /proc/cpuinfo;
elsewhere nothing is known and every flag is reported missing."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16")


@cache
def cpu_flags() -> dict[str, bool]:
    """{flag: present} for the flags in CPU_FLAGS; empty where /proc/cpuinfo is not readable."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return {}
    return {n: n in flags for n in CPU_FLAGS}


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic runs in hardware on ``device`` (on a CPU without it, bf16
    autocast is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


@cache
def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo), None where it is not readable."""
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return None
    return line.split(":", 1)[1].strip()


def machine_metrics(device: torch.device, precision: torch.dtype | None) -> dict:
    """Where a run ran, kept with its metrics (a study's runs may span machines): the CPU model,
    its bf16 / int8 instruction sets, the GPU if one trained, and the training precision."""
    out = {"machine/cpu": cpu_model(),
           "machine/isa": " ".join(n for n, on in cpu_flags().items() if on) or None,
           "train/precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[precision]}
    if device.type == "cuda":
        out["machine/gpu"] = torch.cuda.get_device_name(device)
    return out

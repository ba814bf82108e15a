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

"""scripts/bench.py's own arithmetic (the timings themselves are benchmarks, not tests)."""
from __future__ import annotations

import argparse

import pytest

from test_tables import load_benchmark


def test_bench_widths_pairs_psi_prime_with_psi_round_by_round(monkeypatch):
    """scripts/bench.py widths: Psi' / Psi is taken within each timing round, so a round in
    which the whole machine is twice as slow leaves the ratio alone; the table shows the
    median and the range over the rounds."""
    bench = load_benchmark("widths")
    psi = {"experiment": "e", "model": "Psi", "params": 100, "macs": 1000,
           "min_width_multiple": None, "ort_fp32_b32_ms": 10.0, "openvino_fp32_b32_ms": 8.0,
           "ort_fp32_b32_rounds_ms": [10.0, 20.0, 10.0], "openvino_fp32_b32_rounds_ms": [8.0, 8.0, 16.0]}
    prime = {**psi, "model": "Psi' x86_avx512", "params": 10, "macs": 100,
             "min_width_multiple": 16, "ort_fp32_b32_ms": 2.0, "openvino_fp32_b32_ms": 2.0,
             "ort_fp32_b32_rounds_ms": [1.5, 3.0, 2.0], "openvino_fp32_b32_rounds_ms": [1.6, 2.0, 3.2]}
    monkeypatch.setattr(bench, "_time_widths", lambda experiment, args, tmp: [psi, prime])
    rows = bench.bench_widths(argparse.Namespace(experiments=["e"], latency_batch=32))["rows"]
    r = rows[1]
    # ORT per round: 0.15, 0.15, 0.20 -> median 0.15 (the ratio of medians would say 0.2)
    assert r["ort_latency_ratio"] == pytest.approx(0.15)
    assert r["ort_latency_over_macs"] == pytest.approx(1.5)
    assert r["ort_latency_over_macs_range"] == pytest.approx([1.5, 2.0])
    assert r["openvino_latency_over_macs_range"] == pytest.approx([2.0, 2.5])
    table = bench.widths_markdown({"rows": rows})
    assert "| 1.50 (1.50-2.00) |" in table and "| 2.00 (2.00-2.50) |" in table

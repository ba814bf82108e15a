"""scripts/tables.py: rows from metrics.json; a run without metrics.json shows as missing."""

import json
import subprocess
import sys

from conftest import REPO


def fake_run(path, name, metrics=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: {name}\ncompression:\n  name: prune\n  criterion: taylor\n"
                                      "train:\n  distill:\n    enabled: false\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_missing_runs_are_marked_missing(tmp_path):
    fake_run(tmp_path / "sweep" / "compression.criterion=l1", "p",
             {"prune/criterion": "l1", "prune/init": "inherit", "model/params": 1234, "test/acc": 0.5})
    fake_run(tmp_path / "sweep" / "compression.criterion=taylor", "p")  # killed before the report
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "prune",
                          str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")],
                         capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("| p/")]
    assert len(lines) == 2
    l1, taylor = sorted(lines)
    assert "| l1 | inherit | no | 1,234 |" in l1 and "0.5000" in l1
    assert "| taylor |" in taylor and taylor.count("missing") >= 5 and "0.0" not in taylor
    assert (tmp_path / "t.csv").read_text().count("\n") == 3


def thesis_run(path, scaling="rs", compression="none", metrics=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        f"name: g\nmodel: {{name: googlenet_rs, checkpoint: psi.pt}}\n"
        f"dataset: {{name: tiny_imagenet, num_classes: 5}}\nexport: {{name: int8}}\n"
        f"scaling: {{name: {scaling}, budget: {{rule: thesis, lam: 0.045}}}}\n"
        f"compression: {{name: {compression}, criterion: l1}}\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_thesis_tables_show_psi_each_policy_and_missing_runs(tmp_path):
    psi = {"baseline/params": 6_000_000, "baseline/macs": 121_000_000, "baseline/test/acc_local": 0.6,
           "baseline/test/acc_global": 0.7, "baseline/test/acc_raw": 0.5,
           "baseline/test/misc_share": 0.2, "baseline/test/const_misc_global": 0.2}
    common = {"model/name": "googlenet_rs", "dataset/name": "tiny_imagenet", "data/num_outputs": 5,
              "test/acc_local": 0.8, "test/acc_global": 0.9, "test/acc_raw": 0.75, "test/acc": 0.75,
              "test/misc_share": 0.2, "test/const_misc_global": 0.2, "train/time_s": 100.0,
              "int8/bytes": 500_000, "int8/test/acc": 0.74, "latency/ort_int8_b1_ms": 1.5}
    sweep = tmp_path / "sweep"
    thesis_run(sweep / "rs", metrics={**psi, **common, "plan/policy": "rs", "plan/time_s": 0.5,
                                      "model/params": 430_000, "model/macs": 20_000_000})
    thesis_run(sweep / "carved", compression="prune",
               metrics={**psi, **common, "plan/policy": "rs", "prune/criterion": "l1",
                        "plan/time_s": 0.5, "model/params": 430_000, "model/macs": 20_000_000})
    thesis_run(sweep / "uniform", scaling="uniform")  # killed before the report
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "thesis", str(sweep),
                          "--out", str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
    synthesis = out.split("## Compression")[0]
    rows = [r.removesuffix(" |").split(" | ") for r in synthesis.splitlines() if r.startswith("| googlenet_rs")]
    assert [r[3] for r in rows] == ["Psi (C-way baseline)", "Psi' (rs), from scratch",
                                    "Psi' (rs), carved (l1) + fine-tuned", "uniform, from scratch"]
    assert rows[0][4:8] == ["-", "6,000,000", "121,000,000", "0.6000"]  # Psi once, from both runs
    assert rows[1][4:8] == ["0.0450", "430,000", "20,000,000", "0.8000"] and rows[1][12] == "100"
    assert rows[3].count("missing") == 8 and "0.0000" not in rows[3]
    compression = [r.removesuffix(" |").split(" | ") for r in out.split("## Compression")[1].splitlines()
                   if r.startswith("| googlenet_rs")]
    assert len(compression) == 3 and compression[0][5] == "-" and compression[0][9] == "500,000"
    assert compression[2].count("missing") == 9
    t = tmp_path / "t"
    assert (t / "thesis_synthesis.csv").read_text().count("\n") == 5
    # the (long) run folder names are in the CSV, not in the markdown / LaTeX tables
    assert (t / "thesis_synthesis.csv").read_text().splitlines()[0].endswith(",run")
    assert "synthesis time (s) |\n" in out and "| run |" not in out
    assert r"Psi' (rs), carved (l1) + fine-tuned" in (t / "thesis.tex").read_text()
    assert "missing" in (t / "thesis.md").read_text()
    assert (t / "acc_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert (t / "acc_vs_macs.png").stat().st_size > 1000

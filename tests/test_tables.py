"""scripts/tables.py: rows from metrics.json; a run without metrics.json shows as missing."""

import json
import subprocess
import sys

from conftest import REPO


def fake_run(path, name, metrics=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: {name}\ncompression:\n  name: prune\n  criterion: taylor\n")
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
    assert "| l1 | inherit | 1,234 |" in l1 and "0.5000" in l1
    assert "| taylor |" in taylor and taylor.count("missing") >= 5 and "0.0" not in taylor
    assert (tmp_path / "t.csv").read_text().count("\n") == 3

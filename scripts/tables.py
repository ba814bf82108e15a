"""Tables from finished runs' metrics.json (markdown and CSV).

    python scripts/tables.py prune <run dir or sweep dir> ...   # pruning comparison
    python scripts/tables.py runs  <run dir or sweep dir> ...   # one row per run, main metrics

A sweep directory is searched for run directories (folders holding config.yaml); a run
without metrics.json (killed, failed or still running) shows as "missing", never as zeros.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import yaml

COLUMNS = {
    "prune": [("run", None), ("criterion", "prune/criterion"), ("init", "prune/init"),
              ("KD", "cfg:train.distill.enabled"),
              ("params", "model/params"), ("MACs", "model/macs"), ("epochs", "train/epochs"),
              ("test acc", "test/acc"), ("baseline test acc", "baseline/test/acc"),
              ("train time (s)", "train/time_s")],
    "runs": [("run", None), ("model", "model/name"), ("N", "data/num_outputs"),
             ("policy", "plan/policy"), ("params", "model/params"), ("MACs", "model/macs"),
             ("test acc", "test/acc"), ("local", "test/acc_local"), ("global", "test/acc_global"),
             ("raw", "test/acc_raw"), ("misc share", "test/misc_share")],
}


def run_dirs(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        if (p / "config.yaml").exists():
            found.append(p)
        elif p.is_dir():
            found += sorted(d.parent for d in p.rglob("config.yaml") if d.parent.name != ".hydra")
        else:
            print(f"warning: {p} is not a run or sweep directory", file=sys.stderr)
    return found


def fmt(v) -> str:
    if v is None:
        return "missing"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def lookup(m: dict, cfg: dict, key: str):
    """A metrics.json value, or a config value for keys written "cfg:dotted.path"."""
    if not key.startswith("cfg:"):
        return m.get(key)
    v = cfg
    for part in key[4:].split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def rows(kind: str, dirs: list[Path]) -> list[list[str]]:
    out = []
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        label = f"{cfg.get('name', d.parent.name)}/{d.name}"
        if not m and kind == "prune":  # show what the missing run was meant to be
            comp = cfg.get("compression", {}) or {}
            m = {"prune/criterion": comp.get("criterion") if comp.get("name") == "prune" else "none"}
        out.append([label] + [fmt(lookup(m, cfg, key)) if key else "" for _, key in COLUMNS[kind]][1:])
        if kind == "prune" and "prune/criterion" not in m:
            out[-1][1] = "none (plan built from scratch)" if "plan/policy" in m else "none (unpruned)"
            out[-1][2] = "-"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(COLUMNS))
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = p.parse_args()
    header = [c for c, _ in COLUMNS[args.kind]]
    table = rows(args.kind, run_dirs(args.paths))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in table:
        print("| " + " | ".join(r) + " |")
    if args.csv:
        buf = io.StringIO()
        csv.writer(buf).writerows([header] + table)
        args.csv.write_text(buf.getvalue())


if __name__ == "__main__":
    main()

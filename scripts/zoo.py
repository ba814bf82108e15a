"""The model zoo: its parameters and MACs, and which torchvision CNNs rsnet carves.

    python scripts/zoo.py table      # markdown table of the zoo's default builds (params, MACs)
                                     # -> docs/bench/zoo.md (--out), also printed
    python scripts/zoo.py carve      # every torchvision classifier: plan half its params, carve
                                     # -> results/any_cnn.csv, docs/any_cnn.md (resumes: models
                                     # already in the CSV are skipped; --fresh starts over)
"""

from __future__ import annotations

import argparse
import csv
import gc
import platform
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import rsnet.config  # noqa: F401
from rsnet.metrics import count_macs, count_params
from rsnet.models import build_model
from rsnet.progress import bar
from rsnet.fileio import atomic_write_text
from rsnet.zoo import CLASSES, RATIO, CarveResult, carve_check, torchvision_case, torchvision_cases

REPO = Path(__file__).resolve().parents[1]

# (model config, classes, input sizes): the settings the project uses them at
BUILDS = [("resnet20", 10, [32]), ("resnet44", 10, [32]), ("resnet56", 10, [32]), ("vgg16", 10, [32]),
          ("googlenet_rs", 200, [64, 32]), ("googlenet_rs", 1000, [227]),
          ("mobilenet_v1", 200, [64, 32]), ("mobilenet_v1", 1000, [224]),
          ("wrn", 10, [32]), ("densenet40", 10, [32]), ("mobilenet_v2", 10, [32]),
          ("shufflenet_v2", 10, [32]), ("gunn15", 10, [32]), ("gunn15", 3, [32])]
FIELDS = list(CarveResult("", 0).row())


def table(out: Path) -> None:
    lines = ["| model | classes | input px | params | MACs |", "|---|---:|---:|---:|---:|"]
    for name, classes, sizes in BUILDS:
        for size in sizes:
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"model={name}", f"model.input_size={size}"])
            model = build_model(OmegaConf.merge(cfg.model, {"checkpoint": None}), classes)
            lines.append(f"| {name} | {classes} | {size} | {count_params(model):,} | "
                         f"{count_macs(model, size) / 1e6:,.1f} M |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write_text(out, text)


def carve(out: Path, doc: Path, models: list[str], fresh: bool) -> None:
    done = {}
    if out.exists() and not fresh:
        with out.open() as f:
            done = {r["model"]: r for r in csv.DictReader(f)}
    todo = [m for m in models if m not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    if fresh or not out.exists():
        atomic_write_text(out, ",".join(FIELDS) + "\n")
    for name in bar(todo, desc="carve", unit="model"):
        res = carve_check(name, *torchvision_case(name))
        with out.open("a", newline="") as f:  # one finished row at a time: a kill loses none
            csv.DictWriter(f, FIELDS).writerow(res.row())
        print(f"{name}: {res.status} ({res.stage}) {res.reason[:150]}", flush=True)
        gc.collect()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    write_doc(rows, doc, out)


def _num(value: str, fmt: str) -> str:
    return format(float(value), fmt) if value not in ("", None) else ""


def write_doc(rows: list[dict], doc: Path, source: Path) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("carved", "refused", "failed")}
    lines = [
        "# Which CNNs rsnet carves",
        "",
        f"Every torchvision classification model, untrained, {CLASSES} classes (and GoogLeNet "
        "and Inception-v3 with their aux heads, `+aux`): "
        f"analysed with `prunable=True`, planned with `rs` for {RATIO:g} of its parameters, "
        "carved with `prune_to_widths` (l1). *carved*: the pruned model has exactly the planned "
        "widths, parameters and MACs (MACs only with aux heads, which the eval-mode plan "
        "leaves out). *refused*: rsnet stopped with its own message before "
        "carving. *failed*: anything else (a bug).",
        "",
        f"Result: {counts['carved']} carved, {counts['refused']} refused, {counts['failed']} failed. "
        f"Written by `python scripts/zoo.py carve` (from `{source.relative_to(REPO)}`) on "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread "
        "shared with other jobs, so times are indicative only. The slow test "
        "`tests/test_any_cnn.py::test_every_torchvision_model_carves_or_is_refused` checks the "
        "same.",
        "",
        "| model | input px | params | status | carved params | plan s | carve s | why refused |",
        "|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: r["model"]):
        why = r["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['model']} | {r['input_px']} | {_num(r['params'], ',.0f')} | "
                     f"{r['status']} | {_num(r['carved_params'], ',.0f')} | "
                     f"{_num(r['plan_s'], '.1f')} | {_num(r['carve_s'], '.1f')} | {why} |")
    atomic_write_text(doc, "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="params and MACs of the zoo's default builds")
    t.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "zoo.md")
    c = sub.add_parser("carve", help="plan and carve every torchvision classifier")
    c.add_argument("--models", nargs="*", help="these torchvision names only (default: all)")
    c.add_argument("--out", type=Path, default=REPO / "results" / "any_cnn.csv")
    c.add_argument("--doc", type=Path, default=REPO / "docs" / "any_cnn.md")
    c.add_argument("--fresh", action="store_true", help="ignore rows already in --out")
    c.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "table":
        table(args.out.resolve())
    else:
        unknown = sorted(set(args.models or ()) - set(torchvision_cases()))
        if unknown:
            ap.error(f"--models: not torchvision classification models: {', '.join(unknown)}")
        torch.set_num_threads(args.threads)
        carve(args.out.resolve(), args.doc.resolve(), args.models or torchvision_cases(), args.fresh)


if __name__ == "__main__":
    main()

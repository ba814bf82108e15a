"""Release a run's trained weights as an fp16 checkpoint under checkpoints/, with its provenance.

    python scripts/release_checkpoint.py outputs/runs/googlenet_tiny_baseline/epochs4 \
        googlenet_rs_tiny200.pt --command "python scripts/run.py experiment=googlenet_tiny_baseline ..."

Writes checkpoints/<name> ({"state_dict": fp16 floats, "meta": model, dataset, classes, test
accuracy, command}) and its row in checkpoints/README.md. ``model.checkpoint=<name>`` loads it
(the weights are cast back to fp32 on load).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rsnet.errors import RsnetError
from rsnet.fileio import load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]

HEADER = ("| file | model | dataset | classes | input px | epochs | test top-1 | test top-5 | MB | command |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")


def release(run_dir: Path, name: str, command: str, out_dir: Path) -> dict:
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        sys.exit(f"{run_dir} has no metrics.json: the run has not finished")
    metrics = json.loads(metrics_path.read_text())
    if "test/acc" not in metrics:
        sys.exit(f"{run_dir} has no test accuracy: release a run that trained and evaluated a model")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    state = load_checkpoint_file(run_dir / "checkpoints" / "model.pt", "trained model")["state_dict"]
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {"model": cfg.model.name, "dataset": cfg.dataset.name, "num_classes": metrics["data/num_outputs"],
            "input_size": cfg.model.input_size, "epochs": cfg.train.epochs,
            "test/acc": metrics["test/acc"], "test/acc5": metrics.get("test/acc5"), "command": command}
    out_dir.mkdir(exist_ok=True)
    path = out_dir / name
    torch.save({"state_dict": half, "meta": meta}, path)
    readme = out_dir / "README.md"
    rows = readme.read_text().split("\n") if readme.is_file() else []
    rows = [r for r in rows if r.startswith("| `") and not r.startswith(f"| `{name}`")]
    acc5 = "-" if meta["test/acc5"] is None else f"{100 * meta['test/acc5']:.2f} %"
    rows.append(f"| `{name}` | {meta['model']} | {meta['dataset']} | {meta['num_classes']} | "
                f"{meta['input_size']} | {meta['epochs']} | {100 * meta['test/acc']:.2f} % | {acc5} | "
                f"{path.stat().st_size / 2**20:.1f} | `{command}` |")
    readme.write_text("# Released checkpoints (fp16)\n\nWritten by `scripts/release_checkpoint.py` from "
                      "finished runs; load one with `model.checkpoint=<file>`.\nTest accuracy is on the "
                      "dataset's test split (Tiny-ImageNet: its labelled val split).\n\n"
                      + HEADER + "\n".join(sorted(rows)) + "\n")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name", help="file name under checkpoints/, e.g. googlenet_rs_tiny200.pt")
    ap.add_argument("--command", required=True, help="the command that produced the run")
    ap.add_argument("--out-dir", type=Path, default=REPO / "checkpoints")
    args = ap.parse_args()
    try:
        meta = release(args.run_dir, args.name, args.command, args.out_dir)
    except RsnetError as e:  # a missing or corrupt checkpoint: one line, exit 1
        sys.exit(str(e))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()

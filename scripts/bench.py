"""Speed benchmarks; writes JSON and prints a markdown table.

    python scripts/bench.py train [--models resnet20 resnet56] [--steps 40] [--out FILE]
    python scripts/bench.py plan
    python scripts/bench.py deploy [--runs resnet56_deploy "resnet56_prune_half export=int8"]
    python scripts/bench.py compile [--models resnet20 googlenet_rs mobilenet_v1] [--modes fp32+cl]
    python scripts/bench.py latency [--experiments googlenet_rs mobilenet_rs] [--ratios 0.5 0.3]
    python scripts/bench.py int8 [--experiments googlenet_rs mobilenet_rs] [--run-dirs DIR ...]
                                 [--runtimes ort openvino executorch]

``plan``: time of the graph analysis and of the rs solver, and the rs plans themselves, for
the thesis's GoogLeNet (227 px, C = 1000, BN without scale) and the 64 px GoogLeNet and
MobileNet (C = 200), lambda 0.045 and 0.25, N = 5, 10, 15, 20.

``deploy``: for each run (an experiment name plus overrides), the pipeline with its export
stage on every runtime (ONNX Runtime, OpenVINO, ExecuTorch; run directories under
outputs/bench/deploy/, resumed when rerun): file sizes, fp32 and int8 test accuracy per
runtime, latency at batch 1 and 32 (2 threads, median of 100 runs), int8's speed-up over the
same runtime's fp32, and each run's latency as a fraction of the first run's (Psi) on the same
runtime and batch, beside its fraction of the MACs; the CPU's int8 / bf16 flags.

``int8``: post-training int8 of trained models (the released Psi, and finished runs' exported
files): test accuracy of fp32 and int8 on each of --runtimes (ONNX Runtime, OpenVINO on the
ONNX files; ExecuTorch with XNNPACK on .pte programs made from the same BN-folded model, PT2E
int8 calibrated on the same images; a run's model rebuilt from its config, plan and checkpoint,
checked against its exported ONNX file), and int8's speed-up over the same runtime's fp32 at
batch --latency-batch (2 threads, --repeats interleaved rounds).

``train``: training images/s on CIFAR-10 (JPEG), batch 128, for each model and each of
--modes (fp32, bf16 + channels_last; fp16 + channels_last on CUDA) on --device:
  - rsnet: the real loop (``rsnet.train.fit``: in-memory uint8 batches, batched crop/flip);
  - bare: the model step alone on one in-memory float batch (the compute ceiling);
  - reference: torchvision-reference style, ImageFolder + DataLoader(2 workers) + PIL transforms;
and, unless --no-accuracy, ResNet-20 trained --accuracy-epochs epochs (1) from scratch in each
mode (test accuracy of each, same seed and batches), to check that bf16 / fp16 cost no accuracy.
On a GPU: ``python scripts/bench.py train --device cuda --modes fp32 bf16+cl fp16+cl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from rsnet.errors import RsnetError
from rsnet.hardware import cpu_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the benchmarks package

from benchmarks.common import REPO  # noqa: E402
from benchmarks.deploy import bench_deploy, deploy_markdown  # noqa: E402
from benchmarks.int8 import INT8_RUNTIMES, bench_int8, int8_markdown  # noqa: E402
from benchmarks.planning import bench_latency, bench_plan, latency_markdown, plan_markdown  # noqa: E402
from benchmarks.training import (MODES, bench_compile, bench_train, compile_markdown,  # noqa: E402
                                 train_markdown)
from benchmarks.widths import bench_widths, widths_markdown  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["train", "plan", "deploy", "widths", "compile", "latency", "int8"], nargs="?",
                   default="train")
    p.add_argument("--experiments", nargs="*", default=["googlenet_rs", "mobilenet_rs"],
                   help="widths: thesis experiments whose Psi and Psi' are timed; int8: whose "
                        "released Psi is quantized (none: only --run-dirs)")
    p.add_argument("--run-dirs", nargs="*", default=[],
                   help="int8: finished run directories with export/model.onnx and model_int8.onnx "
                        "(and, for executorch, config.yaml, checkpoints/model.pt and any plan.json)")
    p.add_argument("--runtimes", nargs="+", choices=list(INT8_RUNTIMES), default=list(INT8_RUNTIMES),
                   help="int8: runtimes measured, each against its own fp32 (ort: ONNX Runtime; "
                        "executorch: XNNPACK, its own .pte programs)")
    p.add_argument("--targets", nargs="+", default=["generic", "x86_avx2", "x86_avx512"],
                   help="widths: deployment targets (conf/target/), each optionally followed by "
                        "width-rule overrides: \"x86_avx512 scaling.widths.keep_narrow=true\"")
    p.add_argument("--classes", type=int, default=10, help="widths: N outputs of Psi'")
    p.add_argument("--base-classes", type=int, default=200, help="widths: C classes of Psi")
    p.add_argument("--latency-batch", type=int, default=32, help="widths: batch size timed")
    p.add_argument("--int8", action="store_true", help="widths: also time static int8 files")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.3],
                   help="latency: budgets as ratios of Psi's measured ms at batch 1")
    p.add_argument("--target", default="generic", help="latency: deployment target (conf/target/)")
    p.add_argument("--runs", nargs="+", default=["resnet56_deploy", "resnet56_prune_half export=int8"],
                   help="deploy: experiment names, each optionally followed by overrides")
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best is kept")
    p.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    p.add_argument("--accuracy-epochs", type=int, default=1, help="train: epochs of the accuracy check")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["fp32", "bf16+cl"],
                   help="train: precisions (fp16+cl needs CUDA)")
    p.add_argument("--device", default="cpu", help="train: cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=None, help="default outputs/bench/<section>.json")
    args = p.parse_args()
    machine = {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
               "torch": torch.__version__, "processor": platform.processor(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cpu_flags": cpu_flags()}
    result = {"section": args.section, "machine": machine,
              "args": {k: str(v) for k, v in vars(args).items()}}
    sections = {"train": (bench_train, train_markdown), "plan": (bench_plan, plan_markdown),
                "deploy": (bench_deploy, deploy_markdown), "widths": (bench_widths, widths_markdown),
                "compile": (bench_compile, compile_markdown),
                "latency": (bench_latency, latency_markdown), "int8": (bench_int8, int8_markdown)}
    compute, render = sections[args.section]
    result.update(compute(args))
    args.out = args.out or REPO / "outputs" / "bench" / f"{args.section}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    args.out.with_suffix(".md").write_text(table + "\n")  # the table the docs show
    print(table)
    print(f"\nwritten {args.out} and {args.out.with_suffix('.md').name}")


if __name__ == "__main__":
    try:
        main()
    except RsnetError as e:  # a bad setting (e.g. --modes fp16+cl on the CPU): one line, exit 1
        sys.exit(f"error: {e}")

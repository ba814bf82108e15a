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
import copy
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
from torch._inductor.utils import clear_caches

import rsnet.config  # noqa: F401  (registers the config schema and resolvers)
from rsnet import progress
from rsnet.data import build_data, data_root
from rsnet.data.sources import default_cache_dir
from rsnet.errors import RsnetError
from rsnet.hardware import cpu_flags
from rsnet.models import build_model
from rsnet.stages.train import fit_from_config
from rsnet.train import main_logits, predict, resolve_runtime

REPO = Path(__file__).resolve().parents[1]

MODES = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16+cl": ("bf16", True),
         "fp16+cl": ("fp16", True)}


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def step_fn(model, rt, optimizer):
    criterion = torch.nn.CrossEntropyLoss()

    def step(x, y):
        with rt.autocast():
            loss = criterion(main_logits(model(x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def timed(batches, step, warmup: int, steps: int, batch_size: int) -> float:
    """Images/s over ``steps`` steps after ``warmup`` untimed ones (batch fetch included)."""
    it = iter(batches)
    for _ in range(warmup):
        loss = step(*next(it))
    loss.item()  # a GPU runs ahead of Python: wait for it before and after the timed steps
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(*next(it))
    loss.item()
    return steps * batch_size / (time.perf_counter() - t0)


def random_batch(rt, batch_size: int, size: int = 32, classes: int = 10):
    """One in-memory float batch (in the runtime's memory format) and its labels."""
    x = torch.randn(batch_size, 3, size, size, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (batch_size,), device=rt.device)


def sgd_step(model, rt, net=None):
    return step_fn(model if net is None else net, rt,
                   torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))


def bare(model, rt, batch_size, warmup, steps, size: int = 32, classes: int = 10,
         net=None) -> float:
    """The model step alone on one in-memory float batch; ``net`` (e.g. the compiled model)
    runs the forward pass when given, ``model``'s parameters are optimised."""
    x, y = random_batch(rt, batch_size, size, classes)
    return timed(iter(lambda: (x, y), None), sgd_step(model, rt, net), warmup, steps, batch_size)


def rsnet_loop(model, rt, cfg, data, batch_size, warmup, steps) -> float:
    """``fit`` for one epoch over (warmup + steps) batches; its own images/s (validation excluded)."""
    sub = copy.copy(data)
    n = (warmup + steps) * batch_size
    sub.train = type(data.train)(data.train.images[:n], data.train.targets[:n], data.train.orig_labels[:n])
    sub.val = type(data.val)(data.val.images[:256], data.val.targets[:256], data.val.orig_labels[:256])
    tcfg = OmegaConf.merge(cfg.train, {"epochs": 1, "batch_size": batch_size})
    with tempfile.TemporaryDirectory() as tmp:
        hist = fit_from_config(model, sub, tcfg, rt, Path(tmp), seed=0)
    return hist[0]["train/images_per_s"]


def extracted_cifar(root: Path) -> Path:
    """The ImageFolder tree of CIFAR-10 (JPEG), extracting the archive into the cache once."""
    if (root / "cifar10-jpeg").is_dir():
        return root / "cifar10-jpeg"
    target = default_cache_dir() / "extracted"
    if not (target / "cifar10-jpeg" / "train").is_dir():
        with tarfile.open(root / "cifar10-jpeg.tar.gz") as tf:
            tf.extractall(target, filter="data")
    return target / "cifar10-jpeg"


def reference(model, rt, folder: Path, batch_size, warmup, steps, mean, std) -> float:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader(ImageFolder(str(folder / "train"), tf), batch_size=batch_size,
                                         shuffle=True, num_workers=2, drop_last=True,
                                         persistent_workers=False)
    step = sgd_step(model, rt)

    def batches():
        for x, y in loader:
            x, y = x.to(rt.device), y.to(rt.device)
            yield (x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x), y
    return timed(batches(), step, warmup, steps, batch_size)


def trained_accuracy(cfg, data, mode: str, epochs: int) -> float:
    precision, cl = MODES[mode]
    tcfg = OmegaConf.merge(cfg.train, {"epochs": epochs, "precision": precision, "channels_last": cl,
                                       "optimizer": {"lr": 0.1}})
    rt = resolve_runtime(tcfg)
    torch.manual_seed(0)
    model = rt.prepare(build_model(OmegaConf.merge(cfg.model, {"checkpoint": None}), 10))
    with tempfile.TemporaryDirectory() as tmp:
        fit_from_config(model, data, tcfg, rt, Path(tmp), seed=0)
    logits = predict(model, data.test, data, rt, 500)
    return (logits.argmax(1) == data.test.targets).float().mean().item()


def bench_train(args) -> dict:
    cfg = compose_cfg("dataset.num_classes=null", "progress=false", f"train.device={args.device}")
    progress.set_enabled(False)
    data = build_data(cfg.dataset)
    folder = extracted_cifar(data_root(cfg.dataset.root))
    rows = []
    for name in args.models:
        mcfg = compose_cfg(f"model={name}").model
        for mode in args.modes:
            precision, cl = MODES[mode]
            tcfg = OmegaConf.merge(cfg.train, {"precision": precision, "channels_last": cl,
                                               "compile": False})  # compile: its own section
            rt = resolve_runtime(tcfg)
            fresh = lambda: rt.prepare(build_model(mcfg, 10))  # noqa: E731
            row = {"model": name, "mode": mode, "batch_size": args.batch_size}
            bare(fresh(), rt, args.batch_size, 15, 1)  # warm oneDNN's kernel caches for these shapes
            runs = {"bare": lambda: bare(fresh(), rt, args.batch_size, args.warmup, args.steps),
                    "rsnet": lambda: rsnet_loop(fresh(), rt, OmegaConf.merge(cfg, {"train": tcfg}),
                                                data, args.batch_size, args.warmup, args.steps),
                    "reference": lambda: reference(fresh(), rt, folder, args.batch_size, args.warmup,
                                                   args.steps, data.mean, data.std)}
            # interleaved repeats, best of each: the machine's noise only ever slows a run down
            for _ in range(args.repeats):
                for key, measure in runs.items():
                    row[key] = max(row.get(key, 0.0), measure())
            row["rsnet_vs_bare"] = row["rsnet"] / row["bare"]
            row["rsnet_vs_reference"] = row["rsnet"] / row["reference"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in args.models:
        ours = {r["mode"]: r for r in rows if r["model"] == name}
        for mode, row in ours.items():
            if mode != "fp32" and "fp32" in ours:
                row["speedup_vs_fp32"] = row["rsnet"] / ours["fp32"]["rsnet"]
    out = {"rows": rows}
    if args.accuracy:
        out["accuracy_epochs"] = args.accuracy_epochs
        out["test_acc"] = {m: trained_accuracy(cfg, data, m, args.accuracy_epochs) for m in args.modes}
    return out


# classes of each family's usual task (the thesis families: Tiny-ImageNet-200 at 64 px)
FAMILY_CLASSES = {"googlenet_rs": 200, "mobilenet_v1": 200}


def bench_compile(args) -> dict:
    """Per model family and mode: the eager bare step against the same step through
    ``torch.compile`` (inductor), images/s on one in-memory batch at the family's input size,
    the compile time (the first compiled step, forward and backward) apart, with an empty
    inductor cache (a first run) and with the cache that run filled (a later run)."""
    progress.set_enabled(False)
    rows = []
    for name in args.models:
        mcfg = compose_cfg(f"model={name}").model
        size, classes = int(mcfg.input_size), FAMILY_CLASSES.get(name, 10)
        for mode in args.modes:
            precision, cl = MODES[mode]
            rt = resolve_runtime(OmegaConf.merge(compose_cfg().train,
                                                 {"precision": precision, "channels_last": cl}))

            def fresh():
                torch.manual_seed(0)
                return rt.prepare(build_model(mcfg, classes))
            bare(fresh(), rt, args.batch_size, 3, 1, size, classes)  # warm oneDNN's kernel caches
            row = {"model": name, "mode": mode, "input_size": size, "classes": classes,
                   "batch_size": args.batch_size, **graph_breaks(fresh(), rt, size),
                   "eager_conv_share": conv_share(fresh(), rt, args.batch_size, size, classes)}
            with tempfile.TemporaryDirectory(prefix="rsnet_inductor_") as tmp, \
                    temporary_cache_dir(tmp):
                # cold: an empty inductor cache (a first run); warm: the cache that run filled,
                # read by a process without the first one's in-memory caches (a later run)
                for key in ("compile_cold_s", "compile_warm_s"):
                    torch._dynamo.reset()
                    clear_caches()
                    model = fresh()
                    net = torch.compile(model)
                    t0 = time.perf_counter()
                    bare(model, rt, args.batch_size, 1, 0, size, classes, net=net)
                    row[key] = time.perf_counter() - t0
                for _ in range(args.repeats):  # interleaved, best of each (noise only slows a run)
                    row["eager"] = max(row.get("eager", 0.0), bare(
                        fresh(), rt, args.batch_size, args.warmup, args.steps, size, classes))
                    row["compiled"] = max(row.get("compiled", 0.0), bare(
                        model, rt, args.batch_size, args.warmup, args.steps, size, classes, net=net))
                row["speedup"] = row["compiled"] / row["eager"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                torch._dynamo.reset()
    return {"rows": rows}


def bench_latency(args) -> dict:
    """The latency budget (``scaling.budget.unit=latency``): per experiment and budget (a
    ratio of the C-way Psi's measured ms at batch 1), the pipeline's plan stage on fresh
    weights (its layer table carried from one budget to the next), the plan's prediction,
    the plan as built measured by the stage, and measured again here from plan.json."""
    import shutil

    from rsnet.deploy.latency_table import measure_model_ms
    from rsnet.models.widths import build_at_widths
    from rsnet.pipeline import run
    from rsnet.plan.latency import SESSIONS
    from rsnet.plan import WidthPlan

    rows, runs = [], compose_cfg().export.latency.runs
    with tempfile.TemporaryDirectory(prefix="rsnet_latency_") as tmp:
        for experiment in args.experiments:
            lut = None
            for ratio in args.ratios:
                cfg = compose_cfg(f"experiment={experiment}", f"target={args.target}",
                                  f"dataset.num_classes={args.classes}", "model.checkpoint=null",
                                  "recipe=scratch", "scaling.budget.unit=latency", "scaling.budget.rule=ratio",
                                  f"scaling.budget.value={ratio}", "stop_after=plan",
                                  "progress=false")
                run_dir = Path(tmp) / f"{experiment}_{ratio}"
                run_dir.mkdir()
                if lut is not None:  # the same layers: the entries measured so far
                    shutil.copy(lut, run_dir / "latency_lut.json")
                row = {"experiment": experiment, "target": args.target, "N": args.classes,
                       "budget_ratio": ratio}
                t0 = time.perf_counter()
                try:
                    run(cfg, run_dir)
                except RsnetError as e:  # a budget below the narrowest plan: a row that says so
                    if "no width plan fits" not in str(e):
                        raise
                    rows.append({**row, "failed": str(e)})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                row["plan_s"] = time.perf_counter() - t0
                lut = run_dir / "latency_lut.json"
                plan = WidthPlan.load(run_dir / "plan.json")
                torch.manual_seed(0)
                full = build_model(cfg.model, args.classes)
                built = build_at_widths(cfg.model, args.classes, plan.widths(), full).eval()
                runs, threads = cfg.export.latency.runs, cfg.scaling.budget.threads
                row.update({"budget_ms": plan.budget["value"], "psi_ms": plan.budget["baseline"],
                            "factors": [m.factor for m in plan.macro],
                            "params": plan.predicted["params"], "macs": plan.predicted["macs"],
                            "params_ratio": plan.predicted["params"] / plan.baseline["params"],
                            "macs_ratio": plan.predicted["macs"] / plan.baseline["macs"],
                            **{k: v for k, v in plan.latency.items() if k != "rounds"},
                            "solves": len(plan.latency["rounds"]), "rounds": plan.latency["rounds"],
                            "remeasured_ms": measure_model_ms(built, cfg.model.input_size,
                                                              threads, runs, sessions=SESSIONS)})
                row["remeasured_error"] = row["remeasured_ms"] / row["predicted_ms"] - 1
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows, "session_spread": session_spread(args.experiments[0], runs)}


def session_spread(experiment: str, runs: int, sessions: int = 5) -> list[dict]:
    """How far one model's batch-1 latency moves between ONNX Runtime sessions: the fastest run
    of each of ``sessions`` sessions, for 1 and 2 threads (Psi of ``experiment``, fresh weights)."""
    from rsnet.deploy.latency_table import measure_model_ms

    cfg = compose_cfg(f"experiment={experiment}", "model.checkpoint=null")
    torch.manual_seed(0)
    classes = 200
    psi = build_model(cfg.model, classes).eval()
    out = []
    for threads in (1, 2):
        ms = [measure_model_ms(psi, cfg.model.input_size, threads, runs, sessions=1)
              for _ in range(sessions)]
        out.append({"experiment": experiment, "classes": classes, "threads": threads,
                    "fastest_ms_per_session": ms, "max_over_min": max(ms) / min(ms)})
        print(json.dumps(out[-1]), flush=True)
    return out


def latency_markdown(result: dict) -> str:
    lines = ["| experiment | N | target | budget (x Psi) | budget ms | predicted ms | measured ms "
             "(stage / again) | error (stage / again) | solves | MACs x Psi | plan s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        if "failed" in r:
            lines.append(f"| {r['experiment']} | {r['N']} | {r['target']} | {r['budget_ratio']} | "
                         f"{r['failed']} |||||||")
            continue
        lines.append(f"| {r['experiment']} | {r['N']} | {r['target']} | {r['budget_ratio']} | "
                     f"{r['budget_ms']:.3f} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} / "
                     f"{r['remeasured_ms']:.3f} | {r['error']:+.1%} / {r['remeasured_error']:+.1%} | "
                     f"{r['solves']} | {r['macs_ratio']:.3f} | {r['plan_s']:.0f} |")
    for s in result.get("session_spread", []):
        lines.append(f"\n{s['experiment']} Psi ({s['classes']} classes), {s['threads']} thread(s): "
                     f"fastest run per ONNX Runtime session "
                     f"{', '.join(f'{m:.3f}' for m in s['fastest_ms_per_session'])} ms "
                     f"(max / min {s['max_over_min']:.2f})")
    return "\n".join(lines)


def graph_breaks(model, rt, size: int) -> dict:
    """What dynamo makes of the training forward: graphs, graph breaks and their reasons."""
    x, _ = random_batch(rt, 2, size)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.train())(x)
    torch._dynamo.reset()
    return {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
            "break_reasons": sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})}


def conv_share(model, rt, batch_size: int, size: int, classes: int) -> float:
    """Share of an eager training step's CPU time spent in convolutions and their gradients
    (oneDNN's kernels either way: what compilation cannot speed up)."""
    from torch.profiler import ProfilerActivity, profile

    x, y = random_batch(rt, batch_size, size, classes)
    step = sgd_step(model, rt)
    step(x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step(x, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower())
    return conv / total


def compile_markdown(result: dict) -> str:
    lines = ["| model | input | mode | eager img/s | compiled img/s | compiled / eager | "
             "compile s (cold / warm cache) | graph breaks | eager time in convolutions |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['input_size']} px, {r['classes']} classes | {r['mode']} | "
                     f"{r['eager']:.0f} | {r['compiled']:.0f} | {r['speedup']:.2f}x | "
                     f"{r['compile_cold_s']:.0f} / {r['compile_warm_s']:.0f} | {r['graph_breaks']} | {r['eager_conv_share']:.0%} |")
    return "\n".join(lines)


THESIS_N5 = [5.0] * 8 + [4.0] * 4  # method.md section 4


def bench_plan(args) -> dict:
    """Planning time and the rs plans: the thesis setting and the CPU-scale (64 px) one."""
    from rsnet.plan.budget import make_budget
    from rsnet.graph import analyze
    from rsnet.metrics import count_macs, count_params
    from rsnet.plan.policies import ResourceScalable, Scaler, WidthRule

    settings = [("googlenet_rs", 227, 1000, False), ("googlenet_rs", 64, 200, True),
                ("mobilenet_v1", 64, 200, True)]
    rows = []
    for name, size, classes, bn_scale in settings:
        over = [f"model={name}", f"model.input_size={size}"]
        if name == "googlenet_rs":
            over.append(f"model.arch.bn_scale={str(bn_scale).lower()}")
        mcfg = OmegaConf.merge(compose_cfg(*over).model, {"checkpoint": None})
        baseline = build_model(mcfg, classes)
        base = {"params": count_params(baseline), "macs": count_macs(baseline, size)}
        for lam in (0.045, 0.25):
            for n in (5, 10, 15, 20):
                t0 = time.perf_counter()
                graph = analyze(build_model(mcfg, n), size)
                t1 = time.perf_counter()
                budget = make_budget("thesis", "params", base["params"], n, classes, lam)
                plan = ResourceScalable().make(Scaler(graph, WidthRule()), budget, base)
                t2 = time.perf_counter()
                rows.append({"model": name, "input": size, "C": classes, "bn_scale": bn_scale,
                             "lambda": lam, "N": n, "factors": [m.factor for m in plan.macro],
                             "params": plan.predicted["params"], "macs": plan.predicted["macs"],
                             "budget": budget.value, "used": plan.predicted["params"] / budget.value,
                             "analyze_s": t1 - t0, "solve_s": t2 - t1})
                print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


DEPLOY_KEYS = ("model/params", "model/macs", "test/acc", "onnx/test/acc", "int8/test/acc",
               "int8/top1_agreement", "export/max_abs_diff", "export/onnx_bytes", "int8/bytes",
               "int8/size_ratio", "latency/threads", "openvino/precision", "openvino/test/acc",
               "openvino_int8/test/acc", "executorch/test/acc", "executorch_int8/test/acc",
               "executorch/bytes", "executorch_int8/bytes")
RUNTIMES = [("PyTorch eager", "torch", "test/acc", None), ("ONNX Runtime", "ort", "onnx/test/acc", "int8/test/acc"),
            ("OpenVINO", "openvino", "openvino/test/acc", "openvino_int8/test/acc"),
            ("ExecuTorch", "executorch", "executorch/test/acc", "executorch_int8/test/acc")]


def planned_pair(experiment: str, target: str, classes: int, base_classes: int):
    """(Psi, Psi', input size) of ``experiment`` for ``target``: the C-way baseline and the
    N-way model at the plan stage's widths (fresh weights: latency does not depend on them)."""
    from rsnet.graph import analyze
    from rsnet.metrics import count_macs, count_params
    from rsnet.models.widths import build_at_widths
    from rsnet.stages.plan import solve

    cfg = compose_cfg(f"experiment={experiment}", f"target={target}",
                      f"dataset.num_classes={classes}", "model.checkpoint=null")
    sc, size = cfg.scaling, cfg.model.input_size
    torch.manual_seed(0)
    psi = build_model(cfg.model, base_classes).eval()
    graph = analyze(build_model(cfg.model, classes), size, fixed=list(sc.fixed),
                    tie=[list(t) for t in sc.tie], leaf_modules=list(sc.leaf_modules))
    base = {"params": count_params(psi), "macs": count_macs(psi, size)}
    plan = solve(sc, graph, base, classes, base_classes)
    prime = build_at_widths(cfg.model, classes, plan.widths(), psi)
    for net in (psi, prime):
        _trained_like_bn(net)
    return psi.eval(), prime.eval(), size


@torch.no_grad()
def _trained_like_bn(net: torch.nn.Module) -> None:
    """BatchNorm parameters and statistics drawn as after training, not a fresh layer's ones
    and zeros (int8 calibration then sees realistic per-channel scales)."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def bench_widths(args) -> dict:
    """Psi and Psi' (rs, N = --classes) of each thesis family for each deployment target
    (its channel multiple): parameters, MACs, and fp32 latency at batch --latency-batch on ONNX
    Runtime and OpenVINO with 2 threads, timed in --repeats interleaved rounds (every model and
    runtime once per round; the median over rounds of each round's median; Psi' / Psi is taken
    round by round, and its median and range over the rounds are reported). --int8 adds the
    static int8 (QDQ) file of each on both runtimes and its speed-up over the same runtime's
    fp32."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsnet-bench-widths-") as tmp:
        for experiment in args.experiments:
            rows += _time_widths(experiment, args, Path(tmp))
    for r in rows:  # Psi' against its own family's Psi, round by round (paired in time)
        psi = next(p for p in rows if p["experiment"] == r["experiment"] and p["model"] == "Psi")
        r["macs_ratio"] = r["macs"] / psi["macs"]
        for rt in ("ort", "openvino"):
            key = f"{rt}_fp32_b{args.latency_batch}_rounds_ms"
            per_round = np.array(r[key]) / np.array(psi[key])
            r[f"{rt}_latency_ratio"] = float(np.median(per_round))
            r[f"{rt}_latency_over_macs"] = r[f"{rt}_latency_ratio"] / r["macs_ratio"]
            r[f"{rt}_latency_over_macs_range"] = [float(per_round.min() / r["macs_ratio"]),
                                                  float(per_round.max() / r["macs_ratio"])]
    return {"rows": rows}


def _time_widths(experiment: str, args, tmp: Path) -> list[dict]:
    """One family's rows of :func:`bench_widths`: its files in ``tmp``, timed interleaved."""
    from rsnet.deploy.onnx_io import export_onnx
    from rsnet.deploy.quant import quantize_int8
    from rsnet.deploy.runtimes import OpenVINO, predictor_latency
    from rsnet.metrics import count_macs, count_params

    models = {}
    for target in args.targets:
        psi, prime, size = planned_pair(experiment, target, args.classes, args.base_classes)
        models.setdefault("Psi", psi)
        models[f"Psi' {target}"] = prime
    preds, ops = {}, {}
    for k, (label, net) in enumerate(models.items()):
        files = {"fp32": export_onnx(net, tmp / f"{experiment}_{k}.onnx", size)}
        if args.int8:  # ranges from random images: the speed, not the accuracy, of int8
            calib = [np.random.default_rng(i).standard_normal((32, 3, size, size), np.float32)
                     for i in range(4)]
            files["int8"] = quantize_int8(files["fp32"], tmp / f"{experiment}_{k}_int8.onnx", calib)
        ops[label] = {p: ort_graph_ops(f) for p, f in files.items()}
        for precision, path in files.items():
            preds[(label, f"ort_{precision}")] = ort_predictor(path)
            preds[(label, f"openvino_{precision}")] = OpenVINO().open(
                path, threads=2, batch_size=args.latency_batch)
    times = {k: [] for k in preds}
    for _ in progress.bar(range(args.repeats), desc=f"{experiment} rounds"):
        for k, pred in preds.items():
            times[k].append(predictor_latency(pred, size, args.latency_batch, runs=20, warmup=3))
    rows, b = [], args.latency_batch
    for label, net in models.items():
        row = {"experiment": experiment, "model": label, "params": count_params(net),
               "macs": count_macs(net, size),
               "min_width_multiple": None if label == "Psi" else _multiple(net),
               "ort_graph_ops": ops[label],
               **{f"{key}_b{b}_ms": float(np.median(t)) for (m, key), t in times.items()
                  if m == label},
               **{f"{key}_b{b}_rounds_ms": t for (m, key), t in times.items() if m == label}}
        for rt in ("ort", "openvino"):
            if f"{rt}_int8_b{b}_ms" in row:
                row[f"{rt}_int8_speedup"] = row[f"{rt}_fp32_b{b}_ms"] / row[f"{rt}_int8_b{b}_ms"]
        rows.append(row)
    return rows


def ort_predictor(path: Path, threads: int = 2):
    """An ONNX Runtime session on ``path`` as a runtime Predictor (logits of a numpy batch)."""
    from rsnet.deploy.onnx_io import open_session
    from rsnet.deploy.runtimes import Predictor

    session = open_session(path, threads=threads)
    name = session.get_inputs()[0].name
    return Predictor(lambda x: session.run(None, {name: x})[0], {})


def ort_graph_ops(path: Path) -> dict[str, int]:
    """{op type: count} of the graph ONNX Runtime runs for ``path`` after its optimisations
    (what fused and what stayed: e.g. fp32 islands in an int8 graph)."""
    import collections

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    return dict(collections.Counter(n.op_type for n in graph.node).most_common())


def _multiple(net: torch.nn.Module) -> int:
    """The largest of 16, 8, 4, 2 that divides every hidden conv width (1 if none)."""
    widths = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    return next((k for k in (16, 8, 4, 2) if all(w % k == 0 for w in widths)), 1)


def widths_markdown(result: dict) -> str:
    rows = result["rows"]
    b = next(k for k in rows[0] if k.startswith("ort_fp32_b")).split("_b")[1].removesuffix("_ms")
    lines = [f"| experiment | model | multiple | params | MACs | MACs / Psi | ORT b{b} (ms) | "
             f"ORT latency / Psi | ORT (latency / Psi) / (MACs / Psi) | OpenVINO b{b} (ms) | "
             f"OpenVINO latency / Psi | OpenVINO (latency / Psi) / (MACs / Psi) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['model']} | {_f(r['min_width_multiple'], 'd')} | "
                     f"{r['params']:,} | {r['macs']:,} | {r['macs_ratio']:.3f} | "
                     f"{r[f'ort_fp32_b{b}_ms']:.2f} | {r['ort_latency_ratio']:.3f} | "
                     f"{_over_macs(r, 'ort')} | {r[f'openvino_fp32_b{b}_ms']:.2f} | "
                     f"{r['openvino_latency_ratio']:.3f} | {_over_macs(r, 'openvino')} |")
    if "ort_int8_speedup" in rows[0]:
        lines += ["", f"| experiment | model | ORT int8 b{b} (ms) | ORT int8 speed-up | "
                  f"OpenVINO int8 b{b} (ms) | OpenVINO int8 speed-up |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['experiment']} | {r['model']} | {r[f'ort_int8_b{b}_ms']:.2f} | "
                  f"{r['ort_int8_speedup']:.2f}x | {r[f'openvino_int8_b{b}_ms']:.2f} | "
                  f"{r['openvino_int8_speedup']:.2f}x |" for r in rows]
    return "\n".join(lines)


def _over_macs(row: dict, rt: str) -> str:
    """A row's (latency / Psi) / (MACs / Psi): the median over rounds and its range."""
    low, high = row.get(f"{rt}_latency_over_macs_range", (None, None))
    spread = f" ({low:.2f}-{high:.2f})" if low is not None and row["model"] != "Psi" else ""
    return f"{row[f'{rt}_latency_over_macs']:.2f}{spread}"


INT8_RUNTIMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO", "executorch": "ExecuTorch"}
REBUILD_ATOL = 1e-3  # a run's rebuilt model against its exported ONNX file (max |logit diff|)


def bench_int8(args) -> dict:
    """int8 on trained models: for the released Psi of each of --experiments (C-way, the full
    test set) and for each finished run directory of --run-dirs (its exported export/model.onnx
    and model_int8.onnx, its own test split), test accuracy of fp32 and int8 on each of
    --runtimes, and batch --latency-batch latency of each, timed in --repeats interleaved
    rounds (2 threads); int8's speed-up over the same runtime's fp32 and its accuracy change.
    ExecuTorch runs its own programs, made from the model the ONNX files hold (post-activation
    BNs folded, as the export stage hands it to every runtime), int8 calibrated on the same
    images as the ONNX int8 file."""
    from rsnet.deploy.fold import fold_post_activation_bn
    from rsnet.deploy.onnx_io import MainLogits, export_onnx
    from rsnet.deploy.quant import quantize_int8

    models = []  # (label, {runtime: {"fp32": path, "int8": path}}, data bundle, input size)
    with tempfile.TemporaryDirectory(prefix="rsnet-bench-int8-") as tmp:
        for experiment in args.experiments:  # Psi as released, quantized as export=int8 does
            cfg = compose_cfg(f"experiment={experiment}", "dataset.num_classes=null",
                              "dataset.unseen_fraction=0")
            data = build_data(cfg.dataset)
            net = fold_post_activation_bn(
                MainLogits(build_model(cfg.model, len(data.base_class_names))).eval())
            size, ex, calib = cfg.model.input_size, cfg.export, _int8_calibration(cfg, data)
            fp32 = export_onnx(net, Path(tmp) / f"{experiment}.onnx", size, fold=False)
            int8 = quantize_int8(fp32, Path(tmp) / f"{experiment}_int8.onnx",
                                 [x.numpy() for x in calib], ex.calib_method, ex.per_channel)
            files = _runtime_files({"fp32": fp32, "int8": int8}, net, size, calib, args, Path(tmp))
            models.append((f"{experiment} Psi ({cfg.model.checkpoint})", files, data, size))
        for k, run_dir in enumerate(map(Path, args.run_dirs)):
            models.append(_run_dir_model(run_dir, Path(tmp) / f"run{k}", args))
        return {"rows": _int8_rows(models, args)}


def _int8_calibration(cfg, data) -> list[torch.Tensor]:
    """The export stage's int8 calibration batches (export.calib_images training images drawn
    with the run's seed, batches of 32): every runtime's int8 sees the same images."""
    from rsnet.data.calibration import calibration_batches

    return [x for x, _ in calibration_batches(data.train, cfg.export.calib_images, data.mean,
                                              data.std, batch_size=32, seed=cfg.seed,
                                              setting="export.calib_images")]


def _runtime_files(onnx: dict[str, Path], net, size: int, calib: list[torch.Tensor], args,
                   out: Path) -> dict[str, dict[str, Path]]:
    """The files each of --runtimes runs for one model: ONNX Runtime and OpenVINO the ONNX
    files ``onnx``; ExecuTorch its own programs, made in ``out`` from ``net`` (the model the
    ONNX files hold) for batches up to --latency-batch, int8 calibrated on ``calib``."""
    from rsnet.deploy.runtimes import ExecuTorch

    files = {}
    for rt in args.runtimes:
        if rt == "executorch":
            out.mkdir(parents=True, exist_ok=True)
            files[rt] = ExecuTorch().files({p: out / f.name for p, f in onnx.items()}, net, size,
                                           args.latency_batch, calib)
        else:
            files[rt] = dict(onnx)
    return files


def _run_dir_model(run_dir: Path, out: Path, args) -> tuple:
    """A finished run's entry of :func:`bench_int8`: its exported ONNX files, and for
    ExecuTorch programs (in ``out``, not in the run directory) made from its rebuilt model."""
    onnx = {"fp32": run_dir / "export" / "model.onnx", "int8": run_dir / "export" / "model_int8.onnx"}
    missing = [str(f) for f in onnx.values() if not f.is_file()]
    if missing:
        raise RsnetError(f"bench int8: {run_dir} has no {', '.join(missing)}: a finished "
                         f"run with export=int8 is needed")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data, size = build_data(cfg.dataset), cfg.model.input_size
    net = rebuilt_run_model(run_dir, cfg, data) if "executorch" in args.runtimes else None
    files = _runtime_files(onnx, net, size, _int8_calibration(cfg, data), args, out)
    return run_label(run_dir.name), files, data, size


def rebuilt_run_model(run_dir: Path, cfg, data) -> torch.nn.Module:
    """The trained model of a finished run as its export stage handed it to every runtime
    (main logits, post-activation BNs folded), rebuilt by :func:`rsnet.stages.runs.trained_run_model`.
    ExecuTorch's programs are made from a torch model, not from the ONNX file, so a rebuild
    that does not give export/model.onnx's logits on a few test images (:func:`_check_rebuild`)
    is refused rather than silently benchmarked."""
    from rsnet.deploy.fold import fold_post_activation_bn
    from rsnet.deploy.onnx_io import MainLogits
    from rsnet.stages.runs import trained_run_model

    net = trained_run_model(run_dir, cfg, data, "bench int8")
    net = fold_post_activation_bn(MainLogits(net).eval())
    _check_rebuild(net, run_dir, data)
    return net


@torch.no_grad()
def _check_rebuild(net: torch.nn.Module, run_dir: Path, data, images: int = 16) -> None:
    """RsnetError unless ``net`` gives the logits of the run's export/model.onnx (ONNX
    Runtime) on its first ``images`` test images within :data:`REBUILD_ATOL`."""
    from rsnet.data.loader import BatchLoader
    from rsnet.deploy.onnx_io import onnx_logits, open_session

    x, _ = next(iter(BatchLoader(data.test, images, data.mean, data.std)))
    diff = (net(x) - onnx_logits(open_session(run_dir / "export" / "model.onnx", 2), [x])).abs().max().item()
    if not diff <= REBUILD_ATOL:  # NaN included
        raise RsnetError(f"bench int8: the model rebuilt from {run_dir} (its config.yaml, plan or "
                         f"pruned structure, checkpoints/model.pt) does not reproduce its "
                         f"export/model.onnx: max |logit diff| {diff:.3g} on {len(x)} test images "
                         f"(allowed {REBUILD_ATOL:g}); its ExecuTorch programs would not be this "
                         f"run's model")


def run_label(dirname: str) -> str:
    """A sweep run directory's name, short: each override's last key (a flag's group for
    ``enabled``), model.checkpoint left out (e.g. ``num_classes=10,recipe=carve,distill=True``)."""
    parts = []
    for item in dirname.split(","):
        key, _, value = item.partition("=")
        if key == "model.checkpoint":
            continue
        *parents, leaf = key.split(".")
        parts.append(f"{parents[-1] if leaf == 'enabled' and parents else leaf}={value}")
    return ",".join(parts)


def int8_predictor(runtime: str, path: Path, batch_size: int | None = None):
    """``path`` on one of --runtimes with 2 threads; ``batch_size`` fixes the batch where the
    runtime plans for one (OpenVINO, ExecuTorch; an ONNX Runtime session runs any batch)."""
    from rsnet.deploy.runtimes import ExecuTorch, OpenVINO

    if runtime == "ort":
        return ort_predictor(path)
    return {"openvino": OpenVINO, "executorch": ExecuTorch}[runtime]().open(
        path, threads=2, batch_size=batch_size)


def _int8_rows(models, args) -> list[dict]:
    """:func:`bench_int8`'s rows: accuracy per runtime and precision, then interleaved timing.
    A file another runtime cannot run (e.g. an int8 op its backend lacks) is recorded as
    ``<runtime>_<precision>_unsupported`` with None for its numbers and the rest still runs;
    ONNX Runtime, which ran every file at export, failing on one is an error."""
    from rsnet.deploy.runtimes import predict_logits, predictor_latency
    from rsnet.data.loader import BatchLoader
    from rsnet.train import split_metrics

    b, rows, preds = args.latency_batch, [], {}
    for label, files, data, size in progress.bar(models, desc="accuracy"):
        row = {"model": label, "test_images": len(data.test), "outputs": data.num_outputs}
        for rt in args.runtimes:
            for precision, path in files[rt].items():
                try:  # ONNX Runtime's session runs any batch: it is also the timed one
                    pred = int8_predictor(rt, path)
                    preds[(label, rt, precision)] = pred if rt == "ort" else int8_predictor(rt, path, b)
                except RsnetError as e:
                    if rt == "ort":  # the reference runtime ran these files at export: a fault
                        raise
                    row[f"{rt}_{precision}_acc"], row[f"{rt}_{precision}_unsupported"] = None, str(e)
                    continue
                batches = (x for x, _ in BatchLoader(data.test, 250, data.mean, data.std))
                m = split_metrics(predict_logits(pred, batches, 250), data.test, data.misc_label)
                row[f"{rt}_{precision}_acc"] = m["acc"]
                if "acc_local" in m:
                    row[f"{rt}_{precision}_acc_local"] = m["acc_local"]
        rows.append(row)
    times = {k: [] for k in preds}
    sizes = {label: size for label, _, _, size in models}
    for _ in progress.bar(range(args.repeats), desc="latency rounds"):
        for (label, rt, precision), pred in preds.items():
            times[(label, rt, precision)].append(
                predictor_latency(pred, sizes[label], b, runs=20, warmup=3))
    for row in rows:
        for rt in args.runtimes:
            ms = {p: float(np.median(times[(row["model"], rt, p)])) if (row["model"], rt, p) in times
                  else None for p in ("fp32", "int8")}
            row.update({f"{rt}_{p}_b{b}_ms": v for p, v in ms.items()})
            both = None not in ms.values()
            row[f"{rt}_int8_speedup"] = ms["fp32"] / ms["int8"] if both else None
            row[f"{rt}_int8_acc_change"] = row[f"{rt}_int8_acc"] - row[f"{rt}_fp32_acc"] if both else None
    return rows


def int8_markdown(result: dict) -> str:
    """A row per model and runtime ("-" where the runtime cannot run a file, named below)."""
    rows = result["rows"]
    b = next(k for k in rows[0] if "_fp32_b" in k).split("_b")[-1].removesuffix("_ms")
    lines = [f"| model | test images | runtime | fp32 acc | int8 acc | int8 - fp32 (points) | "
             f"fp32 b{b} (ms) | int8 b{b} (ms) | int8 speed-up |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]

    def cell(v, fmt: str, scale: float = 1, unit: str = "") -> str:
        return "-" if v is None else f"{scale * v:{fmt}}{unit}"

    for r in rows:
        for rt, name in INT8_RUNTIMES.items():
            if f"{rt}_fp32_acc" not in r:  # not among the run's --runtimes
                continue
            lines.append(f"| {r['model']} | {r['test_images']:,} | {name} | "
                         f"{cell(r[f'{rt}_fp32_acc'], '.2f', 100, ' %')} | "
                         f"{cell(r[f'{rt}_int8_acc'], '.2f', 100, ' %')} | "
                         f"{cell(r[f'{rt}_int8_acc_change'], '+.2f', 100)} | "
                         f"{cell(r[f'{rt}_fp32_b{b}_ms'], '.2f')} | {cell(r[f'{rt}_int8_b{b}_ms'], '.2f')} | "
                         f"{cell(r[f'{rt}_int8_speedup'], '.2f', unit='x')} |")
    notes = [f"- {r['model']}: {INT8_RUNTIMES[k.split('_')[0]]} cannot run its {k.split('_')[1]} "
             f"file: {v}" for r in rows for k, v in r.items() if k.endswith("_unsupported")]
    return "\n".join(lines + ([""] + notes if notes else []))


def bench_deploy(args) -> dict:
    """The pipeline up to its export stage, per run (every runtime:
    export/runtimes=[openvino,executorch]);
    the deployment metrics of each, and every run's latency relative to the first run (Psi)."""
    from rsnet.pipeline import run

    rows = []
    for spec in args.runs:
        experiment, *overrides = spec.split()
        if not any(o.startswith("export/runtimes") for o in overrides):
            overrides.append("export/runtimes=[openvino,executorch]")
        cfg = compose_cfg(f"experiment={experiment}", "progress=false", *overrides)
        if not cfg.export.int8:
            raise SystemExit(f"bench deploy: run {spec!r} has export={cfg.export.name}; add export=int8")
        run_dir = REPO / "outputs" / "bench" / "deploy" / "_".join(spec.split())
        m = run(cfg, run_dir)
        row = {"run": spec, "run_dir": str(run_dir.relative_to(REPO)),
               **{k: m.get(k) for k in DEPLOY_KEYS},
               **{k: v for k, v in m.items() if k.startswith("latency/") and k.endswith("_ms")},
               **{k: v for k, v in m.items() if k.endswith("/unsupported")}}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"rows": deploy_ratios(rows)}


def deploy_ratios(rows: list[dict]) -> list[dict]:
    """Adds to each row ``int8_speedup/<runtime>_int8_b<B>`` (the same runtime's fp32 latency
    over its int8 latency) and ``vs_first/<key>`` (latency and MACs over the first row's)."""
    for r in rows:
        for k in [k for k in r if k.startswith("latency/") and "_int8_b" in k]:
            fp32 = r.get(k.replace("_int8_b", "_fp32_b"))
            r[k.replace("latency/", "int8_speedup/").removesuffix("_ms")] = fp32 / r[k] if fp32 else None
        for k in [k for k in r if k.startswith("latency/") and k.endswith("_ms")]:
            ref = rows[0].get(k)
            r[k.replace("latency/", "vs_first/").removesuffix("_ms")] = r[k] / ref if ref else None
        r["vs_first/macs"] = r["model/macs"] / rows[0]["model/macs"]
    return rows


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def deploy_markdown(result: dict) -> str:
    """Per run and runtime: accuracy, fp32 and int8 latency, int8's speed-up over the same
    runtime's fp32; then each run's latency and MACs as a fraction of the first run's."""
    rows = result["rows"]
    batches = sorted({int(k.split("_b")[-1].removesuffix("_ms")) for r in rows for k in r
                      if k.startswith("latency/torch_fp32_b")})
    lines = ["| run | runtime | acc fp32 | acc int8 | " + " | ".join(
        f"b{b} fp32 (ms) | b{b} int8 (ms) | b{b} int8 speed-up" for b in batches) + " |",
        "|---|---|---:|---:|" + "---:|" * (3 * len(batches))]
    for r in rows:
        for label, key, acc, acc8 in RUNTIMES:
            if f"latency/{key}_fp32_b{batches[0]}_ms" not in r:
                continue
            cells = []
            for b in batches:
                cells += [_f(r.get(f"latency/{key}_fp32_b{b}_ms"), ".2f"),
                          _f(r.get(f"latency/{key}_int8_b{b}_ms"), ".2f"),
                          _f(r.get(f"int8_speedup/{key}_int8_b{b}"), ".2f") + ("x" if r.get(f"int8_speedup/{key}_int8_b{b}") else "")]
            lines.append(f"| `{r['run']}` | {label} | {_f(r.get(acc), '.4f')} | "
                         f"{_f(r.get(acc8), '.4f') if acc8 else '-'} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        lines += ["", f"Latency as a fraction of `{rows[0]['run']}`'s on the same runtime and batch "
                  "(MACs: the fraction of its MACs):", "",
                  "| run | MACs | " + " | ".join(f"{label} fp32 b{b} | {label} int8 b{b}"
                                               for label, key, _, _ in RUNTIMES[1:] for b in batches) + " |",
                  "|---|---:|" + "---:|" * (2 * len(batches) * (len(RUNTIMES) - 1))]
        for r in rows[1:]:
            cells = [_f(r.get(f"vs_first/{key}_{kind}_b{b}"), ".3f") for _, key, _, _ in RUNTIMES[1:]
                     for b in batches for kind in ("fp32", "int8")]
            lines.append(f"| `{r['run']}` | {r['vs_first/macs']:.3f} | " + " | ".join(cells) + " |")
    flags = result["machine"].get("cpu_flags") or {}
    lines += [f"- `{r['run']}`: {k.split('_int8/')[0]} int8 does not run: {v}" for r in rows
              for k, v in r.items() if k.endswith("/unsupported")]
    lines += ["", "CPU: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())]
    return "\n".join(lines)


def plan_markdown(result: dict) -> str:
    lines = ["| model | px | C | lambda | N | factors per macro-layer | params | budget used | "
             "analyse + solve (s) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['input']} | {r['C']} | {r['lambda']} | {r['N']} | "
                     f"{' '.join(f'{f:g}' for f in r['factors'])} | {r['params']:,} | "
                     f"{r['used']:.2%} | {r['analyze_s']:.2f} + {r['solve_s']:.2f} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = ["| model | mode | rsnet img/s | bare step img/s | reference img/s | rsnet/bare | "
             "rsnet/reference | speed-up vs fp32 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        speedup = f"{r['speedup_vs_fp32']:.2f}x" if "speedup_vs_fp32" in r else ""
        lines.append(f"| {r['model']} | {r['mode']} | {r['rsnet']:.0f} | {r['bare']:.0f} | "
                     f"{r['reference']:.0f} | {r['rsnet_vs_bare']:.2f} | "
                     f"{r['rsnet_vs_reference']:.2f} | {speedup} |")
    if "test_acc" in result:
        acc = result["test_acc"]
        lines.append(f"\nResNet-20 from scratch, {result['accuracy_epochs']} epoch(s), test accuracy: " +
                     ", ".join(f"{m} {a:.4f}" for m, a in acc.items()))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("section", choices=["train", "plan", "deploy", "widths", "compile", "latency", "int8"], nargs="?",
                   default="train")
    p.add_argument("--experiments", nargs="+", default=["googlenet_rs", "mobilenet_rs"],
                   help="widths: thesis experiments whose Psi and Psi' are timed; int8: whose "
                        "released Psi is quantized")
    p.add_argument("--run-dirs", nargs="*", default=[],
                   help="int8: finished run directories with export/model.onnx and model_int8.onnx "
                        "(and, for executorch, config.yaml, checkpoints/model.pt and any plan.json)")
    p.add_argument("--runtimes", nargs="+", choices=list(INT8_RUNTIMES), default=list(INT8_RUNTIMES),
                   help="int8: runtimes measured, each against its own fp32 (ort: ONNX Runtime; "
                        "executorch: XNNPACK, its own .pte programs)")
    p.add_argument("--targets", nargs="+", default=["generic", "x86_avx2", "x86_avx512"],
                   help="widths: deployment targets (conf/target/)")
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
    sections = {"train": (bench_train, markdown), "plan": (bench_plan, plan_markdown),
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

"""bench train and bench compile: training images/s, eager and through torch.compile."""

from __future__ import annotations

import copy
import json
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
from torch._inductor.utils import clear_caches

from rsnet import progress
from rsnet.data import build_data, data_root
from rsnet.data.sources import default_cache_dir
from rsnet.models import build_model
from rsnet.stages.train import fit_from_config
from rsnet.train import main_logits, predict, resolve_runtime

from .common import compose_cfg

MODES = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16+cl": ("bf16", True),
         "fp16+cl": ("fp16", True)}


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


def train_markdown(result: dict) -> str:
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

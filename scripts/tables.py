"""Tables from finished runs' metrics.json (markdown and CSV; the thesis's also LaTeX and plots).

    python scripts/tables.py prune <run dir or sweep dir> ...   # pruning comparison
    python scripts/tables.py runs  <run dir or sweep dir> ...   # one row per run, main metrics
    python scripts/tables.py thesis <run dir or sweep dir> ... [--out DIR]
    python scripts/tables.py stats  <run dir or sweep dir> ... [--out DIR] [--plot FILE]
    python scripts/tables.py curve  <run dir> ... [--out DIR]     # learning curves
    python scripts/tables.py gmp    <run dir or sweep dir> ... [--csv FILE]
    python scripts/tables.py records <run dir or sweep dir> ... --out runs.jsonl
    python scripts/tables.py deploy <run dir or sweep dir> ... --runtimes FILE [--csv FILE]
    python scripts/tables.py rerun  <first runs> <their reruns> [--csv FILE]

Every kind but curve also reads runs.jsonl files (records: the finished runs' metrics and
configs, one JSON line each) in place of run directories, so a study's tables can be rebuilt,
and merged with later runs, after its run directories are gone.

thesis: (1) per model and N, Psi (the C-way baseline on the subset, from runs given a
model.checkpoint), Psi' by rs from scratch and carved + fine-tuned, uniform scaling at the same
budget (and any other run): cost, local / global / raw accuracy, misc share, the constant-misc
predictor's global accuracy, time to synthesize (plan + training); (2) compression (runs with
export or magnitude pruning): sparsity, ONNX fp32 / int8 size (plain and gzip -9), accuracy and
batch-1 latency.
--out DIR writes thesis.md, thesis.tex, thesis_{synthesis,compression}.csv and the plots
acc_vs_params.png, acc_vs_macs.png (local accuracy, one panel per N, one series per network).

stats: conclusions from several seeds. (1) One row per model, dataset, N, network and lambda
(everything but the seed), plus "Psi (mapped N-way)" from the runs' baseline/mapped/* metrics:
"mean ± sd (n seeds)" of the accuracies (plain and calibrated), open-set AUROC / FPR95 and cost.
(2) Paired differences A - B matched seed by seed, with a 95 % Student-t interval and a verdict
only where it excludes 0: rs vs uniform, carved vs from scratch, and Psi' (carved where it
exists) vs Psi fine-tuned and vs Psi mapped. Runs of one row and seed count once; if their values
differ, that seed is left out and the exit status is 1. (3) The verdicts tallied per comparison,
per metric and over all, beside the number of intervals that 95 % lets exclude 0 by chance
alone (5 % of them): many uncorrected intervals give some verdicts by chance, and the tally shows
whether there are more than that. --out DIR writes stats.md,
stats_rows.csv (one line per row and metric) and stats_pairs.csv; --plot FILE draws the paired
differences that have an interval as a forest plot, one panel per metric.

gmp: gradual magnitude pruning (scripts/evidence/gmp.sh). One row per model, target sparsity,
schedule (polynomial, constant, or dense: the unpruned reference) and augmentation (on / off):
fp32 and int8 test accuracy as "mean ± sd (n seeds)", the measured sparsity of the conv + linear
weights, the fp32 ONNX and int8 files' bytes, plain and gzip -9 (the zeros compress), the gzip
sizes as fractions of the fp32 file, and the number of unfinished runs. stats pairs the
schedules ("polynomial vs constant"), every pruned row with its dense reference ("magnitude-pruned vs
dense") and every pruned row trained with augmentation with the dense reference trained without
it ("pruned with augmentation vs dense without") seed by seed on test/acc and int8/test/acc.

deploy: a pruning study's deployment measures in one table (scripts/evidence/vgg_featuremap.sh:
the edge-deployment proposal's accuracy, parameters, FLOPs, time per image and file size). One
row per model, dataset, N and network (the stats rows): fp32 and int8 test accuracy as "mean ±
sd (n seeds)", parameters, MACs and the ONNX fp32 / int8 files' bytes (means over the seeds),
and from --runtimes (a ``bench.py int8 --run-dirs`` JSON) each runtime's fp32 and int8 time per
image at its batch, the mean over the row's runs that the bench timed (their seeds in "timed
seeds"; "-" where none was). A bench row that matches no run is an error: the file and the
runs are from different studies.

rerun: the same runs (same labels) run twice, e.g. on another machine: run by run the first
and the rerun's test accuracies (fp32, int8, local) and machines, and per metric the mean
difference with its 95 % interval, beside the seed-to-seed sd of the same networks in the first
runs: does a rerun move a result as much as another seed does, or in one direction?

A sweep directory is searched for run directories (folders holding config.yaml); a run
without metrics.json (killed, failed or still running) shows as "missing", never as zeros;
"-" marks a value a finished run does not have (e.g. no int8 without export=int8).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

import yaml

from rsnet.errors import RsnetError
from rsnet.records import Record, run_label
from rsnet.records import read_records as records_in

COLUMNS = {
    "prune": [("run", None), ("criterion", "prune/criterion"), ("init", "prune/init"),
              ("KD", "cfg:train.distill.enabled"),
              ("params", "model/params"), ("MACs", "model/macs"), ("epochs", "train/epochs"),
              ("test acc", "test/acc"), ("baseline test acc", "baseline/test/acc"),
              ("train time (s)", "train/time_s"), ("steps", "prune/steps"),
              ("int8 test acc", "int8/test/acc"), ("ONNX bytes", "export/onnx_bytes"),
              ("int8 bytes", "int8/bytes"), ("ORT fp32 b1 (ms)", "latency/ort_fp32_b1_ms"),
              ("ORT int8 b1 (ms)", "latency/ort_int8_b1_ms"),
              ("latency target b1 (ms)", "derived:latency target"),
              ("planned b1 (ms)", "plan/latency_predicted_ms"),
              ("ORT fp32 b1 / planned", "derived:measured / planned"),
              ("NetAdapt table b1 (ms)", "netadapt/final"),
              ("ORT fp32 b1 / NetAdapt table", "derived:measured / NetAdapt table"),
              ("images seen", "train/images_seen"),
              ("images between steps", "prune/step_images_seen"),
              ("NetAdapt short-term images", "netadapt/short_term_images")],
    "runs": [("run", None), ("model", "model/name"), ("N", "data/num_outputs"),
             ("policy", "plan/policy"), ("params", "model/params"), ("MACs", "model/macs"),
             ("test acc", "test/acc"), ("local", "test/acc_local"), ("global", "test/acc_global"),
             ("raw", "test/acc_raw"), ("misc share", "test/misc_share")],
}


def run_dirs(paths: list[Path]) -> list[Path | Record]:
    """The runs under ``paths``: run directories, sweep directories searched for them, and
    runs.jsonl files of :class:`Record` lines; none at all (a typo, an empty sweep) is an error,
    not an empty table."""
    found: list[Path | Record] = []
    for p in paths:
        if p.is_file() and p.suffix == ".jsonl":
            found += read_records(p)
        elif (p / "config.yaml").exists():
            found.append(p)
        elif p.is_dir():
            found += sorted(d.parent for d in p.rglob("config.yaml") if d.parent.name != ".hydra")
        else:
            print(f"warning: {p} is not a run or sweep directory", file=sys.stderr)
    if not found:
        sys.exit(f"tables.py: no runs in {' '.join(map(str, paths))} (a run directory has "
                 f"config.yaml; give run or sweep directories or runs.jsonl files)")
    return found


def fmt(v) -> str:
    if v is None:
        return "missing"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def conf(cfg: dict, dotted: str):
    """A config value by its dotted path; None where the config has no such key."""
    v = cfg
    for part in dotted.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def criterion(cfg: dict) -> str | None:
    """The run's filter-importance criterion: its name (compression/criterion=...), or the plain
    string that runs made before the criteria became a config group have."""
    c = conf(cfg, "compression.criterion")
    return c.get("name") if isinstance(c, dict) else c


def _ratio(m: dict, a: str, b: str) -> float | None:
    return m[a] / m[b] if number(m.get(a)) and number(m.get(b)) and m[b] else None


def _latency_target(m: dict) -> float | None:
    """The batch-1 latency a run was cut to: a latency budget's, or NetAdapt's target in ms."""
    if m.get("plan/budget_unit") == "latency":
        return m.get("plan/budget")
    return m.get("netadapt/target") if m.get("netadapt/unit") == "ms" else None


# computed columns: what a latency plan promised against what the export stage measured
DERIVED = {"latency target": _latency_target,
           "measured / planned": lambda m: _ratio(m, "latency/ort_fp32_b1_ms", "plan/latency_predicted_ms"),
           "measured / NetAdapt table": lambda m: _ratio(m, "latency/ort_fp32_b1_ms", "netadapt/final")}


def lookup(m: dict, cfg: dict, key: str):
    """A metrics.json value, a config value for keys written "cfg:dotted.path", or a
    :data:`DERIVED` value for keys written "derived:name"."""
    if key.startswith("derived:"):
        return DERIVED[key[8:]](m)
    return conf(cfg, key[4:]) if key.startswith("cfg:") else m.get(key)


def read_records(path: Path) -> list[Record]:
    """The records of a runs.jsonl file; one that is not a record stops the command."""
    try:
        return records_in(path)
    except RsnetError as e:
        sys.exit(str(e))


def load(d: Path | Record) -> tuple[str, dict, dict]:
    """A run's label, metrics ({} when it has not finished) and resolved config."""
    if isinstance(d, Record):
        return d.label, d.metrics, d.config
    m = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").exists() else {}
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    return run_label(cfg.get("name", d.parent.name), d), m, cfg


def rows(kind: str, dirs: list[Path]) -> list[list[str]]:
    out = []
    for d in dirs:
        label, m, cfg = load(d)
        if not m and kind == "prune":  # show what the missing run was meant to be
            pruned = conf(cfg, "compression.name") == "prune"
            m = {"prune/criterion": criterion(cfg) if pruned else "none"}
        out.append([label] + [fmt(lookup(m, cfg, key)) if key else "" for _, key in COLUMNS[kind]][1:])
        if kind == "prune" and "prune/criterion" not in m:
            out[-1][1] = "none (plan built from scratch)" if "plan/policy" in m else "none (unpruned)"
            out[-1][2] = "-"
        elif kind == "prune" and m.get("plan/policy") in ("netadapt", "morphnet"):  # search-style
            out[-1][1] = f"{m['plan/policy']} ({m['prune/criterion']})"
    return out


# The thesis's tables: (title, columns after model / dataset / N / network / lambda).
THESIS = {
    "synthesis": ("Synthesis: Psi, Psi' and uniform scaling at the same budget", [
        ("params", "model/params"), ("MACs", "model/macs"), ("local", "test/acc_local"),
        ("global", "test/acc_global"), ("raw", "test/acc_raw"), ("misc share", "test/misc_share"),
        ("const. misc global", "test/const_misc_global"), ("calibrated local", "test/cal/acc_local"),
        ("calibrated global", "test/cal/acc_global"), ("unseen AUROC", "openset/unseen/auroc_misc"),
        ("unseen FPR95", "openset/unseen/fpr95_misc"), ("images seen", "train/images_seen"),
        ("synthesis time (s)", "synthesis/time_s")]),
    "compression": ("Compression: sparsity and int8", [
        ("sparsity", "sparsity/overall"), ("params", "model/params"), ("fp32 acc", "test/acc"),
        ("ONNX fp32 bytes", "export/onnx_bytes"), ("fp32 gzip bytes", "export/onnx_gzip_bytes"),
        ("int8 bytes", "int8/bytes"), ("int8 gzip bytes", "int8/gzip_bytes"), ("int8 acc", "int8/test/acc"),
        ("torch fp32 b1 ms", "latency/torch_fp32_b1_ms"), ("ORT fp32 b1 ms", "latency/ort_fp32_b1_ms"),
        ("ORT int8 b1 ms", "latency/ort_int8_b1_ms")]),
}
THESIS_KEYS = ["model", "dataset", "N", "network", "lambda"]
MAPPED = "baseline/mapped/"  # Psi evaluated as an N-way model, in the run's own metrics
PSI_CWAY, PSI_MAPPED = "Psi (C-way baseline)", "Psi (mapped N-way)"
POLICY_ORDER = {"rs": 1, "uniform": 3}
CONF = Path(__file__).resolve().parents[1] / "conf"


def recipe_epochs() -> dict[str, int]:
    """Each recipe's default training epochs (carve, finetune: conf/recipe/; scratch:
    conf/train/scratch.yaml). A run trained for other epochs is another recipe: its row's name
    says how many (", 30 epochs")."""
    read = lambda rel: yaml.safe_load((CONF / rel).read_text())  # noqa: E731
    return {"carve": read("recipe/carve.yaml")["train"]["epochs"],
            "finetune": read("recipe/finetune.yaml")["train"]["epochs"],
            "scratch": read("train/scratch.yaml")["epochs"]}


def network(cfg: dict) -> tuple[float, str]:
    """(sort rank, name) of what a run built, from its config (a missing run has no metrics)."""
    policy, comp = conf(cfg, "scaling.name") or "none", conf(cfg, "compression.name")
    if comp in SEARCHES:  # the search chose the widths (scaling=none) and carved them
        rank = 4.5
        name = SEARCHES[comp] + (f" ({conf(cfg, 'compression.netadapt.resource')})"
                                 if comp == "netadapt" else "") + f", carved ({criterion(cfg)}) + fine-tuned"
    elif policy == "none":
        rank, name = 6, "full width, " + ("fine-tuned" if conf(cfg, "model.checkpoint") else "from scratch")
        if conf(cfg, "model.checkpoint") and conf(cfg, "train.epochs") == 0:
            name = AS_GIVEN  # its weights evaluated and exported as they are
    else:
        rank = POLICY_ORDER.get(policy, 5) + (comp == "prune")
        name = ("Psi' (rs)" if policy == "rs" else policy) + (
            f", carved ({criterion(cfg)}) + fine-tuned" if comp == "prune"
            else ", from scratch")
        steps = conf(cfg, "compression.steps") or 1
        if comp == "prune" and steps > 1:  # iterative: prune, fine-tune, repeat - another recipe
            rank += 0.03
            name += f", {steps} steps"
        if conf(cfg, "scaling.budget.unit") == "latency":  # planned against the latency table
            name += LATENCY_BUDGET
        multiple = conf(cfg, "scaling.widths.round_to")
        if multiple:  # a deployment target's widths (target=x86_avx512): another plan
            name += f", widths x{multiple}" + (NARROW_KEPT if conf(cfg, "scaling.widths.keep_narrow") else "")
    if comp == "magnitude":  # after the same network without it
        rank += 0.5 + 0.1 * (schedule(cfg) == "constant")
        name += f", magnitude-pruned {conf(cfg, 'compression.sparsity.final_sparsity')}"
        name += CONSTANT if schedule(cfg) == "constant" else ""
    if conf(cfg, "train.distill.enabled"):  # a different recipe: its own row
        rank += 0.25 + 0.02 * bool(conf(cfg, "train.distill.teacher"))
        name += FROM_RUN if conf(cfg, "train.distill.teacher") else ", distilled"
    name += data_setting(cfg)
    if augmentation(cfg) != "on":  # another training recipe: a row of its own
        rank += 0.05
        name += f", augmentation {augmentation(cfg)}"
    recipe = "carve" if comp == "prune" or comp in SEARCHES else "finetune" if policy == "none" else "scratch"
    epochs = trained_epochs(cfg)
    if epochs is not None and epochs != RECIPE_EPOCHS[recipe] and name != AS_GIVEN:
        rank += 0.01
        name += f", {epochs} epoch{'s' * (epochs != 1)}"
    return rank, name


def trained_epochs(cfg: dict) -> int | None:
    """All the epochs a run trained: train.epochs, plus an iterative pruning run's fine-tuning
    between its steps (compression.step_epochs after each but the last, when the pruned network
    inherits its weights), so that iterative and one-shot rows of equal training share a suffix."""
    epochs = conf(cfg, "train.epochs")
    steps = conf(cfg, "compression.steps") or 1
    if (epochs is not None and conf(cfg, "compression.name") == "prune" and steps > 1
            and (conf(cfg, "compression.init") or "inherit") == "inherit"):
        between = conf(cfg, "compression.step_epochs")
        epochs += (steps - 1) * (1 if between is None else between)  # 1: rsnet.config's default
    return epochs


RECIPE_EPOCHS = recipe_epochs()
EPOCHS_SUFFIX = re.compile(r", (\d+) epochs?$")


AS_GIVEN = "full width, trained weights as given (no training)"  # train.epochs=0, model.checkpoint
SEARCHES = {"netadapt": "NetAdapt", "morphnet": "MorphNet"}  # compression methods that plan
LATENCY_BUDGET = ", latency budget"  # scaling.budget.unit=latency: one-shot against the table
CONSTANT = ", constant sparsity"
MAGNITUDE = re.compile(r", magnitude-pruned [^,]+(, constant sparsity)?")  # the sparsity and schedule
AUGMENTATION = re.compile(r", augmentation ([^,]+)")  # trained without (part of) the augmentation
AUGMENTED = "augmentation on vs "  # the pair of a row with AUGMENTATION and its augmented twin
FROM_RUN = ", distilled from a run"  # train.distill.teacher: a finished run's model taught it


def data_setting(cfg: dict) -> str:
    """The run's data, where it is not the default, as a row-name suffix: more misc training
    images (", misc x3") or the thesis's all-misc test set (", all-misc test"). Psi evaluated by
    such a run is evaluated on other data (other test images, a threshold calibrated on other
    validation images), so its rows carry the same suffix."""
    suffix, multiplier = "", conf(cfg, "dataset.misc_multiplier")
    if multiplier not in (None, 1, 1.0):
        suffix += f", misc x{multiplier:g}"
    if conf(cfg, "dataset.misc_test") == "all":  # the thesis's test set: every out-of-scope image
        suffix += ", all-misc test"
    return suffix


def schedule(cfg: dict) -> str | None:
    """A magnitude-pruned run's sparsity schedule: "constant" where it begins and ends at the
    same epoch (pruned to the final sparsity at that step, masks kept), else "polynomial"."""
    if conf(cfg, "compression.name") != "magnitude":
        return None
    begin, end = conf(cfg, "compression.sparsity.begin_epoch"), conf(cfg, "compression.sparsity.end_epoch")
    return "constant" if begin is not None and begin == end else "polynomial"


def augmentation(cfg: dict) -> str:
    """The training augmentation: "on" (the dataset's crop and flip), "off", "crop only" or
    "flip only"; a config without the keys (older runs) had it on."""
    crop = conf(cfg, "dataset.augment.crop_padding") != 0
    flip = conf(cfg, "dataset.augment.flip") is not False
    return "on" if crop and flip else "crop only" if crop else "flip only" if flip else "off"


def thesis_entries(dirs: list[Path]) -> list[dict]:
    """One entry per run, plus one Psi entry per distinct baseline evaluation on a subset."""
    entries, psi_seen = [], set()
    for d in dirs:
        label, m, cfg = load(d)
        rank, name = network(cfg)
        common = {"model": m.get("model/name") or conf(cfg, "model.name"),
                  "dataset": m.get("dataset/name") or conf(cfg, "dataset.name"),
                  "N": m.get("data/num_outputs") or conf(cfg, "dataset.num_classes")}
        scaled = conf(cfg, "scaling.name") not in (None, "none")
        thesis_rule = conf(cfg, "scaling.budget.rule") in ("thesis", "thesis_alt")
        lam = conf(cfg, "scaling.budget.lam") if scaled and thesis_rule else None
        if "train/time_s" in m:
            m = {**m, "synthesis/time_s": m.get("plan/time_s", 0.0) + m["train/time_s"]}
        compressed = conf(cfg, "export.name") not in (None, "none") or \
            conf(cfg, "compression.name") == "magnitude"
        data = data_setting(cfg)
        entries.append({**common, "network": name, "rank": rank, "lambda": lam, "m": m, "run": label,
                        "seed": conf(cfg, "seed"), "data": data,
                        "tables": ["synthesis", "compression"] if compressed else ["synthesis"]})
        if "baseline/test/acc_local" in m:
            psi = {"model/params": m.get("baseline/params"), "model/macs": m.get("baseline/macs"),
                   **{f"test/{k}": m.get(f"baseline/test/{k}") for k in
                      ("acc_local", "acc_global", "acc_raw", "misc_share", "const_misc_global")}}
            key = (common["model"], common["dataset"], common["N"], json.dumps(psi, sort_keys=True))
            if key not in psi_seen:
                psi_seen.add(key)
                entries.append({**common, "network": PSI_CWAY + data, "rank": 0, "lambda": None,
                                "m": psi, "run": label, "tables": ["synthesis"]})
        if f"{MAPPED}test/acc_local" in m:  # Psi as an N-way model: the honest reference
            psi = {"model/params": m.get("baseline/params"), "model/macs": m.get("baseline/macs"),
                   **{k.removeprefix(MAPPED): v for k, v in m.items() if k.startswith(MAPPED)}}
            key = (common["model"], common["dataset"], common["N"], json.dumps(psi, sort_keys=True))
            if key not in psi_seen:
                psi_seen.add(key)
                entries.append({**common, "network": PSI_MAPPED + data, "rank": 0.5, "lambda": None,
                                "m": psi, "run": label, "seed": conf(cfg, "seed"),
                                "tables": ["synthesis"]})
    return sorted(entries, key=entry_order)


def entry_order(e: dict) -> tuple:
    """Tables list model, dataset, N, then Psi before Psi' before uniform, then lambda."""
    return (str(e["model"]), str(e["dataset"]), e["N"] if isinstance(e["N"], int) else 10**9,
            e["rank"], e["lambda"] or 0, e["run"])


def thesis_table(entries: list[dict], table: str) -> tuple[list[str], list[list[str]]]:
    columns = THESIS[table][1]
    header = THESIS_KEYS + [c for c, _ in columns] + ["run"]
    out = []
    for e in entries:
        if table not in e["tables"]:
            continue
        m = e["m"]
        values = ["missing" if not m else "-" if m.get(key) is None else fmt(m[key]) for _, key in columns]
        out.append([fmt(e[k]) if e[k] is not None else "-" for k in THESIS_KEYS] + values + [e["run"]])
    return header, out


def markdown(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table]) + "\n"


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
       "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}"}


def latex(header: list[str], table: list[list[str]]) -> str:
    """A booktabs tabular: text columns left, numbers right."""
    def row(cells: list[str]) -> str:
        return " & ".join("".join(TEX.get(ch, ch) for ch in c) for c in cells) + r" \\"
    numbers = len(header) - len(THESIS_KEYS) - 1
    return "\n".join([r"\begin{tabular}{" + "l" * len(THESIS_KEYS) + "r" * numbers + "l}", r"\toprule",
                      row(header), r"\midrule", *map(row, table), r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_csv(path: Path, header: list[str], table: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + table)
    path.write_text(buf.getvalue())


def pyplot():
    """matplotlib's pyplot on the file-only backend (imported on first use: tables need no plots)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(entries: list[dict], key: str, xlabel: str, path: Path) -> None:
    """Local accuracy vs cost, one panel per N, one series per model and network (log x)."""
    import matplotlib.ticker
    plt = pyplot()

    points = [e for e in entries if isinstance(e["m"].get(key), (int, float))
              and isinstance(e["m"].get("test/acc_local"), (int, float))]
    ns = sorted({e["N"] for e in points}, key=lambda n: n if isinstance(n, int) else 10**9) or ["-"]
    names = sorted({f"{e['model']}: {e['network']}" for e in points})
    fig, axes = plt.subplots(1, len(ns), figsize=(4.5 * len(ns), 3.5 + 0.2 * len(names)),
                             squeeze=False, layout="constrained")
    for ax, n in zip(axes[0], ns):
        for i, name in enumerate(names):
            xy = sorted((e["m"][key], e["m"]["test/acc_local"]) for e in points
                        if e["N"] == n and f"{e['model']}: {e['network']}" == name)
            if xy:
                ax.plot(*zip(*xy), marker="o", color=f"C{i % 10}", label=name)
        ax.set(xscale="log", xlabel=xlabel, ylabel="local accuracy", title=f"N = {n}")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels would overlap
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=f"C{i % 10}", marker="o", label=n) for i, n in enumerate(names)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)), fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def thesis(paths: list[Path], out: Path | None) -> None:
    entries = thesis_entries(run_dirs(paths))
    md, tex = [], []
    for table, (title, _) in THESIS.items():
        header, body = thesis_table(entries, table)
        # the run folder (the last column) goes to the CSV only: sweep folder names are long
        md.append(f"## {title}\n\n" + markdown(header[:-1], [r[:-1] for r in body]))
        tex.append(f"% {title}\n" + latex(header[:-1], [r[:-1] for r in body]))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            write_csv(out / f"thesis_{table}.csv", header, body)
    print("\n".join(md))
    if out:
        (out / "thesis.md").write_text("\n".join(md))
        (out / "thesis.tex").write_text("\n".join(tex))
        plot(entries, "model/params", "parameters", out / "acc_vs_params.png")
        plot(entries, "model/macs", "MACs", out / "acc_vs_macs.png")


CURVE = [("epoch", "epoch"), ("train loss", "train/loss"), ("train acc", "train/acc"),
         ("val acc", "val/acc"), ("val acc5", "val/acc5"), ("val loss", "val/loss"), ("lr", "lr"),
         ("images/s", "train/images_per_s"), ("epoch s", "train/epoch_s")]


def history_of(d: Path) -> tuple[str, list[dict], int | None, bool]:
    """(run name, epoch rows, planned epochs, finished) of a run: history.json when training
    ended, else the rows saved in its last epoch checkpoint (a run still training, or killed)."""
    cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
    name, planned = conf(cfg, "name") or d.name, conf(cfg, "train.epochs")
    if (d / "history.json").exists():
        return name, json.loads((d / "history.json").read_text()), planned, True
    last = d / "checkpoints" / "last.pt"
    if not last.exists():
        return name, [], planned, False
    import torch
    return name, torch.load(last, map_location="cpu", weights_only=False)["history"], planned, False


def curve(paths: list[Path], out: Path | None) -> None:
    """One learning-curve table per run (markdown; with out, <run>.csv and curves.png)."""
    runs = []
    for d in paths:
        name, rows, planned, finished = history_of(d)
        state = "finished" if finished else f"in progress: {len(rows)} of {planned} epochs"
        table = [[fmt(r.get(k)) for _, k in CURVE] for r in rows]
        print(f"## {d} ({state})\n\n" + markdown([c for c, _ in CURVE], table))
        runs.append((name, rows))
        if out:
            out.mkdir(parents=True, exist_ok=True)
            write_csv(out / f"{name}.csv", [c for c, _ in CURVE], table)
    if out and runs:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        for i, (name, rows) in enumerate(runs):
            ax.plot([r["epoch"] for r in rows], [r["val/acc"] for r in rows], marker="o",
                    color=f"C{i}", label=f"{name} val top-1")
        ax.set(xlabel="epoch", ylabel="validation top-1", title="learning curves")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(out / "curves.png", dpi=120)
        plt.close(fig)


# stats: the write-up draws conclusions only from several seeds (mean ± sd per row, paired CIs).
STATS_METRICS = ["test/acc_local", "test/acc_global", "test/acc_raw", "test/cal/acc_local",
                 "test/cal/acc_global", "openset/seen/auroc_misc", "openset/unseen/auroc_misc",
                 "openset/unseen/fpr95_misc", "model/params", "model/macs", "train/images_seen",
                 "test/acc", "int8/test/acc", "sparsity/overall", "latency/ort_fp32_b1_ms",
                 "plan/latency_predicted_ms", "netadapt/final", "netadapt/short_term_images"]
PAIR_METRICS = ["test/acc_local", "test/cal/acc_local", "openset/unseen/auroc_misc"]
# magnitude pruning keeps the classes (e.g. all 10 of CIFAR-10, no misc): plain and int8 accuracy
PRUNED_AUGMENTED = "pruned with augmentation vs dense without"
SPARSE_PAIRS = ("polynomial vs constant", "magnitude-pruned vs dense", PRUNED_AUGMENTED)
SPARSE_PAIR_METRICS = PAIR_METRICS + ["test/acc", "int8/test/acc"]
# a latency-budgeted plan against NetAdapt to the same latency: accuracy and the measured latency
ONE_SHOT = "one-shot vs NetAdapt"
ONE_SHOT_METRICS = ["test/acc", "latency/ort_fp32_b1_ms"]
RS, UNIFORM = "Psi' (rs), from scratch", "uniform, from scratch"
PSI_FT = "full width, fine-tuned"
CI_METHOD = ("95 % CI: mean ± t(0.975, n-1) · sd / √n of the per-seed differences A - B (Student t; "
             "sd with n-1; only seeds both rows have); a verdict only where the interval excludes 0, "
             "with three seeds or more and differences that are not all equal (sd 0: no interval "
             "to judge by).")
Row = tuple  # THESIS_KEYS values: model, dataset, N, network, lambda (all but the seed)


def number(v) -> bool:
    """A metric value to average (bools are flags, strings are names)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def seed_order(item: tuple) -> tuple:
    """Sort (seed, ...) items by seed: integers numerically, anything else (None) after them."""
    s = item[0]
    return (not isinstance(s, int), s if isinstance(s, int) else str(s))


def stats_entries(dirs: list[Path]) -> list[dict]:
    """Finished runs (thesis_entries, with their seeds) plus a Psi (mapped N-way) entry from every
    run that evaluated it. The C-way Psi entry is left out: thesis_entries keeps one per distinct
    value, not one per seed."""
    entries = thesis_entries(dirs)
    unfinished = sum(not e["m"] for e in entries)
    if unfinished:
        print(f"note: {unfinished} run(s) without metrics.json left out", file=sys.stderr)
    runs = [e for e in entries if e["m"] and not e["network"].startswith((PSI_CWAY, PSI_MAPPED))]
    psi = [{**e, "network": PSI_MAPPED + e["data"], "rank": 0, "lambda": None,
            "m": {k.removeprefix(MAPPED): v for k, v in e["m"].items() if k.startswith(MAPPED)}}
           for e in runs if f"{MAPPED}test/acc_local" in e["m"]]
    return sorted(runs + psi, key=entry_order)


def differing(a: dict, b: dict, metrics: list[str]) -> list[str]:
    """The metrics on which two runs' values differ (floats beyond rounding noise)."""
    def eq(x, y) -> bool:
        return x == y or (number(x) and number(y) and math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12))
    return [k for k in metrics if not eq(a.get(k), b.get(k))]


def by_seed(entries: list[dict], keys: list[str] = THESIS_KEYS,
            metrics: list[str] = STATS_METRICS) -> tuple[dict[Row, dict], list[str]]:
    """{row: {seed: metrics}} in table order, and the errors where runs of a row and seed disagree.

    Runs of one row and seed are one sample: the same run found twice, or Psi evaluated again by
    every run of that seed, counts once. Differing values mean the row mixes configurations (or a
    bug), so that seed is left out of the row rather than one of the values picked arbitrarily."""
    groups: dict[Row, dict] = {}
    first: dict[tuple, str] = {}
    errors = []
    for e in entries:
        row, seed = tuple(e[k] for k in keys), e["seed"]
        seeds, values = groups.setdefault(row, {}), {k: e["m"].get(k) for k in metrics}
        if seed not in seeds:
            seeds[seed], first[row, seed] = values, e["run"]
        elif seeds[seed] is not None and (diff := differing(seeds[seed], values, metrics)):
            errors.append(f"error: {' / '.join(map(str, row))}, seed {seed}: {first[row, seed]} and "
                          f"{e['run']} differ in {', '.join(diff)}; seed {seed} left out of this row")
            seeds[seed] = None
    return {row: {s: m for s, m in sorted(seeds.items(), key=seed_order) if m is not None}
            for row, seeds in groups.items()}, errors


def mean_sd(xs: list[float]) -> tuple[int, float | None, float | None]:
    """n, mean and sample standard deviation (n-1; None for n < 2)."""
    n = len(xs)
    return n, statistics.fmean(xs) if n else None, statistics.stdev(xs) if n > 1 else None


def seed_stat(seeds: dict, k: str) -> tuple[int, float | None, float | None]:
    """:func:`mean_sd` of metric ``k`` over a row's seeds ({seed: metrics}) that have it."""
    return mean_sd([m[k] for m in seeds.values() if number(m.get(k))])


def mean_sd_text(n: int, mean: float | None, sd: float | None) -> str:
    """A "mean ± sd (n)" cell ("-" without values; sd "-" for one value)."""
    return f"{fmt(mean)} ± {'-' if sd is None else fmt(sd)} ({n})" if n else "-"


def row_keys(row: Row) -> list[str]:
    """A row's identifying cells, "-" for no lambda (unscaled networks)."""
    return [fmt(v) if v is not None else "-" for v in row]


def stats_rows(groups: dict[Row, dict], metrics: list[str] = STATS_METRICS
               ) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """The per-row table, one "mean ± sd (n)" cell per metric of ``metrics`` that any row has,
    and its long form (one line per row and metric, for the CSV)."""
    present = [k for k in metrics if any(number(m.get(k)) for s in groups.values() for m in s.values())]
    header = THESIS_KEYS + ["seeds"] + present
    long_header = THESIS_KEYS + ["seeds", "metric", "n", "mean", "sd"]
    table, long = [], []
    for row, seeds in groups.items():
        keys, seed_list = row_keys(row), ", ".join(map(str, seeds))
        cells = []
        for k in present:
            n, mean, sd = seed_stat(seeds, k)
            cells.append(mean_sd_text(n, mean, sd))
            if n:
                long.append(keys + [seed_list, k, str(n), fmt(mean), "-" if sd is None else fmt(sd)])
        table.append(keys + [seed_list] + cells)
    return header, table, long_header, long


def comparisons(rows: list[Row]) -> list[tuple[str, Row, Row]]:
    """(name, A, B) of each pair of rows to compare, within one model, dataset, N and lambda. Psi
    rows (full width, mapped) are unscaled, hence without lambda: Psi' of every lambda meets them.
    The best Psi' is the carved one (one pair per criterion) where it exists, else from scratch."""
    have, out = set(rows), []
    for model, dataset, n, lam in dict.fromkeys((r[0], r[1], r[2], r[4]) for r in rows):
        def row(network: str, lam_: float | None = lam) -> Row | None:
            return (model, dataset, n, network, lam_) if (model, dataset, n, network, lam_) in have else None
        def here(r: Row, lam_: float | None = lam) -> bool:
            return r[:3] == (model, dataset, n) and r[4] == lam_
        # from scratch and the ceiling at any epochs (named when not the recipe's); of several
        # ceilings, the recipe's (the shortest name)
        scratch = [r for r in rows if here(r) and EPOCHS_SUFFIX.sub("", r[3]) == RS]
        ceiling = min((r for r in rows if here(r, None) and EPOCHS_SUFFIX.sub("", r[3]) == PSI_FT),
                      key=lambda r: len(r[3]), default=None)
        # carved and fine-tuned, with or without distillation (magnitude-pruned or other-misc
        # networks are other studies)
        carved = [r for r in rows if here(r) and r[3].startswith("Psi' (rs), carved")
                  and not any(k in r[3] for k in ("magnitude", "misc x", "all-misc", "widths x"))]
        rounded = [r for r in rows if here(r) and r[3].startswith("Psi' (rs), carved")
                   and "widths x" in r[3] and "misc x" not in r[3] and "all-misc" not in r[3]]
        pairs = [("rs vs uniform", r, row(UNIFORM + r[3][len(RS):])) for r in scratch]
        pairs += [("carved vs scratch", c, r) for c in carved for r in scratch]
        pairs += [("distilled vs not", c, row(c[3].removesuffix(", distilled")))
                  for c in carved if c[3].endswith(", distilled")]
        pairs += [("teacher: a run vs Psi mapped", c, row(c[3].replace(FROM_RUN, ", distilled")))
                  for c in carved if FROM_RUN in c[3]]
        pairs += [("more epochs vs the recipe's", c, row(EPOCHS_SUFFIX.sub("", c[3])))
                  for c in carved if EPOCHS_SUFFIX.search(c[3])]
        pairs += [("hardware widths vs thesis widths", r, row(HARDWARE_WIDTHS.sub("", r[3])))
                  for r in rounded]
        pairs += [("narrow layers kept vs lifted", r, row(r[3].replace(NARROW_KEPT, "")))
                  for r in rounded if NARROW_KEPT in r[3]]
        pairs += criterion_pairs(carved, row)
        pairs += [(TAUGHT, r, row(r[3].replace(FROM_RUN, ""))) for r in rows
                  if here(r) and FROM_RUN in r[3] and r not in carved]
        for best in carved or scratch:
            pairs += [("Psi' vs Psi fine-tuned", best, ceiling),
                      ("Psi' vs Psi mapped", best, row(PSI_MAPPED, None))]
        pairs += magnitude_pairs([r[3] for r in rows if here(r)], row)
        # the same recipe trained with the dataset's augmentation against without it (or a part)
        pairs += [(AUGMENTED + m.group(1), row(r[3].replace(m.group(0), "")), r)
                  for r in rows if here(r) for m in [AUGMENTATION.search(r[3])] if m]
        pairs += [(ONE_SHOT, o, r) for o in carved if LATENCY_BUDGET in o[3]
                  for r in rows if r[:3] == (model, dataset, n) and r[3].startswith("NetAdapt (latency)")
                  and CARVED_BY.search(r[3]).group(1) == CARVED_BY.search(o[3]).group(1)]
        # dataset.misc_multiplier: K times as many misc training images against 1 (same recipe;
        # not for Psi mapped, which is not trained on them)
        pairs += [(f"misc x{m.group(1)} vs x1", r, row(r[3].replace(m.group(0), "")))
                  for r in rows if here(r) and not r[3].startswith(PSI_MAPPED)
                  for m in [re.search(r", misc x([\d.]+)", r[3])] if m]
        out += [p for p in pairs if p[1] and p[2]]
    return out


STEPS_SUFFIX = re.compile(r", (\d+) steps")
NARROW_KEPT = " narrow kept"  # scaling.widths.keep_narrow: widths below the multiple not lifted
HARDWARE_WIDTHS = re.compile(r", widths x\d+(?:" + re.escape(NARROW_KEPT) + ")?")
CARVED_BY = re.compile(r"carved \(([^)]+)\)")
TAUGHT = "distilled from a run vs not"  # e.g. a network trained from scratch, with a teacher


def plain_accuracy_pair(name: str) -> bool:
    """A comparison of pruning recipes (:func:`criterion_pairs`), of a network trained with and
    without a teacher run, or with and without augmentation, judged on plain (and int8) accuracy
    too: all classes, no misc."""
    return (name in ("iterative vs one-shot", TAUGHT) or name.startswith(AUGMENTED)
            or name.endswith((" vs l1", " vs random")))


def criterion_pairs(carved: list[Row], row) -> list[tuple[str, Row | None, Row | None]]:
    """Among carved rows: each criterion against L1 and against random pruning with the same
    recipe, and iterative pruning (", K steps") against one-shot with the same criterion."""
    pairs = []
    for c in carved:
        crit = CARVED_BY.search(c[3]).group(1)
        others = {"l1": [], "random": ["l1"]}.get(crit, ["l1", "random"])  # each pair once
        pairs += [(f"{crit} vs {other}", c, row(CARVED_BY.sub(f"carved ({other})", c[3])))
                  for other in others]
        if STEPS_SUFFIX.search(c[3]):
            pairs.append(("iterative vs one-shot", c, row(STEPS_SUFFIX.sub("", c[3]))))
    return pairs


def magnitude_pairs(networks: list[str], row) -> list[tuple[str, Row | None, Row | None]]:
    """Magnitude pruning's comparisons among one model's ``networks`` (``row`` finds a row by
    its network): the polynomial schedule against constant sparsity, every pruned network
    against the same network unpruned (the dense reference), each with the same training, and
    every pruned network trained with augmentation against the dense one trained without it
    (the GMP seed project's claim: augmentation more than offsets the pruned weights)."""
    pruned = [nw for nw in networks if MAGNITUDE.search(nw)]
    pairs = [("polynomial vs constant", row(nw.replace(CONSTANT, "")), row(nw))
             for nw in pruned if CONSTANT in nw]
    pairs += [("magnitude-pruned vs dense", row(nw), row(MAGNITUDE.sub("", nw))) for nw in pruned]
    dense_without = [nw for nw in networks if not MAGNITUDE.search(nw) and AUGMENTATION.search(nw)]
    return pairs + [(PRUNED_AUGMENTED, row(nw), row(d)) for nw in pruned if not AUGMENTATION.search(nw)
                    for d in dense_without if AUGMENTATION.sub("", d) == MAGNITUDE.sub("", nw)]


def paired_ci(diffs: list[float]) -> tuple[float | None, float | None, float | None, str]:
    """Mean difference, 95 % Student-t interval and verdict of paired differences A - B. A verdict
    needs three seeds: two give an interval but no conclusion (their sample sd can be about 0 by
    chance, e.g. two runs ahead by the same 5 of 10,000 test images, and the interval with it).
    Differences that are all equal (accuracy moves in steps of one test image, so this happens)
    have sd 0 and a zero-width interval: no verdict either, whatever n."""
    from scipy.stats import t

    n, mean, sd = mean_sd(diffs)
    if n < 2:
        return mean, None, None, "not resolved (n<2)"
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if n < 3:
        return mean, low, high, "not resolved (n<3)"
    if sd <= 1e-9 * max(1.0, *map(abs, diffs)):  # equal but for float rounding
        return mean, low, high, "not resolved (sd 0)"
    return mean, low, high, "A > B" if low > 0 else "A < B" if high < 0 else "not resolved"


def pair_metrics(name: str) -> list[str]:
    """The metrics a comparison called ``name`` is judged on."""
    if name == ONE_SHOT:
        return ONE_SHOT_METRICS
    return SPARSE_PAIR_METRICS if name in SPARSE_PAIRS or plain_accuracy_pair(name) else PAIR_METRICS


def stats_pairs(groups: dict[Row, dict]) -> tuple[list[str], list[list[str]]]:
    """One line per comparison and metric that both rows have: n pairs, mean A - B, CI, verdict."""
    header = ["model", "dataset", "N", "lambda", "comparison", "A", "B", "metric", "n",
              "mean A - B", "CI low", "CI high", "verdict"]
    table = []
    for name, a, b in comparisons(list(groups)):
        sa, sb = groups[a], groups[b]
        for k in pair_metrics(name):
            xa = {s: m[k] for s, m in sa.items() if number(m.get(k))}
            xb = {s: m[k] for s, m in sb.items() if number(m.get(k))}
            if not xa or not xb:  # a metric one row never has (e.g. runs from before it existed)
                continue
            diffs = [xa[s] - xb[s] for s in xa if s in xb]
            mean, low, high, verdict = paired_ci(diffs)
            numbers = ["-" if v is None else fmt(float(v)) for v in (mean, low, high)]
            table.append(row_keys(a[:3] + a[4:]) + [name, a[3], b[3], k, str(len(diffs))]
                         + numbers + [verdict])
    return header, table


def stats(paths: list[Path], out: Path | None, plot_path: Path | None = None) -> int:
    """Print (and with out, write) the per-row and paired tables, and with plot_path the paired
    differences' forest plot (:func:`forest_plot`); 1 where runs disagreed."""
    groups, errors = by_seed(stats_entries(run_dirs(paths)))
    for line in errors:
        print(line, file=sys.stderr)
    header, body, long_header, long = stats_rows(groups)
    pair_header, pairs = stats_pairs(groups)
    md = ("## Over seeds: mean ± sd (n seeds)\n\n" + markdown(header, body) +
          "\n## Paired differences A - B, matched seed by seed\n\n" + CI_METHOD + "\n\n" +
          markdown(pair_header, pairs) +
          "\n## Verdicts by comparison\n\n" + TALLY_METHOD + "\n\n" + markdown(*verdict_tally(pair_header, pairs)))
    print(md, end="")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.md").write_text(md)
        (out / "summary.md").write_text(stats_summary(groups, pair_header, pairs))
        write_csv(out / "stats_rows.csv", long_header, long)
        write_csv(out / "stats_pairs.csv", pair_header, pairs)
    if plot_path:
        forest_plot(forest_rows(pair_header, pairs), plot_path)
    return 1 if errors else 0


TALLY_METHOD = ("The intervals that can give a verdict (three seeds or more, differences not all "
                "equal), counted per comparison, per metric and over all. Each is at 95 % with no correction for "
                "their number: if no recipe made a difference, 5 % of them would exclude 0 by "
                "chance, the last column.")
JUDGED = ("A > B", "A < B", "not resolved")


def verdict_tally(pair_header: list[str], pairs: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Per comparison (over its metrics), per metric (over the comparisons), then over all: how
    many intervals could give a verdict, how many did either way, and how many would exclude 0
    by chance alone."""
    col = {h: i for i, h in enumerate(pair_header)}
    counts: dict[tuple[str, str], list[int]] = {}
    for p in pairs:
        if p[col["verdict"]] in JUDGED:
            for key in ((p[col["comparison"]], "all"), ("all", p[col["metric"]]), ("all", "all")):
                counts.setdefault(key, [0, 0, 0])[JUDGED.index(p[col["verdict"]])] += 1
    # comparisons first, then metrics, then all (each in the pairs' order)
    keys = sorted(counts, key=lambda k: (k[0] == "all", k[1] == "all"))
    return (["comparison", "metric", "intervals", "A > B", "A < B", "not resolved",
             "expected to exclude 0 by chance"], [[*k, *tally(counts[k])] for k in keys])


def tally(c: list[int]) -> list[str]:
    return [str(sum(c)), *map(str, c), f"{0.05 * sum(c):.1f}"]


NO_INTERVAL = "no paired difference has an interval yet (each needs two seeds)"
ACCURACY = re.compile(r"(^|/)acc")  # test/acc, int8/test/acc, test/cal/acc_local: shown in points


def forest_rows(pair_header: list[str], pairs: list[list[str]]) -> dict[str, list[tuple]]:
    """The paired differences that have an interval (n >= 2), per metric, in the table's order:
    (label, mean, low, high, n, verdict), accuracies in points. The label is the comparison and
    its row A, led by the model where the pairs span several."""
    col = {h: i for i, h in enumerate(pair_header)}
    several = len({p[col["model"]] for p in pairs}) > 1
    panels = {}
    for p in pairs:
        if p[col["CI low"]] == "-":
            continue
        metric = p[col["metric"]]
        scale = 100 if ACCURACY.search(metric) else 1
        label = (f"{p[col['model']]}: " if several else "") + f"{p[col['comparison']]} | {p[col['A']]}"
        panels.setdefault(metric, []).append(
            (label, *(scale * float(p[col[k]]) for k in ("mean A - B", "CI low", "CI high")),
             int(p[col["n"]]), p[col["verdict"]]))
    return panels


def forest_plot(panels: dict[str, list[tuple]], path: Path) -> None:
    """One panel per metric: each comparison's mean difference A - B with its 95 % interval, a
    line at 0; filled red where the interval gives a verdict, open where it does not (grey for
    two seeds, which give none). With no interval at all, a figure that says so."""
    plt = pyplot()

    path.parent.mkdir(parents=True, exist_ok=True)
    if not panels:  # e.g. a study after its first seed: the plot says so (an old one would mislead)
        print(f"tables.py stats --plot {path}: {NO_INTERVAL}", file=sys.stderr)
        fig = plt.figure(figsize=(6, 1.5))
        fig.text(0.5, 0.5, NO_INTERVAL, ha="center", va="center")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    labels = list(dict.fromkeys(r[0] for rows in panels.values() for r in rows))
    y = {label: -i for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 + 3.5 * len(panels), 1.2 + 0.28 * len(labels)),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, (metric, rows) in zip(axes[0], panels.items()):
        for label, mean, low, high, n, verdict in rows:
            resolved = verdict in ("A > B", "A < B")
            color = "C3" if resolved else "C0" if n >= 3 else "0.6"
            ax.errorbar(mean, y[label], xerr=[[mean - low], [high - mean]], fmt="o", capsize=3,
                        color=color, markerfacecolor=color if resolved else "white")
        ax.axvline(0, color="0.3", linewidth=0.8, linestyle="--")
        unit = " (points)" if ACCURACY.search(metric) else ""
        ax.set(title=metric, xlabel=f"mean A - B{unit}\n95 % interval")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(list(y.values()), labels, fontsize=7)
    fig.suptitle("paired differences over seeds: red = interval excludes 0, blue = n >= 3, "
                 "grey = n = 2 (no verdict)", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# the question of issue 13 in few columns: accuracy with misc decided as deployed, misc
# detection of never-seen classes, and the cost
SUMMARY_METRICS = ["test/cal/acc_local", "openset/unseen/auroc_misc", "openset/unseen/fpr95_misc",
                   "model/params", "train/images_seen"]


def stats_summary(groups: dict[Row, dict], pair_header: list[str], pairs: list[list[str]]) -> str:
    """summary.md: stats.md cut to SUMMARY_METRICS (rows) and to the pairs on them."""
    header, body, _, _ = stats_rows(groups, SUMMARY_METRICS)
    metric = pair_header.index("metric")
    kept = [p for p in pairs if p[metric] in SUMMARY_METRICS]
    return ("## Over seeds: mean ± sd (n seeds), key metrics\n\n" + markdown(header, body) +
            "\n## Paired differences A - B on them\n\n" + CI_METHOD + "\n\n" +
            markdown(pair_header, kept))


# gmp: gradual magnitude pruning of the pretrained CIFAR ResNets (scripts/evidence/gmp.sh)
GMP_KEYS = ["model", "target sparsity", "schedule", "augmentation"]
GMP_ACC = [("fp32 test acc", "test/acc"), ("int8 test acc", "int8/test/acc")]
GMP_MEANS = [("sparsity", "sparsity/overall"), ("ONNX fp32 bytes", "export/onnx_bytes"),
             ("fp32 gzip bytes", "export/onnx_gzip_bytes"), ("int8 bytes", "int8/bytes"),
             ("int8 gzip bytes", "int8/gzip_bytes")]
GMP_RATIOS = [("fp32 gzip / fp32", "export/onnx_gzip_bytes"), ("int8 gzip / fp32", "int8/gzip_bytes")]
SCHEDULE_ORDER = {"dense": 0, "polynomial": 1, "constant": 2}


def gmp_entry(d: Path) -> dict:
    """A run's row (model, target sparsity, schedule, augmentation), seed and metrics; the
    unpruned reference is target sparsity 0, schedule "dense"."""
    label, m, cfg = load(d)
    comp = conf(cfg, "compression.name") or "none"
    return {"model": conf(cfg, "model.name"), "augmentation": augmentation(cfg),
            "target sparsity": conf(cfg, "compression.sparsity.final_sparsity") if comp == "magnitude" else 0,
            "schedule": schedule(cfg) or ("dense" if comp == "none" else comp),  # another method: its name
            "seed": conf(cfg, "seed"), "m": m, "run": label}


def gmp_table(entries: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """One row per model, target sparsity, schedule and augmentation: accuracies as "mean ± sd
    (n seeds)", sparsity and file sizes as means over the seeds, the gzip sizes as fractions of
    the plain fp32 file (the same size with or without zeros), and the unfinished runs."""
    entries = sorted(entries, key=lambda e: (
        str(e["model"]), e["target sparsity"] or 0, SCHEDULE_ORDER.get(e["schedule"], 3),
        e["augmentation"] != "on", e["augmentation"], e["run"]))
    groups, errors = by_seed([e for e in entries if e["m"]], GMP_KEYS,
                             [k for _, k in GMP_ACC + GMP_MEANS])
    unfinished = Counter(tuple(e[k] for k in GMP_KEYS) for e in entries if not e["m"])
    header = GMP_KEYS + ["seeds", "unfinished"] + [c for c, _ in GMP_ACC + GMP_MEANS + GMP_RATIOS]
    table = []
    for row in dict.fromkeys([tuple(e[k] for k in GMP_KEYS) for e in entries]):  # sorted above
        seeds = groups.get(row, {})
        stat = functools.partial(seed_stat, seeds)
        means = {k: stat(k)[1] for _, k in GMP_MEANS}
        fp32 = means["export/onnx_bytes"]
        table.append(row_keys(row) + [", ".join(map(str, seeds)) or "-", str(unfinished[row])]
                     + [mean_sd_text(*stat(k)) for _, k in GMP_ACC]
                     + ["-" if v is None else fmt(v if k == "sparsity/overall" else round(v))
                        for k, v in means.items()]
                     + [f"{means[k] / fp32:.3f}" if means[k] is not None and fp32 else "-"
                        for _, k in GMP_RATIOS])
    return header, table, errors


def gmp(paths: list[Path], csv_path: Path | None, plot_path: Path | None = None) -> int:
    """Print (and with csv_path, write) the GMP table, and with plot_path its plot (:func:`gmp_plot`);
    1 where runs of one row and seed disagree."""
    entries = [gmp_entry(d) for d in unique_runs(run_dirs(paths))]
    header, table, errors = gmp_table(entries)
    for line in errors:
        print(line, file=sys.stderr)
    print(markdown(header, table), end="")
    if csv_path:
        write_csv(csv_path, header, table)
    if plot_path:
        gmp_plot(gmp_curves(entries), plot_path)
    return 1 if errors else 0


GMP_SIZES = [("fp32 ONNX", "export/onnx_bytes"), ("fp32 ONNX, gzip -9", "export/onnx_gzip_bytes"),
             ("int8 ONNX", "int8/bytes"), ("int8 ONNX, gzip -9", "int8/gzip_bytes")]


def gmp_curves(entries: list[dict]) -> dict[str, dict]:
    """What :func:`gmp_plot` draws, per model: fp32 test accuracy (n, mean, sd over the seeds)
    at each target sparsity, one series per schedule and augmentation, starting at the dense
    reference trained with the same augmentation; and each stored size (mean over every
    finished run at that target sparsity) against the target sparsity."""
    done = [e for e in entries if e["m"]]
    curves = {}
    for model in sorted({str(e["model"]) for e in done}):
        runs = [e for e in done if str(e["model"]) == model]
        acc = {}
        for sched, aug in sorted({(e["schedule"], e["augmentation"]) for e in runs if e["schedule"] != "dense"},
                                 key=lambda sa: (SCHEDULE_ORDER.get(sa[0], 3), sa[0], sa[1] != "on", sa[1])):
            points = [e for e in runs if e["augmentation"] == aug and e["schedule"] in ("dense", sched)]
            acc[f"{sched}, augmentation {aug}"] = [
                (x, *mean_sd([e["m"]["test/acc"] for e in points if e["target sparsity"] == x
                              and number(e["m"].get("test/acc"))]))
                for x in sorted({e["target sparsity"] for e in points})]
        sizes = {label: [(x, mean_sd([e["m"][k] for e in runs if e["target sparsity"] == x
                                      and number(e["m"].get(k))])[1])
                         for x in sorted({e["target sparsity"] for e in runs})]
                 for label, k in GMP_SIZES}
        curves[model] = {"acc": acc, "sizes": sizes}
    return curves


def gmp_plot(curves: dict[str, dict], path: Path) -> None:
    """Per model (a column): fp32 test accuracy against target sparsity (mean ± sd over the
    seeds, one line per schedule and augmentation), and the stored file sizes against it."""
    plt = pyplot()

    fig, axes = plt.subplots(2, max(1, len(curves)), figsize=(5.5 * max(1, len(curves)), 7.5),
                             squeeze=False, layout="constrained")
    for col, (model, c) in enumerate(curves.items()):
        top, bottom = axes[0][col], axes[1][col]
        for i, (name, pts) in enumerate(c["acc"].items()):
            pts = [p for p in pts if p[2] is not None]
            top.errorbar([p[0] for p in pts], [100 * p[2] for p in pts],
                         yerr=[100 * (p[3] or 0) for p in pts], marker="o", capsize=3,
                         color=f"C{i}", linestyle="-" if "augmentation on" in name else "--",
                         label=f"{name} (n = {'/'.join(str(p[1]) for p in pts)})")
        top.set(title=model, xlabel="target sparsity", ylabel="fp32 test accuracy (%), mean ± sd")
        for i, (name, pts) in enumerate(c["sizes"].items()):
            pts = [p for p in pts if p[1] is not None]
            bottom.plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], marker="o", color=f"C{i}", label=name)
        bottom.set(xlabel="target sparsity", ylabel="stored file (kB)", ylim=(0, None))
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# deploy: the proposal's measures, per recipe (scripts/evidence/vgg_featuremap.sh)
DEPLOY_ACC = [("fp32 test acc", "test/acc"), ("int8 test acc", "int8/test/acc")]
DEPLOY_MEANS = [("params", "model/params"), ("MACs", "model/macs"), ("ONNX bytes", "export/onnx_bytes"),
                ("int8 bytes", "int8/bytes")]


def bench_rows(path: Path) -> tuple[dict[str, dict], int]:
    """The rows of a ``bench.py int8`` JSON by the run each timed (its short label, the text in
    the last parentheses of the row's model name), and the batch it timed."""
    try:
        data = json.loads(path.read_text())
        if data["section"] != "int8":
            sys.exit(f"tables.py deploy: --runtimes {path} is a bench.py {data['section']} JSON, "
                     f"not int8")
        batch, found = int(data["args"]["latency_batch"]), {}
        for r in data["rows"]:
            m = re.search(r"\(([^()]*)\)$", r["model"])
            if m:  # a released model (no run directory) has no parenthesised label: not a run's row
                found[m.group(1)] = r
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        sys.exit(f"tables.py deploy: --runtimes {path} is not a bench.py int8 JSON ({e!r})")
    return found, batch


def deploy_table(entries: list[dict], bench: dict[str, dict], batch: int
                 ) -> tuple[list[str], list[list[str]], list[str]]:
    """:func:`deploy`'s table, and its errors (runs of one row and seed that disagree, bench
    rows that match no run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the benchmarks package
    from benchmarks.int8 import INT8_RUNTIMES, run_label as short_label

    groups, errors = by_seed(entries, THESIS_KEYS, [k for _, k in DEPLOY_ACC + DEPLOY_MEANS])
    timed: dict[Row, list[tuple]] = {}
    matched = set()
    for e in entries:
        short = short_label(e["run"].split("/", 1)[-1])
        if short in bench:
            timed.setdefault(tuple(e[k] for k in THESIS_KEYS), []).append((e["seed"], bench[short]))
            matched.add(short)
    errors += [f"error: --runtimes row {k!r} matches no run given" for k in bench if k not in matched]
    runtimes = [(rt, name) for rt, name in INT8_RUNTIMES.items()
                if any(f"{rt}_fp32_b{batch}_ms" in r for r in bench.values())]
    times = [(f"{name} {p} b{batch} (ms)", f"{rt}_{p}_b{batch}_ms") for rt, name in runtimes
             for p in ("fp32", "int8")]
    header = THESIS_KEYS + ["seeds"] + [c for c, _ in DEPLOY_ACC + DEPLOY_MEANS] + ["timed seeds"] + \
        [c for c, _ in times]
    table = []
    for row, seeds in groups.items():
        stat = functools.partial(seed_stat, seeds)
        runs = sorted(timed.get(row, []), key=seed_order)
        ms = [mean_sd([r[k] for _, r in runs if number(r.get(k))])[1] for _, k in times]
        table.append(row_keys(row) + [", ".join(map(str, seeds))]
                     + [mean_sd_text(*stat(k)) for _, k in DEPLOY_ACC]
                     + ["-" if (v := stat(k)[1]) is None else fmt(round(v)) for _, k in DEPLOY_MEANS]
                     + [", ".join(str(s) for s, _ in runs) or "-"]
                     + ["-" if v is None else f"{v:.2f}" for v in ms])
    return header, table, errors


def deploy(paths: list[Path], runtimes: Path | None, csv_path: Path | None) -> int:
    """Print (and with csv_path, write) the deployment table; 1 where runs of one row and seed
    disagree or a bench row matches no run."""
    if runtimes is None:
        sys.exit("tables.py deploy: --runtimes FILE is needed (a bench.py int8 --run-dirs JSON)")
    bench, batch = bench_rows(runtimes)
    entries = [e for e in stats_entries(unique_runs(run_dirs(paths)))
               if not e["network"].startswith(PSI_MAPPED)]
    header, table, errors = deploy_table(entries, bench, batch)
    for line in errors:
        print(line, file=sys.stderr)
    print(markdown(header, table), end="")
    if csv_path:
        write_csv(csv_path, header, table)
    return 1 if errors else 0


def unique_runs(found: list[Path | Record]) -> list[Path | Record]:
    """One entry per run (label) of ``found``: a finished one over an unfinished one, then a run
    directory over a record (the directory is the run as it is now), else the first found."""
    best: dict[str, tuple[tuple[bool, bool], Path | Record]] = {}
    for d in found:
        label, m, _ = load(d)
        rank = (bool(m), isinstance(d, Path))
        if label not in best or rank > best[label][0]:
            best[label] = rank, d
    return [d for _, d in best.values()]


def records(paths: list[Path], out: Path | None) -> int:
    """Write (or print) the finished runs under ``paths`` as runs.jsonl lines (:class:`Record`);
    a run found twice counts once (:func:`unique_runs`). Unfinished runs are left out: they
    resume, records do not."""
    lines = {}
    for d in unique_runs(run_dirs(paths)):
        label, m, cfg = load(d)
        if m:
            lines[label] = json.dumps(Record(label, m, cfg)._asdict(), sort_keys=True)
    text = "".join(f"{line}\n" for _, line in sorted(lines.items()))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"{len(lines)} finished runs -> {out}")
    else:
        print(text, end="")
    return 0


RERUN_METRICS = ["test/acc", "int8/test/acc", "test/acc_local"]
NOT_RECORDED = "not recorded"  # runs from before metrics named the machine
RERUN_METHOD = ("95 % CI: mean ± t(0.975, n-1) · sd / √n of the per-run differences rerun - first "
                "(Student t, sd with n-1); a verdict only where it excludes 0, with three runs or more "
                "and differences not all equal. rerun sd: the differences' sd over √2, one run's sd "
                "were a rerun as random as another seed; seed sd: the sd over the seeds of each "
                "matched network's row in the first runs, pooled over the rows.")


def rerun(paths: list[Path], csv_path: Path | None) -> int:
    """The same runs run twice: ``paths`` are the first runs and their reruns (another machine,
    another torch), matched by label; one line per run and metric (first, rerun, rerun - first)
    and per metric the paired differences' mean with a 95 % interval (:func:`paired_ci`), their sd
    over sqrt 2 (one run's rerun sd, were reruns as random as seeds) beside the seed sd of the
    matched rows (model and network) in the first runs, pooled over every seed they have there."""
    if len(paths) != 2:
        sys.exit("tables.py rerun: give two sets of runs, the first runs and their reruns "
                 f"(run or sweep directories or runs.jsonl files), not {len(paths)}")
    def ident(cfg: dict) -> tuple:  # model, network, seed
        return conf(cfg, "model.name"), network(cfg)[1], conf(cfg, "seed")
    # {label: (metrics, (model, network, seed))} of each set's finished runs
    first, again = ({label: (m, ident(cfg)) for label, m, cfg in map(load, unique_runs(run_dirs([p]))) if m}
                    for p in paths)
    matched = sorted((lb for lb in again if lb in first), key=lambda lb: str(first[lb][1]))
    if not matched:
        sys.exit(f"tables.py rerun: no finished run of {paths[1]} is in {paths[0]} (runs match by label)")
    header = ["model", "network", "seed", "first machine", "rerun machine", "metric", "first", "rerun",
              "rerun - first"]
    table, diffs = [], {}
    for label in matched:
        (ma, ia), (mb, ib) = first[label], again[label]
        if ia != ib:
            sys.exit(f"tables.py rerun: {label} is {'{} / {} / seed {}'.format(*ia)} in {paths[0]} but "
                     f"{'{} / {} / seed {}'.format(*ib)} in {paths[1]}")
        for k in RERUN_METRICS:
            if number(ma.get(k)) and number(mb.get(k)):
                diffs.setdefault(k, []).append(mb[k] - ma[k])
                table.append([*map(str, ia), ma.get("machine/cpu", NOT_RECORDED),
                              mb.get("machine/cpu", NOT_RECORDED), k, fmt(ma[k]), fmt(mb[k]),
                              fmt(mb[k] - ma[k])])
    rows = {first[lb][1][:2] for lb in matched}
    seeds: dict[tuple, list] = {}  # (model, network, metric): the first runs' values, one per seed
    for m, i in first.values():
        for k in RERUN_METRICS:
            if i[:2] in rows and number(m.get(k)):
                seeds.setdefault((*i[:2], k), []).append(m[k])
    summary_header = ["metric", "runs", "mean rerun - first", "CI low", "CI high", "verdict",
                      "largest absolute difference", "rerun sd (sd / √2)", "seed sd (first runs)"]
    summary = []
    for k, ds in diffs.items():
        groups = [v for key, v in seeds.items() if key[2] == k and len(v) > 1]
        dof = sum(len(g) - 1 for g in groups)
        pooled = math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in groups) / dof) if dof else None
        mean, low, high, verdict = paired_ci(ds)
        rerun_sd = statistics.stdev(ds) / math.sqrt(2) if len(ds) > 1 else None
        cells = ["-" if v is None else fmt(float(v)) for v in (mean, low, high, rerun_sd, pooled)]
        summary.append([k, str(len(ds)), *cells[:3], verdict, fmt(max(map(abs, ds))), *cells[3:]])
    print("## Reruns against the first runs, per metric\n\n" + RERUN_METHOD + "\n\n" +
          markdown(summary_header, summary) + "\n## Run by run\n\n" + markdown(header, table), end="")
    if csv_path:
        write_csv(csv_path, header, table)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(COLUMNS) + ["curve", "deploy", "gmp", "records", "rerun", "stats", "thesis"])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--csv", type=Path, help="also write the table as CSV (prune, runs, gmp, deploy, rerun: run by run)")
    p.add_argument("--runtimes", type=Path, help="deploy: the bench.py int8 JSON of the runs' "
                                                 "time per image")
    p.add_argument("--plot", type=Path, help="gmp: also draw accuracy and stored size against "
                                             "sparsity (PNG); stats: the paired differences with "
                                             "their intervals (a forest plot, PNG)")
    p.add_argument("--out", type=Path, help="thesis: write markdown, CSV, LaTeX and plots here; "
                   "stats: stats.md, summary.md, stats_rows.csv, stats_pairs.csv; records: the "
                   "runs.jsonl file")
    args = p.parse_args()
    if args.kind == "stats":
        sys.exit(stats(args.paths, args.out, args.plot))
    if args.kind == "records":
        sys.exit(records(args.paths, args.out))
    if args.kind == "rerun":
        sys.exit(rerun(args.paths, args.csv))
    if args.kind == "gmp":
        sys.exit(gmp(args.paths, args.csv, args.plot))
    if args.kind == "deploy":
        sys.exit(deploy(args.paths, args.runtimes, args.csv))
    if args.kind == "curve":
        return curve(args.paths, args.out)
    if args.kind == "thesis":
        thesis(args.paths, args.out)
        return
    header = [c for c, _ in COLUMNS[args.kind]]
    table = rows(args.kind, run_dirs(args.paths))
    print(without_empty_columns(header, table), end="")
    if args.csv:
        write_csv(args.csv, header, table)


def without_empty_columns(header: list[str], table: list[list[str]]) -> str:
    """The markdown table less the columns that are missing in every row (measures no run of
    this study makes, e.g. NetAdapt's in a criteria study), named in a line below it; the CSV
    keeps every column."""
    keep = [i for i, _ in enumerate(header) if i == 0 or any(r[i] != "missing" for r in table)]
    text = markdown([header[i] for i in keep], [[r[i] for i in keep] for r in table])
    empty = [h for i, h in enumerate(header) if i not in keep]
    return text + (f"\nNo run has: {', '.join(empty)}.\n" if empty else "")


if __name__ == "__main__":
    main()

"""scripts/tables.py: rows from metrics.json; a run without metrics.json shows as missing."""

import csv
import importlib.util
import json
import math
import re
import statistics
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, TINY, compose_cfg
from test_experiments import FAST, sweep, tables


def fake_run(path, name, metrics=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: {name}\ncompression:\n  name: prune\n  criterion:\n"
                                      "    _target_: rsnet.compress.criteria.Taylor\n    name: taylor\n"
                                      "train:\n  distill:\n    enabled: false\n")
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_missing_runs_are_marked_missing(tmp_path):
    fake_run(tmp_path / "sweep" / "compression_criterion=l1", "p",
             {"prune/criterion": "l1", "prune/init": "inherit", "model/params": 1234, "test/acc": 0.5,
              "plan/latency_predicted_ms": 0.4123, "latency/ort_fp32_b1_ms": 0.45,
              "plan/budget": 0.4, "plan/budget_unit": "latency"})
    fake_run(tmp_path / "sweep" / "compression_criterion=taylor", "p")  # killed before the report
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "prune",
                          str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")],
                         capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("| p/")]
    assert len(lines) == 2
    l1, taylor = sorted(lines)
    assert "| l1 | inherit | no | 1,234 |" in l1 and "0.5000" in l1
    # a latency plan: its budget, prediction and the export stage's measurement over it; the
    # measures neither run has are left out of the markdown and named below it
    assert l1.endswith("| 1,234 | 0.5000 | 0.4500 | 0.4000 | 0.4123 | 1.0914 |")
    assert "| taylor |" in taylor and taylor.count("missing") == 7 and "0.0" not in taylor
    header = out.splitlines()[0]
    assert "| params | test acc | ORT fp32 b1 (ms) | latency target b1 (ms) |" in header and "MACs" not in header
    assert out.splitlines()[-1].startswith("No run has: MACs, epochs, baseline test acc,")
    csv_rows = list(csv.reader((tmp_path / "t.csv").open()))
    assert len(csv_rows) == 3 and "MACs" in csv_rows[0] and "NetAdapt table b1 (ms)" in csv_rows[0]


@pytest.mark.parametrize("kind", ["prune", "stats", "gmp", "records", "thesis"])
def test_a_table_of_no_runs_is_an_error_not_an_empty_table(tmp_path, kind):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "runs.jsonl"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), kind, str(tmp_path / "empty"),
                          str(tmp_path / "typo"), *(["--out", str(out)] if kind == "records" else [])],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout == "" and not out.exists()
    assert res.stderr.splitlines() == [
        f"warning: {tmp_path / 'typo'} is not a run or sweep directory",
        f"tables.py: no runs in {tmp_path / 'empty'} {tmp_path / 'typo'} (a run directory has "
        "config.yaml; give run or sweep directories or runs.jsonl files)"]


def thesis_run(path, scaling="rs", compression="none", metrics=None, seed=0, round_to="null",
               misc_multiplier=1, epochs=None, budget_unit="params", keep_narrow=False):
    path.mkdir(parents=True)
    train = "" if epochs is None else f"train: {{epochs: {epochs}}}\n"
    (path / "config.yaml").write_text(train +
        f"name: g\nseed: {seed}\nmodel: {{name: googlenet_rs, checkpoint: psi.pt}}\n"
        f"dataset: {{name: tiny_imagenet, num_classes: 5, misc_multiplier: {misc_multiplier}}}\n"
        f"export: {{name: int8}}\n"
        f"scaling: {{name: {scaling}, budget: {{rule: thesis, lam: 0.045, unit: {budget_unit}}}, "
        f"widths: {{round_to: {round_to}, keep_narrow: {str(keep_narrow).lower()}}}}}\n"
        f"compression: {{name: {compression}, criterion: l1, netadapt: {{resource: latency}}}}\n")
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
    assert rows[1][4:8] == ["0.0450", "430,000", "20,000,000", "0.8000"] and rows[1][17] == "100"
    assert rows[3].count("missing") == 13 and "0.0000" not in rows[3]  # every metric column
    compression = [r.removesuffix(" |").split(" | ") for r in out.split("## Compression")[1].splitlines()
                   if r.startswith("| googlenet_rs")]
    assert len(compression) == 3 and compression[0][5] == "-" and compression[0][10] == "500,000"
    assert compression[0][9] == "-"  # no gzip size in these runs' metrics: "-", never 0
    assert compression[2].count("missing") == 11
    t = tmp_path / "t"
    assert (t / "thesis_synthesis.csv").read_text().count("\n") == 5
    # the (long) run folder names are in the CSV, not in the markdown / LaTeX tables
    assert (t / "thesis_synthesis.csv").read_text().splitlines()[0].endswith(",run")
    assert "synthesis time (s) |\n" in out and "| run |" not in out
    assert r"Psi' (rs), carved (l1) + fine-tuned" in (t / "thesis.tex").read_text()
    assert "missing" in (t / "thesis.md").read_text()
    assert (t / "acc_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert (t / "acc_vs_macs.png").stat().st_size > 1000


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_benchmark(name: str):
    """scripts/benchmarks/<name>.py, imported as scripts/bench.py imports it (scripts/ on the path)."""
    if str(REPO / "scripts") not in sys.path:
        sys.path.insert(0, str(REPO / "scripts"))
    return importlib.import_module(f"benchmarks.{name}")


def load_tables():
    return load_script("tables")


def stats_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "stats", *map(str, args)],
                          capture_output=True, text=True)


def md_rows(out, section):
    """A markdown table's body rows (cells) from the stats output's section 0 (rows), 1 (pairs)
    or 2 (verdicts by comparison)."""
    lines = re.split(r"^## ", out, flags=re.M)[section + 1].splitlines()
    body = lines[next(i for i, r in enumerate(lines) if r.startswith("|---")) + 1:]
    return [r.removeprefix("| ").removesuffix(" |").split(" | ") for r in body if r.startswith("| ")]


T975_2 = 4.302653  # scipy.stats.t.ppf(0.975, 2): 3 pairs
COMMON = {"model/name": "googlenet_rs", "dataset/name": "tiny_imagenet", "data/num_outputs": 5,
          "model/params": 430_000, "model/macs": 20_000_000}


def seed_sweep(sweep):
    """rs seeds 0-2, uniform seeds 0-3 (seed 3 has no rs partner), carved seeds 0-1, one Psi
    fine-tuned (seed 0); every rs and carved run evaluates Psi mapped to N outputs (the same
    values for one seed). rs - uniform per seed: local 0.01, 0.03, 0.02 (CI straddles 0),
    calibrated local -0.10, -0.12, -0.11 (A < B), unseen AUROC 0.2, 0.3, 0.25 (A > B)."""
    rs = [(0.81, 0.60, 0.9), (0.83, 0.58, 0.9), (0.82, 0.59, 0.9)]
    uniform = [(0.80, 0.70, 0.7), (0.80, 0.70, 0.6), (0.80, 0.70, 0.65), (0.5, 0.5, 0.5)]
    def m(local, cal, auroc):
        return {**COMMON, "test/acc_local": local, "test/cal/acc_local": cal,
                "openset/unseen/auroc_misc": auroc}
    def psi(seed):
        return {"baseline/mapped/test/acc_local": 0.7 + seed / 100, "baseline/mapped/test/cal/acc_local": 0.6}
    for seed, values in enumerate(rs):
        thesis_run(sweep / f"rs{seed}", seed=seed, metrics={**m(*values), **psi(seed)})
    for seed, values in enumerate(uniform):
        thesis_run(sweep / f"uniform{seed}", "uniform", seed=seed, metrics=m(*values))
    for seed in (0, 1):
        thesis_run(sweep / f"carved{seed}", compression="prune", seed=seed,
                   metrics={**m(0.9, 0.9, 0.9), **psi(seed)})
    thesis_run(sweep / "psi_ft0", "none", seed=0, metrics={**COMMON, "test/acc_local": 0.95})
    thesis_run(sweep / "uniform_killed", "uniform", seed=4)  # no metrics.json: left out


def test_stats_over_seeds_give_mean_sd_and_paired_intervals(tmp_path):
    seed_sweep(tmp_path / "sweep")
    res = stats_cli(tmp_path / "sweep", "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    rows = {r[3]: r for r in md_rows(res.stdout, 0)}
    assert list(rows) == ["Psi (mapped N-way)", "Psi' (rs), from scratch",
                          "Psi' (rs), carved (l1) + fine-tuned", "uniform, from scratch",
                          "full width, fine-tuned"]
    assert rows["Psi' (rs), from scratch"][4:7] == ["0.0450", "0, 1, 2", "0.8200 ± 0.0100 (3)"]
    # 0.8, 0.8, 0.8, 0.5: mean 0.725, sd sqrt((3 * 0.075^2 + 0.225^2) / 3) = 0.15
    assert rows["uniform, from scratch"][5:7] == ["0, 1, 2, 3", "0.7250 ± 0.1500 (4)"]
    assert rows["full width, fine-tuned"][4:7] == ["-", "0", "0.9500 ± - (1)"]
    # Psi mapped once per seed although two runs of seeds 0 and 1 evaluated it
    assert rows["Psi (mapped N-way)"][5:7] == ["0, 1, 2", "0.7100 ± 0.0100 (3)"]
    assert rows["Psi (mapped N-way)"][7] == "0.6000 ± 0.0000 (3)"  # test/cal/acc_local
    assert rows["Psi' (rs), from scratch"][-2:] == ["430,000 ± 0.0000 (3)", "20,000,000 ± 0.0000 (3)"]

    pairs = {(r[4], r[7]): r for r in md_rows(res.stdout, 1)}
    half = T975_2 * 0.01 / math.sqrt(3)
    local = pairs["rs vs uniform", "test/acc_local"]
    assert local[5:9] == ["Psi' (rs), from scratch", "uniform, from scratch", "test/acc_local", "3"]
    assert [float(x) for x in local[9:12]] == pytest.approx([0.02, 0.02 - half, 0.02 + half], abs=5e-5)
    assert local[12] == "not resolved"
    assert pairs["rs vs uniform", "test/cal/acc_local"][8:] == [
        "3", "-0.1100", f"{-0.11 - half:.4f}", f"{-0.11 + half:.4f}", "A < B"]
    assert pairs["rs vs uniform", "openset/unseen/auroc_misc"][12] == "A > B"
    carved = pairs["carved vs scratch", "test/acc_local"]
    assert carved[5:7] == ["Psi' (rs), carved (l1) + fine-tuned", "Psi' (rs), from scratch"]
    assert carved[8:10] == ["2", "0.0800"]  # 0.9 - 0.81, 0.9 - 0.83 (seeds 0, 1)
    # the best Psi' is the carved one; one fine-tuned Psi seed: no interval
    assert pairs["Psi' vs Psi fine-tuned", "test/acc_local"][3:] == [
        "0.0450", "Psi' vs Psi fine-tuned", "Psi' (rs), carved (l1) + fine-tuned", "full width, fine-tuned",
        "test/acc_local", "1", "-0.0500", "-", "-", "not resolved (n<2)"]
    assert pairs["Psi' vs Psi mapped", "test/acc_local"][8:10] == ["2", "0.1950"]  # (0.2 + 0.19) / 2
    assert ("Psi' vs Psi fine-tuned", "test/cal/acc_local") not in pairs  # Psi fine-tuned lacks it
    assert "95 % CI" in res.stdout and "t(0.975, n-1)" in res.stdout

    t = tmp_path / "t"
    assert (t / "stats.md").read_text() == res.stdout
    assert (t / "stats_pairs.csv").read_text().count("\n") == len(pairs) + 1
    assert "test/acc_local,3,0.8200,0.0100" in (t / "stats_rows.csv").read_text()
    # summary.md: the same rows and pairs, cut to the key metrics (no plain local accuracy)
    summary = (t / "summary.md").read_text()
    head = summary.split("\n\n")[1].splitlines()[0]
    assert "test/cal/acc_local" in head and "openset/unseen/auroc_misc" in head and "test/acc_local" not in head
    assert md_rows(summary, 0)[1][5:7] == ["0, 1, 2", "0.5900 ± 0.0100 (3)"]  # rs, calibrated local
    kept = [r for r in md_rows(summary, 1)]
    assert kept and all(r[7] in ("test/cal/acc_local", "openset/unseen/auroc_misc") for r in kept)
    assert len(kept) == sum(k[1] != "test/acc_local" for k in pairs)


def test_a_target_s_widths_are_their_own_row_paired_with_the_thesis_widths(tmp_path):
    """Carved runs planned with a hardware multiple (target=x86_avx512: round_to 16) are a
    row of their own, compared seed by seed with the same recipe at the thesis's widths."""
    sweep = tmp_path / "sweep"
    for seed, (plain, rounded) in enumerate([(0.80, 0.78), (0.82, 0.79), (0.81, 0.79)]):
        thesis_run(sweep / f"carved{seed}", compression="prune", seed=seed,
                   metrics={**COMMON, "test/acc_local": plain})
        thesis_run(sweep / f"x16_{seed}", compression="prune", seed=seed, round_to=16,
                   metrics={**COMMON, "test/acc_local": rounded})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    rows = {r[3] for r in md_rows(res.stdout, 0)}
    assert "Psi' (rs), carved (l1) + fine-tuned, widths x16" in rows
    pairs = {(r[4], r[7]): r for r in md_rows(res.stdout, 1)}
    hw = pairs["hardware widths vs thesis widths", "test/acc_local"]
    assert hw[5:7] == ["Psi' (rs), carved (l1) + fine-tuned, widths x16",
                       "Psi' (rs), carved (l1) + fine-tuned"]
    assert hw[8:10] == ["3", "-0.0233"]  # (-0.02 - 0.03 - 0.02) / 3
    assert ("carved vs scratch", "test/acc_local") not in pairs  # no scratch runs here


def test_widths_with_narrow_layers_kept_pair_with_both_other_plans(tmp_path):
    """scaling.widths.keep_narrow: another plan, a row of its own, paired seed by seed with the
    thesis's widths and with the same multiple whose narrow layers are lifted."""
    sweep = tmp_path / "sweep"
    for seed, (plain, lifted, kept) in enumerate([(0.80, 0.76, 0.81), (0.82, 0.78, 0.80),
                                                  (0.81, 0.77, 0.81)]):
        thesis_run(sweep / f"carved{seed}", compression="prune", seed=seed,
                   metrics={**COMMON, "test/acc_local": plain})
        thesis_run(sweep / f"x16_{seed}", compression="prune", seed=seed, round_to=16,
                   metrics={**COMMON, "test/acc_local": lifted})
        thesis_run(sweep / f"kept{seed}", compression="prune", seed=seed, round_to=16,
                   keep_narrow=True, metrics={**COMMON, "test/acc_local": kept})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    kept = "Psi' (rs), carved (l1) + fine-tuned, widths x16 narrow kept"
    assert {kept, "Psi' (rs), carved (l1) + fine-tuned, widths x16"} <= {r[3] for r in md_rows(res.stdout, 0)}
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    hw = pairs["hardware widths vs thesis widths", kept, "test/acc_local"]
    assert hw[6] == "Psi' (rs), carved (l1) + fine-tuned" and hw[8:10] == ["3", "-0.0033"]
    vs_lifted = pairs["narrow layers kept vs lifted", kept, "test/acc_local"]
    assert vs_lifted[6] == "Psi' (rs), carved (l1) + fine-tuned, widths x16"
    assert vs_lifted[8:10] == ["3", "0.0367"]  # (0.05 + 0.02 + 0.04) / 3


def test_other_training_epochs_are_their_own_row_paired_with_the_recipe_s(tmp_path):
    """A carve fine-tuned longer than its recipe's default (conf/recipe/carve.yaml: 10 epochs)
    is another recipe: a row named with its epochs, paired seed by seed with the default's row
    and with Psi fine-tuned; at the default the name stays plain, so the two never mix."""
    sweep = tmp_path / "sweep"
    for seed, (ten, thirty) in enumerate([(0.70, 0.75), (0.72, 0.76), (0.71, 0.77)]):
        thesis_run(sweep / f"carved{seed}", compression="prune", seed=seed, epochs=10,
                   metrics={**COMMON, "test/acc_local": ten})
        thesis_run(sweep / f"carved30_{seed}", compression="prune", seed=seed, epochs=30,
                   metrics={**COMMON, "test/acc_local": thirty})
        thesis_run(sweep / f"psi_ft{seed}", "none", seed=seed, epochs=10,
                   metrics={**COMMON, "test/acc_local": 0.80})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    rows = [r[3] for r in md_rows(res.stdout, 0)]
    assert rows == ["Psi' (rs), carved (l1) + fine-tuned", "Psi' (rs), carved (l1) + fine-tuned, 30 epochs",
                    "full width, fine-tuned"]
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    longer = pairs["more epochs vs the recipe's", rows[1], "test/acc_local"]
    assert longer[6] == rows[0] and longer[8:10] == ["3", "0.0500"]  # (0.05 + 0.04 + 0.06) / 3
    ceiling = pairs["Psi' vs Psi fine-tuned", rows[1], "test/acc_local"]
    assert ceiling[8:10] == ["3", "-0.0400"] and ceiling[12] == "A < B"


def test_misc_multipliers_are_paired_with_one_misc_image_per_in_scope_image(tmp_path):
    """dataset.misc_multiplier=3 / 9 runs are rows of their own, each compared seed by seed
    with the same recipe at the multiplier 1 (issue 13: its effect on local accuracy and AUROC)."""
    sweep = tmp_path / "sweep"
    for seed, (one, three, nine) in enumerate([(0.80, 0.76, 0.70), (0.82, 0.77, 0.71), (0.81, 0.77, 0.72)]):
        for k, acc in ((1, one), (3, three), (9, nine)):
            # each run evaluates Psi mapped too, on its own data: its calibrated threshold (hence
            # calibrated accuracy) comes from that run's validation images, which k changes
            psi = {"baseline/mapped/test/acc_local": 0.3, "baseline/mapped/test/cal/acc_local": 0.6 + k / 100}
            thesis_run(sweep / f"carved{seed}_x{k}", compression="prune", seed=seed,
                       misc_multiplier=k, metrics={**COMMON, "test/acc_local": acc, **psi})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr  # Psi of another data setting is not a conflicting seed
    rows = {r[3]: r for r in md_rows(res.stdout, 0)}
    assert [rows[f"Psi (mapped N-way){x}"][5] for x in ("", ", misc x3", ", misc x9")] == ["0, 1, 2"] * 3
    pairs = {(r[4], r[7]): r for r in md_rows(res.stdout, 1)}
    mapped = pairs["Psi' vs Psi mapped", "test/acc_local"]  # the x1 carve against Psi at x1
    assert mapped[6] == "Psi (mapped N-way)" and mapped[8:10] == ["3", "0.5100"]  # 0.81 - 0.30
    x3, x9 = pairs["misc x3 vs x1", "test/acc_local"], pairs["misc x9 vs x1", "test/acc_local"]
    assert x3[5:7] == ["Psi' (rs), carved (l1) + fine-tuned, misc x3", "Psi' (rs), carved (l1) + fine-tuned"]
    assert x3[8:10] == ["3", "-0.0433"]  # (-0.04 - 0.05 - 0.04) / 3
    assert x9[8:10] == ["3", "-0.1000"] and x9[12] == "A < B"
    # Psi mapped is not trained on the misc images: no multiplier pair of its own
    assert not [r for r in md_rows(res.stdout, 1) if r[4].startswith("misc x") and r[5].startswith("Psi (")]


def test_a_latency_budget_plan_is_paired_with_netadapt_to_the_same_latency(tmp_path):
    """issue 16, item 4: one-shot planning against the latency table (scaling.budget.unit=latency)
    and NetAdapt (compression=netadapt, scaling=none) are rows of their own - NetAdapt's not taken
    for the full-width network it starts from - compared seed by seed on plain accuracy and the
    measured latency, at each of the one-shot's training lengths."""
    sweep = tmp_path / "sweep"
    for seed, (short, long_, na) in enumerate([(0.74, 0.78, 0.77), (0.75, 0.79, 0.78), (0.75, 0.78, 0.79)]):
        for name, epochs, acc, ms in (("oneshot", 2, short, 0.40), ("equal", 11, long_, 0.41)):
            thesis_run(sweep / f"{name}{seed}", compression="prune", seed=seed, epochs=epochs,
                       budget_unit="latency", metrics={**COMMON, "test/acc": acc,
                                                       "latency/ort_fp32_b1_ms": ms})
        thesis_run(sweep / f"netadapt{seed}", "none", compression="netadapt", seed=seed, epochs=2,
                   metrics={**COMMON, "test/acc": na, "latency/ort_fp32_b1_ms": 0.42})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    one_shot = "Psi' (rs), carved (l1) + fine-tuned, latency budget"
    netadapt = "NetAdapt (latency), carved (l1) + fine-tuned, 2 epochs"
    assert {r[3] for r in md_rows(res.stdout, 0)} == {f"{one_shot}, 2 epochs", f"{one_shot}, 11 epochs",
                                                      netadapt}
    pairs = {(r[5], r[7]): r for r in md_rows(res.stdout, 1) if r[4] == "one-shot vs NetAdapt"}
    assert {k[1] for k in pairs} == {"test/acc", "latency/ort_fp32_b1_ms"}
    short = pairs[f"{one_shot}, 2 epochs", "test/acc"]
    assert short[6] == netadapt and short[8:10] == ["3", "-0.0333"] and short[12] == "A < B"
    assert pairs[f"{one_shot}, 11 epochs", "test/acc"][8:10] == ["3", "0.0033"]  # (1 + 1 - 1) / 300
    assert pairs[f"{one_shot}, 11 epochs", "latency/ort_fp32_b1_ms"][9] == "-0.0100"


def test_paired_interval_is_the_student_t_interval():
    mod = load_tables()
    mean, low, high, verdict = mod.paired_ci([0.01, 0.03, 0.02])
    half = T975_2 * 0.01 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.02, 0.02 - half, 0.02 + half), abs=1e-6)
    assert verdict == "not resolved"
    assert mod.paired_ci([0.11, 0.13, 0.12])[3] == "A > B"
    assert mod.paired_ci([-0.11, -0.13, -0.12])[3] == "A < B"
    assert mod.paired_ci([0.5]) == (0.5, None, None, "not resolved (n<2)")
    # two seeds: an interval, no verdict even where it excludes 0 (e.g. two runs ahead by the
    # same 5 of 10,000 test images: a zero-width interval)
    assert mod.paired_ci([0.11, 0.12])[1] > 0 and mod.paired_ci([0.11, 0.12])[3] == "not resolved (n<3)"
    assert mod.paired_ci([0.0005, 0.0005])[1:] == (pytest.approx(0.0005), pytest.approx(0.0005),
                                                   "not resolved (n<3)")
    assert mod.paired_ci([])[3] == "not resolved (n<2)"
    # three seeds ahead by the same 5 test images (equal but for float rounding): sd 0, a
    # zero-width interval, no verdict; a spread of one image gives one
    same = [0.8813 - 0.8808, 0.8769 - 0.8764, 0.8823 - 0.8818]
    assert mod.paired_ci(same)[0] == pytest.approx(0.0005) and mod.paired_ci(same)[3] == "not resolved (sd 0)"
    assert mod.paired_ci([0.0005, 0.0005, 0.0006])[3] == "A > B"
    assert mod.paired_ci([0.0, 0.0, 0.0])[3] == "not resolved (sd 0)"
    assert mod.mean_sd([0.81, 0.83, 0.82]) == pytest.approx((3, 0.82, 0.01))


def test_runs_of_one_seed_that_disagree_are_an_error(tmp_path):
    sweep = tmp_path / "sweep"
    for name, mapped in (("a", 0.7), ("b", 0.7), ("c", 0.6)):  # c: same seed, another Psi value
        thesis_run(sweep / name, seed=0, metrics={**COMMON, "test/acc_local": 0.8,
                                                  "baseline/mapped/test/acc_local": mapped})
    thesis_run(sweep / "d", seed=1, metrics={**COMMON, "test/acc_local": 0.9,
                                             "baseline/mapped/test/acc_local": 0.7})
    res = stats_cli(sweep)
    assert res.returncode == 1
    assert "error:" in res.stderr and "seed 0" in res.stderr and "g/a and g/c differ" in res.stderr
    rows = {r[3]: r for r in md_rows(res.stdout, 0)}
    assert rows["Psi (mapped N-way)"][5:7] == ["1", "0.7000 ± - (1)"]  # seed 0 left out
    assert rows["Psi' (rs), from scratch"][5:7] == ["0, 1", "0.8500 ± 0.0707 (2)"]  # a, b, c agree


@pytest.mark.integration
def test_a_tiny_sweep_over_seeds_produces_the_paired_difference_table(tmp_path):
    """rs and uniform, seeds 0 and 1 (four tiny runs, about 30 s): the "rs vs uniform" pair is
    the per-seed difference of the runs' own metrics.json values. A (random-weight) C-way
    checkpoint makes every run evaluate Psi mapped to N outputs: one row, one value per seed."""
    import torch
    from rsnet.models import build_model
    ckpt = tmp_path / "psi.pt"
    torch.save({"state_dict": build_model(compose_cfg(*TINY).model, 10).state_dict()}, ckpt)
    res = sweep(tmp_path, tmp_path / "sweep", *FAST, "dataset.num_classes=3", "scaling=rs,uniform",
                "seed=0,1", f"model.checkpoint={ckpt}")
    assert res.returncode == 0, res.stderr[-2000:]
    runs = {}
    for d in (tmp_path / "sweep").glob("*/metrics.json"):
        cfg = yaml.safe_load((d.parent / "config.yaml").read_text())
        runs[cfg["scaling"]["name"], cfg["seed"]] = json.loads(d.read_text())
    assert sorted(runs) == [("rs", 0), ("rs", 1), ("uniform", 0), ("uniform", 1)]
    out = tables("stats", tmp_path / "sweep", "--out", tmp_path / "t")

    pairs = md_rows(out, 1)
    local = [r for r in pairs if r[4] == "rs vs uniform" and r[7] == "test/acc_local"]
    assert len(local) == 1 and local[0][:4] == ["resnet_cifar", "synthetic", "3", "0.0450"]
    diffs = [runs["rs", s]["test/acc_local"] - runs["uniform", s]["test/acc_local"] for s in (0, 1)]
    mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
    half = 12.706205 * sd / math.sqrt(2)  # scipy.stats.t.ppf(0.975, 1)
    assert local[0][8] == "2"
    assert [float(x) for x in local[0][9:12]] == pytest.approx([mean, mean - half, mean + half],
                                                                abs=6e-5)
    # two seeds give the interval but never a verdict: one needs three
    assert local[0][12] == "not resolved (n<3)"

    rows = md_rows(out, 0)
    # one epoch, not the scratch recipe's 30: the rows say so, and still pair rs with uniform
    assert [r[3] for r in rows] == ["Psi (mapped N-way)", "Psi' (rs), from scratch, 1 epoch",
                                    "uniform, from scratch, 1 epoch"]
    psi = [runs["rs", s]["baseline/mapped/test/acc_local"] for s in (0, 1)]
    assert psi == [runs["uniform", s]["baseline/mapped/test/acc_local"] for s in (0, 1)]
    assert rows[0][5] == "0, 1"
    assert float(rows[0][6].split(" ± ")[0]) == pytest.approx(sum(psi) / 2, abs=6e-5)
    rows = rows[1:]
    acc = [runs["rs", s]["test/acc_local"] for s in (0, 1)]
    assert rows[0][5] == "0, 1" and rows[0][6].endswith(" (2)")
    mean_text, sd_text = rows[0][6].removesuffix(" (2)").split(" ± ")
    assert float(mean_text) == pytest.approx(sum(acc) / 2, abs=6e-5)
    assert float(sd_text) == pytest.approx(abs(acc[0] - acc[1]) / math.sqrt(2), abs=6e-5)
    csv_pairs = (tmp_path / "t" / "stats_pairs.csv").read_text().splitlines()
    assert sum("rs vs uniform" in r and ",test/acc_local,2," in r for r in csv_pairs) == 1
    mapped = [r for r in pairs if r[4] == "Psi' vs Psi mapped" and r[7] == "test/acc_local"]
    assert len(mapped) == 1 and mapped[0][5:9] == ["Psi' (rs), from scratch, 1 epoch", "Psi (mapped N-way)",
                                                   "test/acc_local", "2"]
    diffs = [runs["rs", s]["test/acc_local"] - psi[s] for s in (0, 1)]
    assert float(mapped[0][9]) == pytest.approx(sum(diffs) / 2, abs=6e-5)


def test_distilled_and_misc_multiplier_runs_are_rows_of_their_own(tmp_path):
    """A distilled carve is compared with the same carve without distillation; another misc
    multiplier is another row, never mixed into the default one."""
    base = {"model/name": "googlenet_rs", "dataset/name": "tiny_imagenet", "data/num_outputs": 5}
    for seed, (plain, kd, m9) in enumerate([(0.60, 0.70, 0.50), (0.62, 0.71, 0.52)]):
        for name, acc, extra in (("plain", plain, ""), ("kd", kd, "distill"), ("m9", m9, "m9")):
            d = tmp_path / "sweep" / f"{name}{seed}"
            thesis_run(d, compression="prune", seed=seed,
                       metrics={**base, "test/acc_local": acc, "model/params": 1000})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["train"] = {"distill": {"enabled": extra == "distill"}}
            cfg["dataset"]["misc_multiplier"] = 9.0 if extra == "m9" else 1.0
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "stats",
                          str(tmp_path / "sweep")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = [r for r in res.stdout.splitlines() if r.startswith("| googlenet_rs")]
    names = [r.split(" | ")[3] for r in rows]
    carved = "Psi' (rs), carved (l1) + fine-tuned"
    assert carved in names and f"{carved}, distilled" in names and f"{carved}, misc x9" in names
    pair = next(r for r in rows if "| distilled vs not |" in r and "| test/acc_local |" in r)
    assert "| 2 | 0.0950 |" in pair  # mean of 0.10 and 0.09


def test_a_carve_distilled_from_a_run_is_paired_with_the_carve_distilled_from_psi(tmp_path):
    """train.distill.teacher (e.g. the fine-tuned Psi) makes another recipe: its own row, paired
    seed by seed with the carve distilled from Psi mapped, and with the ceiling like any carve."""
    sweep = tmp_path / "sweep"
    for seed, (mapped, from_run) in enumerate([(0.70, 0.76), (0.72, 0.77), (0.71, 0.79)]):
        for name, acc, teacher in (("kd", mapped, None), ("kd_run", from_run, f"/runs/ft{seed}")):
            d = sweep / f"{name}{seed}"
            thesis_run(d, compression="prune", seed=seed, metrics={**COMMON, "test/acc_local": acc})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["train"] = {"distill": {"enabled": True, "teacher": teacher}}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        thesis_run(sweep / f"psi_ft{seed}", "none", seed=seed,
                   metrics={**COMMON, "test/acc_local": 0.80})
    res = stats_cli(sweep, "--out", tmp_path / "t")
    assert res.returncode == 0, res.stderr
    carved = "Psi' (rs), carved (l1) + fine-tuned"
    assert [r[3] for r in md_rows(res.stdout, 0)] == [
        f"{carved}, distilled", f"{carved}, distilled from a run", "full width, fine-tuned"]
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    teacher = pairs["teacher: a run vs Psi mapped", f"{carved}, distilled from a run", "test/acc_local"]
    assert teacher[6] == f"{carved}, distilled" and teacher[8:10] == ["3", "0.0633"]
    assert ("Psi' vs Psi fine-tuned", f"{carved}, distilled from a run", "test/acc_local") in pairs


def test_pruning_criteria_are_paired_with_l1_and_random_and_iterative_with_one_shot(tmp_path):
    """The feature-map study's comparisons (scripts/evidence/vgg_featuremap.sh): a criterion
    against L1 and random pruning, random against L1 (once), and K-step iterative pruning
    against one-shot with the same criterion, on plain accuracy too; steps make a row."""
    sweep = tmp_path / "sweep"
    acc = {("hrank", 1): 0.90, ("l1", 1): 0.89, ("random", 1): 0.87, ("hrank", 4): 0.91}
    for seed, shift in enumerate((0.0, 0.01, -0.005)):
        for (crit, steps), a in acc.items():
            d = sweep / f"{crit}{steps}_{seed}"
            thesis_run(d, compression="prune", seed=seed, metrics={
                **COMMON, "test/acc": a + shift * (crit == "hrank") + 0.001 * seed * (steps == 4)})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["compression"] = {"name": "prune", "criterion": {"name": crit}, "steps": steps}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = stats_cli(sweep)
    assert res.returncode == 0, res.stderr
    carved = "Psi' (rs), carved ({}) + fine-tuned"
    assert carved.format("hrank") + ", 4 steps" in {r[3] for r in md_rows(res.stdout, 0)}
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    names = {k[0] for k in pairs}
    assert {"hrank vs l1", "hrank vs random", "random vs l1", "iterative vs one-shot"} <= names
    assert "l1 vs random" not in names and "random vs random" not in names
    vs_l1 = pairs["hrank vs l1", carved.format("hrank"), "test/acc"]
    assert vs_l1[6] == carved.format("l1") and vs_l1[8:10] == ["3", "0.0117"]  # 0.01 + 0.005/3
    iterative = pairs["iterative vs one-shot", carved.format("hrank") + ", 4 steps", "test/acc"]
    assert iterative[6] == carved.format("hrank") and iterative[8:10] == ["3", "0.0110"]  # 0.01 + 0.001 seed
    assert iterative[12] == "A > B"
    tally = {(r[0], r[1]): r[2:] for r in md_rows(res.stdout, 2)}  # stats.md's third table
    for (name, metric), counts in tally.items():
        judged = [r[12] for r in pairs.values() if name in ("all", r[4]) and metric in ("all", r[7])
                  and not r[12].startswith("not resolved (")]
        assert counts[:4] == [str(len(judged))] + [str(judged.count(v)) for v in ("A > B", "A < B", "not resolved")]
    assert tally["iterative vs one-shot", "all"][:2] == ["1", "1"]  # test/acc, resolved


def test_verdict_tally_counts_only_intervals_that_can_judge_and_the_chance_share():
    """stats.md's "Verdicts by comparison": pairs of two seeds or equal differences cannot give a
    verdict and are not counted; 5 % of the counted intervals would exclude 0 by chance."""
    mod = load_tables()
    header = ["comparison", "metric", "verdict"]
    pairs = [["apoz vs l1", "test/acc", v] for v in ("A < B", "not resolved", "not resolved (n<3)")]
    pairs += [["apoz vs l1", "int8/test/acc", "not resolved (sd 0)"]]
    pairs += [["iterative vs one-shot", "test/acc", v] for v in ("A > B", "A < B") + ("not resolved",) * 18]
    head, table = mod.verdict_tally(header, pairs)
    assert head[2:] == ["intervals", "A > B", "A < B", "not resolved", "expected to exclude 0 by chance"]
    assert table == [["apoz vs l1", "all", "2", "0", "1", "1", "0.1"],
                     ["iterative vs one-shot", "all", "20", "1", "1", "18", "1.0"],
                     ["all", "test/acc", "22", "1", "2", "19", "1.1"],
                     ["all", "all", "22", "1", "2", "19", "1.1"]]


def test_stats_plot_draws_each_paired_interval_in_points_per_metric(tmp_path):
    """tables.py stats --plot: a forest plot of the pairs that have an interval, one panel per
    metric, accuracies in points, the verdict kept; a pair of one seed is not drawn, and with no
    interval at all the plot says so (an older plot must not stay as if it were current)."""
    sweep = tmp_path / "sweep"
    for seed, shift in enumerate((0.0, 0.002, -0.001)):
        for crit, a in (("hrank", 0.90), ("l1", 0.89)):
            d = sweep / f"{crit}_{seed}"
            thesis_run(d, compression="prune", seed=seed, metrics={**COMMON, "test/acc": a + shift * (crit == "hrank")})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["compression"] = {"name": "prune", "criterion": {"name": crit}, "steps": 1}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    thesis_run(sweep / "random_0", compression="prune", seed=0, metrics={**COMMON, "test/acc": 0.5})
    cfg = yaml.safe_load((sweep / "random_0" / "config.yaml").read_text())
    cfg["compression"] = {"name": "prune", "criterion": {"name": "random"}, "steps": 1}
    (sweep / "random_0" / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = stats_cli(sweep, "--plot", tmp_path / "pairs.png")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = load_tables()
    groups, _ = t.by_seed(t.stats_entries(t.run_dirs([sweep])))
    panels = t.forest_rows(*t.stats_pairs(groups))
    assert "test/acc" in panels
    (label, mean, low, high, n, verdict), = [r for r in panels["test/acc"] if r[0].startswith("hrank vs l1")]
    assert label == "hrank vs l1 | Psi' (rs), carved (hrank) + fine-tuned"
    diffs = [1.0, 1.2, 0.9]  # points: 0.01 plus each seed's shift
    half = T975_2 * statistics.stdev(diffs) / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((3.1 / 3, 3.1 / 3 - half, 3.1 / 3 + half), abs=0.01)
    assert (n, verdict) == (3, "A > B")
    assert not any("random" in r[0] for rows in panels.values() for r in rows)  # one seed: no interval
    assert t.forest_rows(*t.stats_pairs(t.by_seed(t.stats_entries(t.run_dirs([sweep / "random_0",
                                                                        sweep / "l1_0"])))[0])) == {}
    before = (tmp_path / "pairs.png").read_bytes()
    res = stats_cli(sweep / "random_0", sweep / "l1_0", "--plot", tmp_path / "pairs.png")
    assert res.returncode == 0 and "no paired difference has an interval yet" in res.stderr
    after = (tmp_path / "pairs.png").read_bytes()
    assert after[:8] == b"\x89PNG\r\n\x1a\n" and after != before


def test_iterative_pruning_is_compared_with_one_shot_at_equal_training_epochs(tmp_path):
    """An iterative run's epochs count its fine-tuning between steps: 4 steps with 1 epoch
    between them and 5 after the last is 8 epochs, paired with the one-shot run of 8, not of 5."""
    sweep = tmp_path / "sweep"
    runs = {"one5": (1, 5, 0.80), "one8": (1, 8, 0.82), "iter": (4, 5, 0.85)}
    for seed in (0, 1):
        for name, (steps, epochs, acc) in runs.items():
            d = sweep / f"{name}_{seed}"
            thesis_run(d, compression="prune", seed=seed, epochs=epochs,
                       metrics={**COMMON, "test/acc": acc + 0.01 * seed})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["compression"] = {"name": "prune", "criterion": {"name": "hrank"}, "steps": steps,
                                  "step_epochs": 1}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = stats_cli(sweep)
    assert res.returncode == 0, res.stderr
    carved = "Psi' (rs), carved (hrank) + fine-tuned"
    assert {carved + ", 4 steps, 8 epochs", carved + ", 8 epochs", carved + ", 5 epochs"} <= {
        r[3] for r in md_rows(res.stdout, 0)}
    iterative = [r for r in md_rows(res.stdout, 1) if r[4] == "iterative vs one-shot" and r[7] == "test/acc"]
    assert [r[6] for r in iterative] == [carved + ", 8 epochs"]  # not the 5-epoch one-shot run
    assert iterative[0][8:10] == ["2", "0.0300"]


def bench_int8_json(path, times, section="int8"):
    """A bench.py int8 JSON timing the runs named in ``times`` ({short label: (ort fp32 ms, ort
    int8 ms)}, as bench_int8 labels a run directory) at batch 1, on ONNX Runtime only."""
    rows = [{"model": f"g Psi' ({label})", "test_images": 10, "ort_fp32_acc": 0.5, "ort_int8_acc": 0.5,
             "ort_fp32_b1_ms": fp32, "ort_int8_b1_ms": int8} for label, (fp32, int8) in times.items()]
    path.write_text(json.dumps({"section": section, "args": {"latency_batch": "1"}, "rows": rows}))
    return path


def deploy_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "deploy", *map(str, args)],
                          capture_output=True, text=True)


def test_deploy_table_joins_accuracy_over_seeds_with_the_bench_s_time_per_image(tmp_path):
    """scripts/evidence/vgg_featuremap.sh's table of the proposal's measures: per recipe the
    accuracy over seeds, the size, and each runtime's time per image averaged over the runs the
    bench timed (here seeds 0 and 1 of L1, none of HRank), joined by run directory name."""
    sweep = tmp_path / "sweep"
    for crit, accs in {"l1": (0.80, 0.82, 0.84), "hrank": (0.70, 0.72, 0.74)}.items():
        for seed, acc in enumerate(accs):
            d = sweep / f"compression_criterion={crit},model.checkpoint=psi.pt,seed={seed}"
            thesis_run(d, compression="prune", seed=seed, metrics={
                **COMMON, "test/acc": acc, "int8/test/acc": acc - 0.01, "export/onnx_bytes": 4000 + seed,
                "int8/bytes": 1000})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["compression"] = {"name": "prune", "criterion": {"name": crit}, "steps": 1}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    bench = bench_int8_json(tmp_path / "runtimes.json", {
        "compression_criterion=l1,seed=0": (2.0, 0.5), "compression_criterion=l1,seed=1": (3.0, 0.7)})
    res = deploy_cli(sweep, "--runtimes", bench, "--csv", tmp_path / "deploy.csv")
    assert res.returncode == 0, res.stderr
    header, _, *body = [line.removeprefix("| ").removesuffix(" |").split(" | ")
                        for line in res.stdout.splitlines()]
    rows = {r[3]: r for r in body}
    l1 = dict(zip(header, rows["Psi' (rs), carved (l1) + fine-tuned"]))
    assert l1["seeds"] == "0, 1, 2" and l1["fp32 test acc"] == "0.8200 ± 0.0200 (3)"
    assert l1["int8 test acc"] == "0.8100 ± 0.0200 (3)" and l1["ONNX bytes"] == "4,001"
    assert l1["params"] == "430,000" and l1["MACs"] == "20,000,000"
    assert l1["timed seeds"] == "0, 1"
    assert l1["ONNX Runtime fp32 b1 (ms)"] == "2.50" and l1["ONNX Runtime int8 b1 (ms)"] == "0.60"
    hrank = dict(zip(header, rows["Psi' (rs), carved (hrank) + fine-tuned"]))
    assert hrank["timed seeds"] == "-" and hrank["ONNX Runtime fp32 b1 (ms)"] == "-"
    assert "OpenVINO fp32 b1 (ms)" not in header  # a runtime the bench did not run
    with open(tmp_path / "deploy.csv") as f:
        assert next(csv.reader(f)) == header

    # a bench row of another study's run is an error, not a row silently without times
    other = bench_int8_json(tmp_path / "other.json", {"compression_criterion=l1,seed=7": (1.0, 1.0)})
    res = deploy_cli(sweep, "--runtimes", other)
    assert res.returncode == 1 and "'compression_criterion=l1,seed=7' matches no run" in res.stderr
    for bad, message in [(bench_int8_json(tmp_path / "train.json", {}, section="train"), "not int8"),
                         (tmp_path / "missing.json", "is not a bench.py int8 JSON")]:
        res = deploy_cli(sweep, "--runtimes", bad)
        assert res.returncode == 1 and message in res.stderr and str(bad) in res.stderr


def test_trained_weights_exported_without_training_are_named_so(tmp_path):
    """train.epochs=0 with model.checkpoint (e.g. the VGG-16 study's unpruned reference): the
    weights as given, not "fine-tuned, 0 epochs"."""
    thesis_run(tmp_path / "sweep" / "given", scaling="none", epochs=0, metrics=COMMON)
    res = stats_cli(tmp_path / "sweep")
    assert res.returncode == 0, res.stderr
    assert [r[3] for r in md_rows(res.stdout, 0)] == ["full width, trained weights as given (no training)"]


def test_a_network_taught_by_a_run_is_paired_with_the_same_network_untaught(tmp_path):
    """scripts/evidence/kd_cifar.sh: a network trained with a teacher run (train.distill.teacher)
    against the same network and recipe without one, seed by seed, on plain and int8 accuracy."""
    sweep = tmp_path / "sweep"
    for seed, (plain, taught) in enumerate([(0.80, 0.83), (0.81, 0.83)]):
        for name, acc, teacher in (("plain", plain, None), ("kd", taught, "/runs/teacher")):
            d = sweep / f"{name}{seed}"
            thesis_run(d, "none", seed=seed,
                       metrics={**COMMON, "test/acc": acc, "int8/test/acc": acc - 0.01})
            cfg = yaml.safe_load((d / "config.yaml").read_text())
            cfg["train"] = {"distill": {"enabled": teacher is not None, "teacher": teacher}}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = stats_cli(sweep)
    assert res.returncode == 0, res.stderr
    pairs = {(r[4], r[7]): r for r in md_rows(res.stdout, 1)}
    for metric in ("test/acc", "int8/test/acc"):
        taught = pairs["distilled from a run vs not", metric]
        assert taught[5:7] == ["full width, fine-tuned, distilled from a run", "full width, fine-tuned"]
        assert taught[8:10] == ["2", "0.0250"]


def test_learning_curves_of_a_finished_and_a_running_run(tmp_path):
    import torch
    rows = [{"epoch": e, "train/loss": 5.0 - e, "train/acc": 0.1 * e, "val/acc": 0.05 * e,
             "val/acc5": 0.2 * e, "val/loss": 4.0 - e, "lr": 0.1, "train/images_per_s": 80.0,
             "train/epoch_s": 1000.0} for e in (1, 2, 3)]
    done, running = tmp_path / "done", tmp_path / "running"
    for d, name in ((done, "a"), (running, "b")):
        (d / "checkpoints").mkdir(parents=True)
        (d / "config.yaml").write_text(f"name: {name}\ntrain: {{epochs: 16}}\n")
    (done / "history.json").write_text(json.dumps(rows))
    torch.save({"history": rows[:2], "model": {}}, running / "checkpoints" / "last.pt")
    out = tables("curve", done, running, "--out", tmp_path / "c")
    assert "(finished)" in out and "(in progress: 2 of 16 epochs)" in out
    csv_b = (tmp_path / "c" / "b.csv").read_text().splitlines()
    assert len(csv_b) == 3 and csv_b[2].startswith("2,") and "0.1000" in csv_b[2]
    assert (tmp_path / "c" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_deploy_compares_int8_with_the_same_runtime_and_psi_prime_with_psi():
    bench = load_benchmark("deploy")
    psi = {"run": "psi", "model/macs": 1000, "test/acc": 0.8, "onnx/test/acc": 0.8,
           "int8/test/acc": 0.79, "latency/torch_fp32_b1_ms": 10.0, "latency/ort_fp32_b1_ms": 4.0,
           "latency/ort_int8_b1_ms": 5.0, "latency/openvino_fp32_b1_ms": 2.0,
           "latency/openvino_int8_b1_ms": 1.0}
    small = {**psi, "run": "psi'", "model/macs": 100, "latency/ort_fp32_b1_ms": 1.0,
             "latency/ort_int8_b1_ms": 1.0, "latency/openvino_fp32_b1_ms": 0.5,
             "latency/openvino_int8_b1_ms": 0.4}
    rows = bench.deploy_ratios([psi, small])
    assert rows[0]["int8_speedup/ort_int8_b1"] == pytest.approx(0.8)  # int8 slower than fp32
    assert rows[0]["int8_speedup/openvino_int8_b1"] == pytest.approx(2.0)
    assert rows[1]["vs_first/ort_fp32_b1"] == pytest.approx(0.25)
    assert rows[1]["vs_first/openvino_int8_b1"] == pytest.approx(0.4)
    assert rows[1]["vs_first/macs"] == pytest.approx(0.1)
    text = bench.deploy_markdown({"rows": rows, "machine": {"cpu_flags": {"amx_int8": False}}})
    assert "| `psi` | OpenVINO | - | - | 2.00 | 1.00 | 2.00x |" in text
    assert "| `psi'` | 0.100 | 0.250 | 0.200 | 0.250 | 0.400 |" in text
    assert "amx_int8 no" in text


def gmp_run(path, model="resnet20", sparsity=0.6, schedule="polynomial", augment=True, seed=0,
            metrics=None):
    """A fake experiment=cifar_gmp run: sparsity None is the dense reference (compression=none)."""
    path.mkdir(parents=True)
    compression = {"name": "none"} if sparsity is None else {"name": "magnitude", "sparsity": {
        "final_sparsity": sparsity, "begin_epoch": 0.0,
        "end_epoch": 0.0 if schedule == "constant" else 5.0}}
    cfg = {"name": "cifar_gmp", "seed": seed, "model": {"name": model, "checkpoint": f"{model}.th"},
           "dataset": {"name": "cifar10_jpeg", "num_classes": None,
                       "augment": {"crop_padding": 4 if augment else 0, "flip": augment}},
           "scaling": {"name": "none"}, "compression": compression, "export": {"name": "int8"},
           "train": {"distill": {"enabled": False}}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(
            {"model/name": model, "dataset/name": "cifar10_jpeg", "data/num_outputs": 10, **metrics}))


def gmp_metrics(acc, int8, sparsity, gzip, int8_gzip):
    return {"test/acc": acc, "int8/test/acc": int8, "sparsity/overall": sparsity,
            "export/onnx_bytes": 1_000_000, "export/onnx_gzip_bytes": gzip,
            "int8/bytes": 300_000, "int8/gzip_bytes": int8_gzip}


def gmp_sweep(sweep):
    """ResNet-20 at 60 %: dense, polynomial and constant (seeds 0-2, augmentation on), polynomial
    and constant without augmentation (seed 0), one constant 70 % run killed. Per seed,
    polynomial - constant: fp32 0.01, 0.03, 0.02 (the interval straddles 0), int8 0.11, 0.12,
    0.115 (A > B); polynomial - dense fp32: -0.02, -0.01, -0.02 (A < B)."""
    poly = [(0.81, 0.71), (0.83, 0.73), (0.82, 0.72)]
    const = [(0.80, 0.60), (0.80, 0.61), (0.80, 0.605)]
    dense = [0.83, 0.84, 0.84]
    for seed in range(3):
        gmp_run(sweep / f"dense{seed}", sparsity=None, seed=seed,
                metrics=gmp_metrics(dense[seed], dense[seed] - 0.01, 0.0, 930_000, 280_000))
        gmp_run(sweep / f"poly{seed}", seed=seed,
                metrics=gmp_metrics(*poly[seed], 0.6, 400_000 + 3_000 * seed, 130_000))
        gmp_run(sweep / f"const{seed}", schedule="constant", seed=seed,
                metrics=gmp_metrics(*const[seed], 0.6, 401_000, 131_000))
    gmp_run(sweep / "poly_noaug", augment=False, metrics=gmp_metrics(0.70, 0.69, 0.6, 400_000, 130_000))
    gmp_run(sweep / "const_noaug", schedule="constant", augment=False,
            metrics=gmp_metrics(0.65, 0.64, 0.6, 400_000, 130_000))
    gmp_run(sweep / "const70_killed", sparsity=0.7, schedule="constant")  # no metrics.json


def test_gmp_table_gives_accuracy_over_seeds_sparsity_and_stored_sizes(tmp_path):
    gmp_sweep(tmp_path / "sweep")
    out = tables("gmp", tmp_path / "sweep", "--csv", tmp_path / "gmp.csv")
    lines = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert lines[0] == ("| model | target sparsity | schedule | augmentation | seeds | unfinished | "
                        "fp32 test acc | int8 test acc | sparsity | ONNX fp32 bytes | fp32 gzip bytes | "
                        "int8 bytes | int8 gzip bytes | fp32 gzip / fp32 | int8 gzip / fp32 |")
    rows = [r.removeprefix("| ").removesuffix(" |").split(" | ") for r in lines[1:]]
    assert [r[:4] for r in rows] == [["resnet20", "0", "dense", "on"],
                                     ["resnet20", "0.6000", "polynomial", "on"],
                                     ["resnet20", "0.6000", "polynomial", "off"],
                                     ["resnet20", "0.6000", "constant", "on"],
                                     ["resnet20", "0.6000", "constant", "off"],
                                     ["resnet20", "0.7000", "constant", "on"]]
    dense, poly, poly_off, const, const_off, killed = rows
    assert dense[4:8] == ["0, 1, 2", "0", "0.8367 ± 0.0058 (3)", "0.8267 ± 0.0058 (3)"]
    assert dense[8:] == ["0.0000", "1,000,000", "930,000", "300,000", "280,000", "0.930", "0.280"]
    assert poly[4:8] == ["0, 1, 2", "0", "0.8200 ± 0.0100 (3)", "0.7200 ± 0.0100 (3)"]
    # sizes are means over the seeds (400,000, 403,000, 406,000); gzip as fractions of the fp32 file
    assert poly[8:] == ["0.6000", "1,000,000", "403,000", "300,000", "130,000", "0.403", "0.130"]
    assert poly_off[4:7] == ["0", "0", "0.7000 ± - (1)"]
    assert const[6] == "0.8000 ± 0.0000 (3)" and const_off[6] == "0.6500 ± - (1)"
    assert killed[4:8] == ["-", "1", "-", "-"] and killed[8:] == ["-"] * 7  # never zeros
    assert (tmp_path / "gmp.csv").read_text().count("\n") == 7


def test_gmp_plot_draws_accuracy_from_the_dense_reference_and_stored_sizes(tmp_path):
    """tables.py gmp --plot: each schedule's accuracy line starts at the dense reference trained
    with the same augmentation (mean ± sd over seeds), sizes are means over the finished runs at
    each sparsity (the killed 70 % run adds nothing); the PNG is written."""
    gmp_sweep(tmp_path / "sweep")
    tables("gmp", tmp_path / "sweep", "--plot", tmp_path / "gmp.png")
    assert (tmp_path / "gmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = load_script("tables")
    curves = t.gmp_curves([t.gmp_entry(d) for d in t.run_dirs([tmp_path / "sweep"])])
    acc = curves["resnet20"]["acc"]
    assert list(acc) == ["polynomial, augmentation on", "polynomial, augmentation off",
                         "constant, augmentation on", "constant, augmentation off"]
    (x0, n0, m0, sd0), (x1, n1, m1, sd1) = acc["polynomial, augmentation on"]
    assert (x0, n0, x1, n1) == (0, 3, 0.6, 3)
    assert (m0, sd0, m1, sd1) == pytest.approx((0.8367, 0.0058, 0.82, 0.01), abs=1e-4)
    assert acc["constant, augmentation off"] == [(0.6, 1, pytest.approx(0.65), None)]  # no dense run
    sizes = curves["resnet20"]["sizes"]
    # 8 runs at 60 %: (400 + 403 + 406 + 3 x 401 + 400 + 400) k / 8
    assert sizes["fp32 ONNX, gzip -9"] == [(0, 930_000), (0.6, pytest.approx(401_500))]
    assert [x for x, _ in sizes["int8 ONNX"]] == [0, 0.6]


def test_stats_pair_polynomial_with_constant_sparsity_seed_by_seed(tmp_path):
    gmp_sweep(tmp_path / "sweep")
    res = stats_cli(tmp_path / "sweep")
    assert res.returncode == 0, res.stderr
    part = res.stdout.split("## Paired")
    rows = {r.split(" | ")[3]: r for r in part[0].splitlines() if r.startswith("| resnet20")}
    poly = "full width, fine-tuned, magnitude-pruned 0.6"
    assert list(rows) == ["full width, fine-tuned", poly, f"{poly}, augmentation off",
                          f"{poly}, constant sparsity", f"{poly}, constant sparsity, augmentation off"]
    assert "| 0.8367 ± 0.0058 (3) |" in rows["full width, fine-tuned"]  # the dense reference
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    half = T975_2 * 0.01 / math.sqrt(3)
    fp32 = pairs["polynomial vs constant", poly, "test/acc"]
    assert fp32[:4] == ["resnet20", "cifar10_jpeg", "10", "-"] and fp32[6] == f"{poly}, constant sparsity"
    assert fp32[8] == "3"
    assert [float(x) for x in fp32[9:12]] == pytest.approx([0.02, 0.02 - half, 0.02 + half], abs=5e-5)
    assert fp32[12] == "not resolved"
    int8 = pairs["polynomial vs constant", poly, "int8/test/acc"]
    assert int8[8:10] == ["3", "0.1150"] and int8[12] == "A > B"  # 0.11, 0.12, 0.115: sd 0.005
    # without augmentation: its own pair, one seed, never matched with the augmented rows
    off = pairs["polynomial vs constant", f"{poly}, augmentation off", "test/acc"]
    assert off[6] == f"{poly}, constant sparsity, augmentation off"
    assert off[8:10] == ["1", "0.0500"] and off[12] == "not resolved (n<2)"
    dense = pairs["magnitude-pruned vs dense", poly, "test/acc"]
    assert dense[6] == "full width, fine-tuned" and dense[8:10] == ["3", "-0.0167"]
    assert dense[12] == "A < B"  # -0.02, -0.01, -0.02
    assert ("magnitude-pruned vs dense", f"{poly}, augmentation off", "test/acc") not in pairs  # no dense
    assert not any(k[2] == "test/acc_local" for k in pairs)  # no misc class: no local accuracy


def test_stats_pair_each_recipe_with_and_without_augmentation_seed_by_seed(tmp_path):
    """"augmentation on vs off": a row trained without the dataset's augmentation against the
    same row with it, matched seed by seed; judged on plain and int8 accuracy; none for a row
    whose augmented twin is missing."""
    sweep = tmp_path / "sweep"
    gmp_sweep(sweep)
    for seed, acc in enumerate([0.80, 0.82, 0.81]):  # dense without augmentation, three seeds
        gmp_run(sweep / f"dense_noaug{seed}", sparsity=None, augment=False, seed=seed,
                metrics=gmp_metrics(acc, acc - 0.02, 0.0, 930_000, 280_000))
    gmp_run(sweep / "poly70_noaug", sparsity=0.7, augment=False,  # no augmented 70 % polynomial run
            metrics=gmp_metrics(0.6, 0.6, 0.7, 300_000, 100_000))
    res = stats_cli(sweep)
    assert res.returncode == 0, res.stderr
    pairs = {(r[4], r[5], r[7]): r for r in md_rows(res.stdout, 1)}
    dense = pairs["augmentation on vs off", "full width, fine-tuned", "test/acc"]
    assert dense[6] == "full width, fine-tuned, augmentation off"
    # per seed 0.83 - 0.80, 0.84 - 0.82, 0.84 - 0.81: 0.03, 0.02, 0.03
    assert dense[8:10] == ["3", "0.0267"] and dense[12] == "A > B"
    assert pairs["augmentation on vs off", "full width, fine-tuned", "int8/test/acc"][8:10] == ["3", "0.0367"]
    poly = "full width, fine-tuned, magnitude-pruned 0.6"
    one = pairs["augmentation on vs off", poly, "test/acc"]  # seed 0 only: 0.81 - 0.70
    assert one[6] == f"{poly}, augmentation off" and one[8:10] == ["1", "0.1100"]
    assert one[12] == "not resolved (n<2)"
    assert ("augmentation on vs off", f"{poly}, constant sparsity", "int8/test/acc") in pairs
    assert not any("0.7" in k[1] for k in pairs if k[0] == "augmentation on vs off")  # no twin
    # the seed project's claim: a pruned network with augmentation against the dense one without
    pays = {k[1]: r for k, r in pairs.items() if k[0] == "pruned with augmentation vs dense without"
            and k[2] == "test/acc"}
    assert set(pays) == {poly, f"{poly}, constant sparsity"}  # only pruned rows trained with it
    assert {r[6] for r in pays.values()} == {"full width, fine-tuned, augmentation off"}
    # polynomial 0.81, 0.83, 0.82 against 0.80, 0.82, 0.81: +0.01 on every seed, no spread
    assert pays[poly][8:10] == ["3", "0.0100"] and pays[poly][12] == "not resolved (sd 0)"
    # constant 0.80 on every seed: 0, -0.02, -0.01
    assert pays[f"{poly}, constant sparsity"][8:12] == ["3", "-0.0100", "-0.0348", "0.0148"]


def test_reruns_are_matched_by_label_with_an_interval_beside_the_seed_sd(tmp_path):
    """tables.py rerun: the same runs (labels) run again elsewhere; run by run the two results
    and machines, per metric the mean rerun - first with its interval, the rerun sd beside the
    first runs' seed sd; a run of another network or seed under the same label is an error."""
    first, again = tmp_path / "first", tmp_path / "again"
    for seed, (dense, poly) in enumerate([(0.83, 0.81), (0.84, 0.83), (0.84, 0.82)]):
        gmp_run(first / f"dense{seed}", sparsity=None, seed=seed,
                metrics=gmp_metrics(dense, dense - 0.01, 0.0, 930_000, 280_000))
        gmp_run(first / f"poly{seed}", seed=seed, metrics=gmp_metrics(poly, poly - 0.01, 0.6, 400_000, 130_000))
    intel = {"machine/cpu": "Intel Xeon"}
    for name, seed, acc in [("dense1", 1, 0.845), ("dense2", 2, 0.83), ("poly1", 1, 0.835), ("poly2", 2, 0.84)]:
        gmp_run(again / name, sparsity=None if name.startswith("dense") else 0.6, seed=seed,
                metrics={**gmp_metrics(acc, acc - 0.01, 0.6, 400_000, 130_000), **intel})
    gmp_run(again / "const0", schedule="constant", metrics=gmp_metrics(0.8, 0.8, 0.6, 1, 1))  # not in first
    out = tables("rerun", first, again, "--csv", tmp_path / "rerun.csv")
    summary, runs = md_rows(out, 0), md_rows(out, 1)
    # differences 0.005, -0.01, 0.005, 0.02: mean 0.005, sd sqrt(0.00015)
    half = 3.182446 * math.sqrt(0.00015) / 2  # t(0.975, 3)
    for metric, row in zip(["test/acc", "int8/test/acc"], summary):
        assert row[:2] == [metric, "4"] and row[5] == "not resolved"
        assert [float(x) for x in row[2:5]] == pytest.approx([0.005, 0.005 - half, 0.005 + half], abs=5e-5)
        assert row[6] == "0.0200"
        assert float(row[7]) == pytest.approx(math.sqrt(0.00015 / 2), abs=5e-5)
        # seed sd pooled over dense (0.83, 0.84, 0.84) and polynomial (0.81, 0.83, 0.82)
        assert float(row[8]) == pytest.approx(math.sqrt((2 * 0.0001 / 3 + 2 * 0.0001) / 4), abs=5e-5)
    assert len(summary) == 2 and len(runs) == 8  # no local accuracy without a misc class
    dense1 = runs[0]
    assert dense1[:6] == ["resnet20", "full width, fine-tuned", "1", "not recorded", "Intel Xeon", "test/acc"]
    assert dense1[6:] == ["0.8400", "0.8450", "0.0050"]
    assert (tmp_path / "rerun.csv").read_text().count("\n") == 9
    gmp_run(again / "poly0", seed=5, metrics=gmp_metrics(0.8, 0.8, 0.6, 1, 1))  # poly0's label, seed 5
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "rerun", str(first), str(again)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "cifar_gmp/poly0 is resnet20" in res.stderr and "seed 5" in res.stderr
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "rerun", str(first / "poly1"),
                          str(again / "const0")], capture_output=True, text=True)
    assert res.returncode == 1 and "no finished run" in res.stderr


def test_records_keep_a_study_s_tables_after_its_run_directories_are_gone(tmp_path):
    """tables.py records writes the finished runs as runs.jsonl; stats from that file alone
    equals stats from the run directories, and the file merged with the same directories (a
    later session resuming the study beside it) counts each run once."""
    sweep = tmp_path / "sweep"
    seed_sweep(sweep)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "tables.py"), "records", str(sweep),
                          "--out", str(tmp_path / "runs.jsonl")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 3 + 4 + 2 + 1  # rs, uniform, carved, Psi fine-tuned; not the killed run
    from_dirs = stats_cli(sweep)
    from_records = stats_cli(tmp_path / "runs.jsonl")
    merged = stats_cli(tmp_path / "runs.jsonl", sweep)
    assert from_dirs.returncode == from_records.returncode == merged.returncode == 0
    assert from_records.stdout == from_dirs.stdout == merged.stdout
    assert "0.8200 ± 0.0100 (3)" in from_records.stdout


def test_a_broken_records_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"label": "a", "metrics": {}, "config": {}}\n{"label": "b"}\n')
    res = stats_cli(bad)
    assert res.returncode != 0 and f"{bad}:2 is not a run record" in res.stderr
    assert "Traceback" not in res.stderr

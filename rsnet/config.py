"""Structured-config schemas for rsnet's own blocks, registered with Hydra's ConfigStore.

The primary config (``conf/config.yaml``) lists ``rsnet_schema`` first in its defaults, so
every composed config is checked against :class:`RunConfig`: a misspelt key in the
dataset, model or train blocks fails at compose time. Blocks that hold a ``_target_``
(sources, architectures, optimizers, schedules, losses) are free-form and are checked when
instantiated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# The pipeline's stages in order; ``stop_after`` names one of them.
STAGES = ("data", "model", "baseline", "plan", "prune", "train", "evaluate", "export", "report")


@dataclass
class AugmentConfig:
    crop_padding: int = 4  # random crop with this much zero padding (0: no crop)
    flip: bool = True  # random horizontal flip


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: Any = MISSING  # {_target_: rsnet.data.sources.<Source>, ...}
    root: Optional[str] = None  # data folder; else $RSNET_DATA, else ./data (then ../shared/data)
    cache_dir: Optional[str] = None  # decoded-image cache; else $RSNET_CACHE, else ~/.cache/rsnet
    image_size: Optional[int] = None  # resize at decode time; None keeps the native size
    # with image_size: shorter side resized to resize_size, then the centre image_size x
    # image_size crop (torchvision's eval preprocessing, e.g. 232 -> 224); None: straight to
    # image_size. model.arch.weights fills it, image_size and interpolation (docs/models.md)
    resize_size: Optional[int] = None
    interpolation: Optional[str] = None  # of resize_size: bilinear | bicubic; None: bilinear
    num_classes: Optional[int] = None  # N outputs incl. misc; None = all classes, no subset
    classes: Optional[List[str]] = None  # explicit in-scope class names (else seeded choice)
    misc: bool = True  # add a misc class for everything out of scope
    misc_multiplier: float = 1.0  # misc images = m x in-scope images per class
    misc_test: str = "sampled"  # "sampled" (same m on val/test) or "all" out-of-scope test images
    # share of the out-of-scope classes held out as "unseen": never in misc training or
    # validation images; their test images judge misc detection on classes never seen
    unseen_fraction: float = 0.0
    val_fraction: float = 0.1  # held out of train, stratified, seeded
    # at most this many training images per class (seeded; after the validation split), for a
    # quick run or a small-data study; None keeps them all
    train_per_class: Optional[int] = None
    seed: int = 0
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: str = MISSING
    arch: Any = MISSING  # {_target_: builder, widths...}; num_classes is passed by the pipeline
    checkpoint: Optional[str] = None  # weights file; relative names: $RSNET_MODELS, ./models, ../shared/models
    input_size: int = 32  # square input side in pixels (for MACs, latency, export)
    head: str = "subset"  # C-way -> N-way head: "subset" (start from the baseline's rows) or "reset"
    # torch.compile speeds this family's training step up on the CPU (scripts/bench.py compile,
    # docs/bench/compile.json): train.compile=auto follows it
    compile_pays: bool = False


@dataclass
class DistillConfig:
    enabled: bool = False  # Hinton's loss against the unpruned, trained baseline (model.checkpoint)
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha weights the hard labels
    # With a misc class: add a bias to the teacher's misc logit (logsumexp of the out-of-scope
    # classes), fitted on the validation images so the mapped N-way teacher is calibrated
    # (distill.json). false = the plain log-sum-exp mapping (the old behaviour, kept for
    # comparison), whose misc mass over many out-of-scope classes teaches the student "misc".
    calibrate_misc: bool = True
    # A finished run directory whose trained model is the teacher in place of the baseline,
    # e.g. Psi fine-tuned on the same subset (recipe=finetune, same dataset.* settings and seed):
    # its N outputs are the soft targets as they are (no mapping, no misc calibration).
    teacher: Optional[str] = None


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    eval_batch_size: int = 500
    # _target_ blocks, filled from the groups conf/train/{optimizer,scheduler,loss}/
    optimizer: Any = None  # partial: called with the model's parameters
    scheduler: Any = None  # partial: called with (optimizer, total_steps, steps_per_epoch)
    loss: Any = None
    # auto (bf16 where the device computes it natively: CUDA, or a CPU with AVX512-BF16 /
    # AMX; else fp32) | fp32 | bf16 | fp16 (fp16 on CUDA only)
    precision: str = "auto"
    channels_last: bool = True
    # torch.compile the training step: auto (where model.compile_pays says it pays) | true | false
    compile: Any = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    threads: Optional[int] = None  # torch intra-op threads; None leaves torch's default
    # Under torchrun (WORLD_SIZE > 1): batch_size is the global batch, split among the processes.
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on the CPU) | nccl | gloo
    dist_timeout_min: float = 30.0  # how long a rank waits for the others (e.g. while rank 0 evaluates)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    aux_weight: float = 0.3  # weight of an auxiliary head's loss (GoogLeNet)
    select_on: str = "val/acc"  # validation metric for best-epoch selection (a loss: lowest wins)
    latency_runs: int = 50  # timed runs for the CPU latency measurement (0 skips it)
    # last.pt is also written within an epoch every this many minutes of training (0: at
    # epoch ends only), so a killed run loses at most that much work
    checkpoint_every_min: float = 10.0
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class BudgetConfig:
    rule: str = "thesis"  # thesis: Phi (lam + N/C) | thesis_alt: Phi (lam + (1-lam) N/C) | ratio | absolute
    lam: float = 0.045  # class-agnostic share lambda of the thesis rules
    value: Optional[float] = None  # ratio of Phi (rule=ratio) or absolute cost (rule=absolute)
    # params | macs, at model.input_size | latency: ms at batch 1 on ``runtime`` with
    # ``threads`` threads, from a measured layer table (rsnet/plan/latency.py)
    unit: str = "params"
    num_base_classes: Optional[int] = None  # C; None = the dataset's number of classes
    runtime: str = "onnxruntime"  # unit=latency: the runtime the milliseconds are measured on
    threads: int = 1  # unit=latency: its intra-op threads (one core: steadier to measure)


@dataclass
class WidthRuleConfig:
    min_width: int = 1  # no micro-layer narrower than this
    round_to: Optional[int] = None  # round widths to a multiple (e.g. 8) for hardware
    # with round_to: a width below one multiple stays as planned, not lifted to the multiple
    # (the rs / uniform width rule; NetAdapt and MorphNet step by whole multiples)
    keep_narrow: bool = False


@dataclass
class ScalingConfig:
    name: str = "none"  # none | rs | uniform | factors | plan
    policy: Any = None  # {_target_: rsnet.plan.policies.<Policy>, ...}
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    widths: WidthRuleConfig = field(default_factory=WidthRuleConfig)
    tie: List[List[str]] = field(default_factory=list)  # macro-layer names that share one factor
    fixed: List[str] = field(default_factory=list)  # conv / linear names whose width must not change
    leaf_modules: List[str] = field(default_factory=list)  # modules torch.fx must not trace into
    bottleneck: bool = True  # keep the baseline's order of consecutive macro-layer output widths


@dataclass
class SparsityConfig:
    """Gradual magnitude pruning with a polynomial-decay schedule (Zhu & Gupta; TF-MOT)."""

    enabled: bool = False
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.5
    begin_epoch: float = 0.0  # schedule start, in epochs of the training stage
    end_epoch: float = 1.0  # schedule end (the last epochs fine-tune with the final masks)
    frequency: int = 100  # optimizer steps between mask updates
    power: float = 3.0
    scope: str = "layer"  # layer: each layer to the target; global: one ranking of all weights
    prune_classifier: bool = True


@dataclass
class NetAdaptConfig:
    """NetAdapt (Yang et al. 2018): iterative, resource-driven pruning (compression=netadapt)."""

    resource: str = "latency"  # latency (ONNX Runtime lookup table, ms) | macs | params
    target_ratio: float = 0.75  # stop at this fraction of the starting resource ...
    target_ms: Optional[float] = None  # ... or at this latency (resource=latency; overrides the ratio)
    init_reduction: float = 0.025  # first step's reduction, a fraction of the starting resource
    decay: float = 0.96  # the reduction shrinks by this factor per step
    max_steps: int = 100  # an error when the target needs more steps
    short_term_iters: int = 200  # optimizer steps of short-term fine-tuning per proposal (0: none)
    short_term_lr: float = 0.001  # learning rate of short-term fine-tuning (train.optimizer)
    lut_runs: int = 50  # timed ONNX Runtime runs per lookup-table entry (the fastest is kept)
    measure_runs: int = 100  # timed runs of the whole-model latency measurements


@dataclass
class MorphNetConfig:
    """MorphNet (Gordon et al. 2018): shrink with a gamma penalty, expand to the budget."""

    epochs: int = 3  # sparsifying training epochs (train.* settings otherwise)
    strength: float = 0.02  # lambda of the penalty (mean channel weight 1)
    cost: str = "macs"  # macs (FLOP regulariser) | params | none (plain L1 on gamma)
    threshold: float = 1.0e-2  # a channel is alive while its grouped |gamma| exceeds this


@dataclass
class CompressionConfig:
    name: str = "none"  # none | prune (carve the plan out of the trained baseline) | magnitude | netadapt | morphnet
    method: Any = None  # {_target_: a rsnet.stages.compress.Compression}, set by each conf/compression file
    # filter importance (prune, netadapt, morphnet): a _target_ block from the group
    # conf/compression/criterion/ (compression/criterion=hrank); None where unused
    criterion: Any = None
    init: str = "inherit"  # inherit the surviving filters' weights, or "scratch": re-initialise them
    steps: int = 1  # reach the plan in this many pruning steps ...
    step_epochs: int = 1  # ... with this many fine-tuning epochs between them
    calib_images: int = 256  # seeded training images for data-driven criteria
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    netadapt: NetAdaptConfig = field(default_factory=NetAdaptConfig)
    morphnet: MorphNetConfig = field(default_factory=MorphNetConfig)


@dataclass
class LatencyConfig:
    batch_sizes: List[int] = field(default_factory=lambda: [1, 32])
    runs: int = 100  # timed runs per measurement; the median is reported
    warmup: int = 10
    threads: int = 2  # intra-op threads for PyTorch and ONNX Runtime alike


@dataclass
class ExportConfig:
    name: str = "none"  # none | onnx (fp32) | int8 (fp32 + static int8); see conf/export/
    exporter: Any = None  # {_target_: a rsnet.stages.export.Exporter}; None: no export
    # runtimes measured beside ONNX Runtime: {name: {_target_: a rsnet.deploy.runtimes
    # DeployRuntime}}, from the group conf/export/runtimes/ (export/runtimes=[openvino])
    runtimes: Any = field(default_factory=dict)
    opset: int = 18
    dynamic_batch: bool = True
    compact: bool = True  # short internal tensor names in the ONNX files (smaller; see docs/deployment.md)
    verify_images: int = 1000  # test images on which PyTorch fp32 and ONNX Runtime must agree
    atol: float = 1e-3  # max |logit difference| allowed by the verification
    min_agreement: float = 0.999  # min top-1 agreement allowed by the verification
    int8: bool = False  # also write a statically quantized int8 model (QDQ)
    calib_images: int = 512  # seeded training images for int8 calibration
    calib_method: str = "minmax"  # minmax | entropy | percentile | distribution
    per_channel: bool = True  # per-channel int8 weights
    eval_batch_size: int = 250  # ONNX Runtime batch for the test-set accuracy
    latency: LatencyConfig = field(default_factory=LatencyConfig)


@dataclass
class TargetConfig:
    """The deployment target (conf/target/): what its kernels want of the widths."""

    name: str = "generic"
    channel_multiple: Optional[int] = None  # every planned width a multiple of it (None: any)


@dataclass
class OpenSetConfig:
    """How the misc class decides and is judged (rsnet/openset.py)."""

    score: str = "misc"  # misc | msp | energy: the out-of-scope score the deployed decision thresholds
    tpr: float = 0.95  # share of in-scope validation images the calibrated threshold keeps


@dataclass
class RunConfig:
    name: str = "default"  # experiment name; part of the run directory
    seed: int = 0
    stop_after: str = "report"  # one of STAGES
    overwrite: bool = False  # allow reusing a run directory that holds a different config
    progress: bool = True  # progress bars
    # a runs.jsonl of finished runs (scripts/tables.py records): a run recorded there (the same
    # label, config and model.checkpoint contents) is finished and is not run again
    records: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    openset: OpenSetConfig = field(default_factory=OpenSetConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    logger: Any = None  # {_target_: a rsnet.loggers.Logger}, from the group conf/logger/


# Keys that do not change a run's result: they are left out of the run directory's name
# and of the config fingerprint that decides whether a run directory can be resumed.
NON_RESULT_KEYS = ("stop_after", "overwrite", "progress", "records", "dataset.root", "dataset.cache_dir",
                   "train.device", "train.threads", "train.latency_runs", "train.compile", "logger",
                   "model.compile_pays", "train.dist_backend",
                   "train.dist_timeout_min", "train.checkpoint_every_min")


# Keys added after run directories existed, with the value they had implicitly before: left
# out of the fingerprint while they hold it, so those run directories still resume.
ADDED_KEYS = {"scaling.budget.runtime": "onnxruntime", "scaling.budget.threads": 1,
              "dataset.resize_size": None, "dataset.interpolation": None,
              "model.arch.weights": None, "train.distill.teacher": None,
              "scaling.widths.keep_narrow": False}


def _dirname(override_dirname: str) -> str:
    """A run directory's name from its overrides: one folder ("/" in a path value or a group
    name becomes "_"), at most 200 bytes (a longer name is cut and ends in a hash of it all)."""
    name = (override_dirname or "defaults").replace("/", "_")
    if len(name.encode()) > 200:
        name = name.encode()[:180].decode(errors="ignore") + "-" + \
            hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def _dirname_excludes() -> list[str]:
    """Overrides left out of a run directory's name: the non-result keys, the experiment
    (its ``name`` is the directory above) and Hydra's own directories."""
    return [*NON_RESULT_KEYS, "experiment", "hydra.run.dir", "hydra.sweep.dir"]


def register() -> None:
    """Register the schema and the resolvers (idempotent)."""
    ConfigStore.instance().store(name="rsnet_schema", node=RunConfig)
    if not OmegaConf.has_resolver("rsnet_dirname"):
        OmegaConf.register_new_resolver("rsnet_dirname", _dirname)
    if not OmegaConf.has_resolver("rsnet_dirname_excludes"):
        OmegaConf.register_new_resolver("rsnet_dirname_excludes", _dirname_excludes)


register()

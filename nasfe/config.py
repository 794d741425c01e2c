"""Typed configuration: one dataclass per concern, loaded from a search-space YAML.

A search space file (``search_spaces/*.yaml``) has one top-level section per dataclass below
(``model``, ``identity``, ``loss``, ``degrade``, ``data``, ``search``, ``retrain``); every key is
optional and falls back to the dataclass default. Unknown keys and wrong types are errors that
name the file and the field, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from nasfe.errors import ConfigError
from nasfe.registry import CONFIG_CHOICES, OPERATORS

#: The ten operators of the paper (section 3.1), in the order of the OPS table; other registered
#: operators (``nasfe.model.ops.register_operator``) may be searched but are not the paper's.
PAPER_OPERATORS = [
    "dil_conv_3x3",
    "dil_conv_5x5",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "res2block",
    "self_attn",
    "res_op",
    "fft_op",
    "deveil_op",
    "skip_connect",
    "zero",
]
# The paper announces "ten operators" but lists eleven names (identity and zero included); all
# eleven are here. Identity is "skip_connect", "no connection" is "zero".


#: ``identity.weights`` value naming the MobileFaceNet weights shipped inside the package
PACKAGED_WEIGHTS = "packaged"

#: ModelConfig fields that say how the network runs, not what it is (left out of ``space_hash``).
EXECUTION_FIELDS = ("checkpoint_cells", "channels_last", "compile")


#: ``model.channels_last`` value choosing the layout by device (on for the CPU, off elsewhere)
CHANNELS_LAST_AUTO = "auto"
#: ``search.amp`` / ``retrain.amp`` value choosing bf16 autocast by device (on for a CPU with
#: native bf16 convolutions, off elsewhere until benchmarks/gpu_check.py decides there)
AMP_AUTO = "auto"

#: ``identity.cache_mb`` value choosing the clean-photo cache by device
CACHE_AUTO = "auto"
#: the cache's size on the CPU under ``auto``: every 176x144 photo of the shared CelebA set fits
CLEAN_CACHE_AUTO_MB = 1024

#: ``degrade.kernel_mode`` values (nasfe.degrade.kernels)
KERNEL_MODES = ("centred", "paper-compatible")
#: ``degrade.noise_model`` values (nasfe.degrade.pipeline)
NOISE_MODELS = ("after-r", "scene-variance", "before-r", "display-r")


@dataclass
class ModelConfig:
    """Widths and topology of the NASFE network (section 3, Figure 2)."""

    channels: int = 16  # C: channels of a fusion cell's input/output at full resolution
    encoder_channels: int = 16  # output channels of each task encoder
    encoder_blocks: int = 2  # residual blocks per task encoder
    decoder_blocks: int = 2  # residual blocks in the decoder
    blocks: int = 12  # B: blocks per fusion cell
    cells: int = 3  # L: fusion cells (layers of the network-level trellis)
    levels: int = 3  # resolutions searched: 1, 1/2, 1/4 of the encoder output
    operators: list[str] = field(default_factory=lambda: list(PAPER_OPERATORS))
    partial_channels: int = 1  # PC-DARTS K: 1/K of channels go through the mixed op (1 = off)
    fusion: str = "nas"  # "nas" (searched fusion cells) or "res2" (ablation baseline BN)
    res2_blocks: int = 4  # fusion blocks of the BN baseline
    use_classifier: bool = True  # feed CN's prediction as a prior (Table 6 "+ classification")
    use_identity: bool = True  # feed I_iden (Table 6 "+ identity information")
    identity_channels: int = 16  # I_iden is projected to this many channels
    shared_cell: bool = True  # one searched cell type for every layer (Auto-DeepLab); False: one per layer
    # each task encoder ends with a global-context modulation (image-wide feature means -> per-channel
    # scale and shift): low light needs the image's illumination ratio, which no stack of 3x3
    # convolutions this shallow can see (docs/MODEL.md); off in the paper's space
    global_context: bool = False
    # the searched fusion network adds its input to its output (a global skip at full resolution):
    # a path through the coarser levels then refines the encoder features instead of replacing them
    # with an upsampled copy (docs/MODEL.md); off in the paper's space
    fusion_skip: bool = False
    # each fusion-cell block is the mean (not the sum) of its terms and deveil's gain is bounded,
    # 1 + tanh(f) in (0, 2): every derived network is finite and of sane scale at initialisation,
    # whatever its operators (docs/MODEL.md, "Stable cells"); on in the paper's space
    stable_cells: bool = False
    # recompute each cell's activations in backward; memory per image ≈ one cell instead of all
    # (torch.utils.checkpoint, training with grad only; results unchanged; not part of space_hash)
    checkpoint_cells: bool = False
    # channels_last memory format for weights and inputs (NHWC convolutions; execution setting,
    # not part of space_hash): true, false, or "auto" = on for the CPU, where it measures faster
    # (docs/BENCHMARKS.md, "Profile of a step"), off on other devices until benchmarks/gpu_check.py
    # shows it faster there (nasfe.model.nasfe.resolve_channels_last)
    channels_last: Union[bool, str] = CHANNELS_LAST_AUTO
    # torch.compile each encoder, CN, the decoder and each fusion cell in place (nn.Module.compile:
    # state dicts and parameter groups unchanged; execution setting); default off, as channels_last
    compile: bool = False


@dataclass
class IdentityConfig:
    """Face backbone used for I_iden, the perceptual loss and the identity loss (section 3.2)."""

    backbone: str = "vggface"  # "vggface" | "mobilefacenet"
    # path or URI (s3://...) of the weights, or "packaged" (the MobileFaceNet shipped in
    # nasfe/identity/packaged); None: seeded random init (said in logs; L_per and L_iden off)
    weights: Optional[str] = None
    refs: int = 3  # k clean reference photos per training sample
    drop_refs: float = 0.25  # probability of training a sample without refs (restore without them)
    width: float = 1.0  # backbone channel scaling; 1.0 for real weights, smaller for fast CPU spaces
    # MiB of frozen-backbone outputs of clean photos (targets, references) kept across training
    # steps (nasfe.identity.cache); 0: none; "auto": CLEAN_CACHE_AUTO_MB on the CPU, 0 elsewhere
    # until benchmarks/gpu_check.py measures it there. Execution setting: results stay the same.
    cache_mb: Union[int, str] = CACHE_AUTO


@dataclass
class LossConfig:
    """L_final = L2 + lambda_per * L_per + lambda_iden * L_iden (Eq. 9)."""

    lambda_per: float = 0.04
    lambda_iden: float = 0.003
    # L_iden on the first n samples of each batch (0: all). The MobileFaceNet embedding runs on the
    # 112x112 aligned face whatever the image size, so on tiny images it costs more than the whole
    # network; batches are drawn at random, so a few samples give an unbiased, noisier L_iden.
    iden_samples: int = 0
    perceptual: str = "l1"  # Eq. 10 as written: mean |F^x_hat - F^x|; "l2sq": Johnson et al.'s mean squared
    # Weight of CN's multi-label BCE when CN trains jointly with the network (the paper trains CN
    # on (y, c) and gives no weight; joint training keeps one loop; 0 freezes CN's objective).
    lambda_cls: float = 0.1
    # "sum": the paper's ||x_hat - x||^2 per image (sum over C, H, W; mean over the batch), which
    # the paper's lambdas were set against; "mean": per-pixel MSE (scale the lambdas by 1/(3HW)).
    l2: str = "sum"


@dataclass
class DegradeConfig:
    """The image-formation model y = r * (k conv x) + n (sections 3 and 4)."""

    motion_kernels: int = 25000  # size of the seeded motion-kernel bank
    gaussian_kernels: int = 8  # anisotropic Gaussian kernels in the training bank
    kernel_sizes: list[int] = field(default_factory=lambda: [13, 15, 17, 19, 21, 23, 25, 27])
    p_blur: float = 0.8  # probability that a training sample is blurred
    p_noise: float = 0.8
    p_lowlight: float = 0.8
    r_range: list[float] = field(default_factory=lambda: [0.05, 0.5])
    sigma_s_range: list[float] = field(default_factory=lambda: [0.01, 0.16])
    sigma_c_range: list[float] = field(default_factory=lambda: [0.01, 0.06])
    crf: str = "parametric"  # "parametric" or a path to the DoRF folder (201_CRF_data.mat ...)
    noise_model: str = (
        "after-r"  # low-light reading: after-r | scene-variance | before-r | display-r (docs/DEGRADATION.md)
    )
    kernel_mode: str = "centred"  # centred | paper-compatible (DeblurGAN's off-centre motion PSFs)
    bank_seed: int = 0
    cache_dir: Optional[str] = None  # where kernel banks are cached; None: ~/.cache/nasfe


@dataclass
class DataConfig:
    """Where the faces come from and how they are split (identity-disjoint)."""

    source: str = "synthetic"  # "synthetic" | "folder" | "celeba" | "vggface2"
    root: Optional[str] = None
    height: int = 176
    width: int = 144
    synthetic_identities: int = 24
    synthetic_images_per_identity: int = 6
    val_fraction: float = 0.1  # of identities
    test_fraction: float = 0.1  # of identities
    max_images: Optional[int] = None  # subsample the training set (None: all)
    seed: int = 0
    workers: int = 0  # DataLoader workers


#: ``<phase>.lr_schedule`` values (nasfe.engine.loop.scheduled_lr)
LR_SCHEDULES = {"constant", "cosine"}

#: the training phases of a space, each one section of the space file (``PhaseConfig`` subclasses)
PHASES = ("search", "retrain")


@dataclass(kw_only=True)
class PhaseConfig:
    """What every training phase reads: the settings the ``search`` and ``retrain`` sections share,
    each with its one default (section 4: Adam 5e-4, batch 40). A phase's section adds its own
    settings and its ``epochs`` default; the engine's :class:`~nasfe.engine.loop.Phase` reads these."""

    epochs: int  # each phase's own default (SearchConfig, RetrainConfig)
    steps_per_epoch: Optional[int] = None  # None: one pass over the training split
    batch_size: int = 40
    lr: float = 5e-4  # Adam on weights
    grad_clip: float = 5.0
    # clip each part's gradient (encoders, CN, stem, fusion, decoder) to grad_clip on its own: one
    # global clip scales every part by the largest part's norm and starves the small ones (below
    # Adam's eps; docs/MODEL.md, "Gradient clipping per part"); on in the paper's space
    grad_clip_per_part: bool = False
    # bf16 autocast of the forward pass and the loss's face backbone: true, false or "auto"
    # (nasfe.engine.loop.resolve_amp); off by default in the search
    amp: Union[bool, str] = False
    val_batches: int = 4
    checkpoint_every: int = 100  # steps
    pretrain_steps: int = 0  # steps pre-training each task encoder and CN alone first
    seed: int = 0
    log_every: int = 10  # steps between host reads of the loss terms (and the divergence check)
    # the weights' learning rate over the phase: "constant" (the paper's) or "cosine" (linear
    # warm-up for lr_warmup_steps, then cosine decay to lr_min); the search's alpha and beta keep arch_lr
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    lr_warmup_steps: int = 0


@dataclass(kw_only=True)
class SearchConfig(PhaseConfig):
    """First-order DARTS bilevel search (section 4; Auto-DeepLab's alternation)."""

    epochs: int = 40
    warmup_epochs: int = 10  # weight-only epochs before architecture steps start
    arch_lr: float = 3e-4  # Adam on alpha and beta
    arch_weight_decay: float = 1e-3
    second_order: bool = False
    # share of the training identities held out for the architecture steps (DARTS: half); the
    # weights train on the rest, and the validation split is only used for validation metrics
    arch_fraction: float = 0.5
    # how the final genotype is read off the supernet: "alpha" (DARTS: the largest architecture
    # weights) or "strength" (DARTS-PT: what masking each operator and transition costs the loss on
    # selection_batches held-out batches; nasfe.engine.selection)
    selection: str = "alpha"
    selection_batches: int = 8


@dataclass(kw_only=True)
class RetrainConfig(PhaseConfig):
    """Training of the derived network with L_final."""

    epochs: int = 100
    # "auto": bf16 on a CPU with native bf16 (with NHWC and folded batch norms, 2x the old steps at the
    # same final validation PSNR on the project's CPU: docs/BENCHMARKS.md, "time to quality"); fp32 on GPUs
    # until benchmarks/gpu_check.py measures bf16 training there
    amp: Union[bool, str] = AMP_AUTO


@dataclass
class SpaceConfig:
    """A whole search space: what ``search_spaces/<name>.yaml`` holds."""

    name: str = "unnamed"
    model: ModelConfig = field(default_factory=ModelConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    source: Optional[str] = None  # the file it was loaded from (not part of the hash)

    def phase(self, name: str) -> PhaseConfig:
        """The section of training phase ``name`` (one of :data:`PHASES`)."""
        if name not in PHASES:
            raise ConfigError(f"unknown phase {name!r}; expected one of {list(PHASES)}")
        section: PhaseConfig = getattr(self, name)
        return section

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/YAML-safe), without ``source``."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def space_hash(self) -> str:
        """Hash of what defines the architecture space (model section only), 12 hex digits.

        Genotypes carry it so a genotype is never built against a different space.
        """
        model = dataclasses.asdict(self.model)
        for how in EXECUTION_FIELDS:  # how the network is run, not what it is: same space, same genotypes
            model.pop(how)
        for name, default in _LATER_FIELDS.items():  # added later: at their default, hashes stay as they were
            if model.get(name) == default:
                model.pop(name)
        blob = json.dumps(model, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


#: ModelConfig fields added after genotypes were first written, with the value that means "absent".
_LATER_FIELDS = {"global_context": False, "fusion_skip": False, "stable_cells": False}

#: Fields with a fixed set of values; ``model.fusion``, ``identity.backbone`` and ``data.source``
#: take the names of their registries (``nasfe.registry.CONFIG_CHOICES``).
_VALID_CHOICES = {
    ("loss", "l2"): {"sum", "mean"},
    ("search", "lr_schedule"): LR_SCHEDULES,
    ("search", "selection"): {"alpha", "strength"},
    ("retrain", "lr_schedule"): LR_SCHEDULES,
}


#: a decimal number as people write it: 5e-4, 1E3, -.5, +2.0e-3 (not inf/nan, not 0x10)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    """``Optional[X]`` and ``Union[bool, str]``: None where allowed, a value of a later plain
    alternative as it is, else checked against the first alternative (whose error names it)."""
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    for a in inner[1:]:
        if a in (bool, int, str) and isinstance(value, a) and not (a is int and isinstance(value, bool)):
            return value
    return _coerce(value, inner[0], where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string: take what the user wrote
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
    return cls(**kwargs)


def min_image_side(kernel_sizes: list[int]) -> int:
    """Smallest face height/width a space can train on: 16 px (SSIM's window, the backbone's
    pooling), and more than half the largest blur kernel (reflect padding needs it)."""
    return max(16, max(kernel_sizes, default=0) // 2 + 1)


#: Upper bounds that keep one process's memory sane (a model of 1e12 channels, faces of 100000 px or
#: a kernel bank of 1e9 kernels are typing mistakes, refused in one line instead of failing deep
#: inside torch); far above what any space of the paper uses.
MAX_CHANNELS = 1024
MAX_SIDE = 4096
MAX_BATCH = 4096
MAX_KERNELS = 1_000_000
MAX_STEPS = 100_000_000


def _ranges(cfg: SpaceConfig) -> list[tuple[str, Any, float, float]]:
    """(field, value, low, high) of every bounded number of a space (None values are unset)."""
    m, i, l, dg, d, s = cfg.model, cfg.identity, cfg.loss, cfg.degrade, cfg.data, cfg.search
    out: list[tuple[str, Any, float, float]] = [
        ("model.channels", m.channels, 1, MAX_CHANNELS),
        ("model.encoder_channels", m.encoder_channels, 1, MAX_CHANNELS),
        ("model.identity_channels", m.identity_channels, 1, MAX_CHANNELS),
        ("model.encoder_blocks", m.encoder_blocks, 0, 64),
        ("model.decoder_blocks", m.decoder_blocks, 0, 64),
        ("model.blocks", m.blocks, 1, 64),
        ("model.cells", m.cells, 1, 64),
        ("model.levels", m.levels, 1, 8),
        ("model.res2_blocks", m.res2_blocks, 1, 64),
        ("identity.refs", i.refs, 1, 64),
        ("identity.width", i.width, 1e-3, 8.0),
        ("loss.lambda_per", l.lambda_per, 0.0, math.inf),
        ("loss.lambda_iden", l.lambda_iden, 0.0, math.inf),
        ("loss.lambda_cls", l.lambda_cls, 0.0, math.inf),
        ("loss.iden_samples", l.iden_samples, 0, MAX_STEPS),
        ("degrade.motion_kernels", dg.motion_kernels, 0, MAX_KERNELS),
        ("degrade.gaussian_kernels", dg.gaussian_kernels, 0, MAX_KERNELS),
        ("degrade.bank_seed", dg.bank_seed, 0, 2**32 - 1),
        ("data.height", d.height, 1, MAX_SIDE),
        ("data.width", d.width, 1, MAX_SIDE),
        ("data.synthetic_identities", d.synthetic_identities, 1, 100_000),
        ("data.synthetic_images_per_identity", d.synthetic_images_per_identity, 1, 10_000),
        ("data.max_images", d.max_images, 1, MAX_STEPS),
        ("data.seed", d.seed, 0, 2**32 - 1),
        ("data.workers", d.workers, 0, 256),
    ]
    out += [("degrade.kernel_sizes", k, 3, 255) for k in dg.kernel_sizes]
    for name in PHASES:
        sec = cfg.phase(name)
        out += [
            (f"{name}.epochs", sec.epochs, 1, MAX_STEPS),
            (f"{name}.steps_per_epoch", sec.steps_per_epoch, 1, MAX_STEPS),
            (f"{name}.batch_size", sec.batch_size, 1, MAX_BATCH),
            (f"{name}.lr", sec.lr, 0.0, math.inf),
            (f"{name}.grad_clip", sec.grad_clip, 0.0, math.inf),
            (f"{name}.val_batches", sec.val_batches, 1, 100_000),
            (f"{name}.checkpoint_every", sec.checkpoint_every, 0, MAX_STEPS),
            (f"{name}.pretrain_steps", sec.pretrain_steps, 0, MAX_STEPS),
            (f"{name}.seed", sec.seed, 0, 2**32 - 1),
            (f"{name}.log_every", sec.log_every, 1, MAX_STEPS),
        ]
    out += [
        ("search.warmup_epochs", s.warmup_epochs, 0, MAX_STEPS),
        ("search.arch_lr", s.arch_lr, 0.0, math.inf),
        ("search.arch_weight_decay", s.arch_weight_decay, 0.0, math.inf),
        ("search.selection_batches", s.selection_batches, 1, 100_000),
    ]
    return out


def resolve_cache_mb(cfg: IdentityConfig, device=None) -> int:
    """``identity.cache_mb`` in MiB for ``device`` (None: the CPU): ``auto`` is
    ``CLEAN_CACHE_AUTO_MB`` on the CPU and 0 elsewhere."""
    if cfg.cache_mb != CACHE_AUTO:
        return int(cfg.cache_mb)
    kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
    return CLEAN_CACHE_AUTO_MB if kind == "cpu" else 0


def _check_choices(cfg: SpaceConfig, where: str) -> None:
    choices = [*_VALID_CHOICES.items(), *((field, reg.names()) for field, reg in CONFIG_CHOICES.items())]
    for (section, key), allowed in choices:
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{where}: {section}.{key} = {value!r}; expected one of {sorted(allowed)}")
    for section in PHASES:
        amp = getattr(cfg, section).amp
        if not isinstance(amp, bool) and amp != AMP_AUTO:
            raise ConfigError(f"{where}: {section}.amp = {amp!r}; expected true, false or {AMP_AUTO!r}")
    cache_mb = cfg.identity.cache_mb
    if cache_mb != CACHE_AUTO and (isinstance(cache_mb, bool) or not isinstance(cache_mb, int) or cache_mb < 0):
        raise ConfigError(f"{where}: identity.cache_mb = {cache_mb!r}; expected an integer >= 0 or {CACHE_AUTO!r}")
    m = cfg.model
    if not isinstance(m.channels_last, bool) and m.channels_last != CHANNELS_LAST_AUTO:
        raise ConfigError(
            f"{where}: model.channels_last = {m.channels_last!r}; expected true, false or {CHANNELS_LAST_AUTO!r}"
        )
    bad_ops = [o for o in m.operators if o not in OPERATORS]
    if bad_ops:
        raise ConfigError(f"{where}: model.operators has unknown operator(s) {bad_ops}; known: {sorted(OPERATORS)}")
    if len(set(m.operators)) != len(m.operators):
        raise ConfigError(f"{where}: model.operators lists an operator twice")
    if not [o for o in m.operators if o != "zero"]:
        raise ConfigError(f"{where}: model.operators needs at least one operator other than 'zero'")


def _check_sizes(cfg: SpaceConfig, where: str) -> None:
    """Counts at least 1, every number in its range, and the model's and images' shapes consistent."""
    m = cfg.model
    positive = {
        "model.channels": m.channels,
        "model.encoder_channels": m.encoder_channels,
        "model.blocks": m.blocks,
        "model.cells": m.cells,
        "model.levels": m.levels,
        "model.partial_channels": m.partial_channels,
        "model.res2_blocks": m.res2_blocks,
        "model.identity_channels": m.identity_channels,
        "identity.refs": cfg.identity.refs,
        "search.batch_size": cfg.search.batch_size,
        "retrain.batch_size": cfg.retrain.batch_size,
        "search.selection_batches": cfg.search.selection_batches,
        "data.height": cfg.data.height,
        "data.width": cfg.data.width,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{where}: {name} must be >= 1, got {value}")
    for name, value, lo, hi in _ranges(cfg):
        if value is not None and not lo <= value <= hi:
            bound = f"be >= {lo}" if hi == math.inf else f"lie in [{lo}, {hi}]"
            raise ConfigError(
                f"{where}: {name} = {value!r} is out of range: it must {bound}"
                + (" (larger values exhaust memory)" if value > hi else "")
            )
    if m.partial_channels > m.channels:
        raise ConfigError(
            f"{where}: model.partial_channels ({m.partial_channels}) exceeds model.channels ({m.channels})"
        )
    min_side = min_image_side(cfg.degrade.kernel_sizes)
    for name in ("height", "width"):
        value = getattr(cfg.data, name)
        if value < min_side:
            raise ConfigError(
                f"{where}: data.{name} = {value} is too small: faces need at least {min_side} px a side "
                f"(SSIM's 11-px window, the face backbone's pooling, blur kernels up to "
                f"{max(cfg.degrade.kernel_sizes, default=0)} px)"
            )
    if m.channels % m.partial_channels:
        raise ConfigError(
            f"{where}: model.channels ({m.channels}) must be divisible by model.partial_channels ({m.partial_channels})"
        )
    if m.channels % 2:
        raise ConfigError(f"{where}: model.channels must be even (the FFT operator splits it in halves)")


def _check_degrade(cfg: SpaceConfig, where: str) -> None:
    d = cfg.degrade
    if d.motion_kernels + d.gaussian_kernels < 1:
        raise ConfigError(f"{where}: degrade.motion_kernels + degrade.gaussian_kernels must be >= 1 (the blur bank)")
    if cfg.loss.perceptual not in ("l1", "l2sq"):
        raise ConfigError(f"{where}: loss.perceptual = {cfg.loss.perceptual!r}; expected one of ['l1', 'l2sq']")
    for name in ("p_blur", "p_noise", "p_lowlight"):
        p = getattr(d, name)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"{where}: degrade.{name} must lie in [0, 1], got {p}")
    for name in ("r_range", "sigma_s_range", "sigma_c_range"):
        lo_hi = getattr(d, name)
        if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"{where}: degrade.{name} must be [low, high] with 0 <= low <= high, got {lo_hi}")
    if any(k % 2 == 0 or k < 3 for k in d.kernel_sizes):
        raise ConfigError(f"{where}: degrade.kernel_sizes must be odd and >= 3, got {d.kernel_sizes}")
    if d.noise_model not in NOISE_MODELS:
        raise ConfigError(f"{where}: degrade.noise_model must be one of {list(NOISE_MODELS)}, got {d.noise_model!r}")
    if d.kernel_mode not in KERNEL_MODES:
        raise ConfigError(f"{where}: degrade.kernel_mode must be one of {list(KERNEL_MODES)}, got {d.kernel_mode!r}")


#: Built-in backbones whose weights files hold the full-width network only.
_FULL_WIDTH_WEIGHTS = ("vggface", "mobilefacenet")


def _check_phases_and_identity(cfg: SpaceConfig, where: str) -> None:
    if not 0 <= cfg.data.val_fraction < 1 or not 0 <= cfg.data.test_fraction < 1:
        raise ConfigError(f"{where}: data.val_fraction and data.test_fraction must lie in [0, 1)")
    if cfg.search.warmup_epochs > cfg.search.epochs:
        raise ConfigError(
            f"{where}: search.warmup_epochs ({cfg.search.warmup_epochs}) exceeds search.epochs ({cfg.search.epochs})"
        )
    if not 0.0 < cfg.search.arch_fraction < 1.0:
        raise ConfigError(f"{where}: search.arch_fraction must lie in (0, 1), got {cfg.search.arch_fraction}")
    if cfg.search.log_every < 1 or cfg.retrain.log_every < 1:
        raise ConfigError(f"{where}: search.log_every and retrain.log_every must be >= 1")
    if cfg.identity.weights == PACKAGED_WEIGHTS and cfg.identity.backbone != "mobilefacenet":
        raise ConfigError(
            f"{where}: identity.weights: {PACKAGED_WEIGHTS} names the packaged MobileFaceNet; "
            f"identity.backbone is {cfg.identity.backbone!r} (set it to mobilefacenet, or give "
            "the path of that backbone's weights)"
        )
    if cfg.identity.weights is not None and cfg.identity.backbone in _FULL_WIDTH_WEIGHTS and cfg.identity.width != 1.0:
        raise ConfigError(
            f"{where}: identity.width = {cfg.identity.width}: the {cfg.identity.backbone} weights "
            f"({cfg.identity.weights}) are full width; use identity.width 1.0, or identity.weights: null "
            "for a narrower random backbone"
        )
    if not 0.0 <= cfg.identity.drop_refs <= 1.0:
        raise ConfigError(f"{where}: identity.drop_refs must lie in [0, 1]")
    for name in PHASES:
        sec = cfg.phase(name)
        if not 0.0 <= sec.lr_min <= sec.lr:
            raise ConfigError(f"{where}: {name}.lr_min must lie in [0, {name}.lr = {sec.lr}], got {sec.lr_min}")
        if sec.lr_warmup_steps < 0:
            raise ConfigError(f"{where}: {name}.lr_warmup_steps must be >= 0, got {sec.lr_warmup_steps}")
    data = cfg.data
    if data.source == "synthetic":
        n = data.synthetic_identities
        held = sum(max(1, round(f * n)) if f > 0 else 0 for f in (data.val_fraction, data.test_fraction))
        if n - held < 2:
            raise ConfigError(
                f"{where}: data.synthetic_identities = {n} leaves {max(0, n - held)} training "
                f"identities after the validation and test identities (data.val_fraction "
                f"{data.val_fraction}, data.test_fraction {data.test_fraction}); the search needs 2: use "
                f"at least {held + 2}"
            )


def validate(cfg: SpaceConfig, where: str = "config") -> SpaceConfig:
    """Check ranges and choices; raise :class:`ConfigError` naming the field."""
    _check_choices(cfg, where)
    _check_sizes(cfg, where)
    _check_degrade(cfg, where)
    _check_phases_and_identity(cfg, where)
    return cfg


def space_from_dict(data: Any, where: str = "config") -> SpaceConfig:
    """Build and validate a :class:`SpaceConfig` from plain data (a parsed YAML mapping)."""
    cfg = _build(SpaceConfig, data, where)
    return validate(cfg, where)


def _spaces_dir() -> Path:
    """The built-in spaces: ``nasfe/search_spaces`` in an installed package (setup.py maps the
    checkout's top-level ``search_spaces/`` there), else that top-level folder of the checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "search_spaces"
    return installed if installed.is_dir() else here.parent / "search_spaces"


#: Folder holding the built-in search spaces (``paper``, ``tiny``, ``bn`` ...).
SPACES_DIR = _spaces_dir()


def builtin_spaces_path(p: Path) -> Optional[Path]:
    """``search_spaces/<file>`` written relative to a checkout, from a directory without one (where
    ``ray submit`` runs a job): the packaged copy of that built-in file, else None."""
    if not p.is_absolute() and len(p.parts) == 2 and p.parts[0] == "search_spaces":
        candidate = SPACES_DIR / p.name
        if candidate.is_file():
            return candidate
    return None


def resolve_space_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in space (``tiny`` -> search_spaces/tiny.yaml)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        builtin = builtin_spaces_path(p)
        if builtin is not None:
            return builtin
        raise ConfigError(f"{p}: search space file not found (in {Path.cwd()})")
    candidate = SPACES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in SPACES_DIR.glob("*.yaml")) if SPACES_DIR.is_dir() else []
    raise ConfigError(f"unknown search space {str(name_or_path)!r}: not a .yaml file and not one of {known}")


#: Deepest nesting of mappings and lists a YAML file of nasfe may have (a space is 2 deep, a sweep
#: 4): deeper is refused before parsing, as PyYAML's parser recurses once per level.
MAX_YAML_DEPTH = 32


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also refuses a key given twice in one mapping (PyYAML keeps the
    last one, so a repeated section would silently replace the first)."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges; its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping names it
            continue
        line = key_node.start_mark.line + 1
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (lines {first} and {line}); "
                f"the second would replace the first",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def load_yaml_text(text: str) -> Any:
    """Parse YAML text like ``yaml.safe_load``, refusing duplicate keys and nesting deeper than
    :data:`MAX_YAML_DEPTH` (``yaml.YAMLError`` saying which)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events come one at a time: no recursion
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise yaml.YAMLError(
                    f"nested more than {MAX_YAML_DEPTH} levels deep (line {event.start_mark.line + 1})"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse a YAML file as ``yaml.safe_load`` does; :class:`ConfigError` naming the file when it is
    not UTF-8 text, not valid YAML, empty (nothing but blanks and comments), repeats a key in one
    mapping or nests deeper than :data:`MAX_YAML_DEPTH` (:func:`load_yaml_text`)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            f"save the {what} as UTF-8"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        data = load_yaml_text(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: the {what} is empty")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` (a ``--set`` flag) -> (dotted key, VALUE parsed as YAML); ConfigError naming
    the text when there is no ``=``, no key or a VALUE that is not valid YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. search.lr=1e-3), got {text!r}")
    try:
        return key.strip(), load_yaml_text(value)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {key.strip()}: the value {value!r} is not valid YAML ({exc.problem or exc})"
        ) from None


#: top-level key of a space file naming the space it inherits (a built-in name or a YAML path)
INHERIT_KEY = "inherit"


def _merge(base: dict, child: dict) -> dict:
    """``child`` laid over ``base``: sections merge key by key, any other value replaces."""
    out = dict(base)
    for k, v in child.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def read_space_data(path: Path, _chain: tuple = ()) -> dict:
    """The mapping of a space file with its ``inherit:`` chain resolved: the inherited space's data
    (a built-in name, or a YAML path relative to this file's folder) with this file's sections laid
    over it key by key; the name is this file's. ConfigError naming the file for a bad or circular
    ``inherit``."""
    data = read_yaml(path, "search space file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    parent = data.pop(INHERIT_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: {INHERIT_KEY} must name a space (a built-in name or a YAML file), got {parent!r}")
    local = path.parent / parent
    base_path = local if parent.endswith((".yaml", ".yml")) and local.is_file() else resolve_space_path(parent)
    key = str(base_path.resolve())
    if key in _chain or key == str(path.resolve()):
        raise ConfigError(f"{path}: {INHERIT_KEY}: {parent} inherits back from this file (a cycle)")
    base = read_space_data(base_path, _chain + (str(path.resolve()),))
    base.pop("name", None)
    return _merge(base, data)


def load_space(name_or_path: str | Path, overrides: Optional[dict[str, Any]] = None) -> SpaceConfig:
    """Load a search space from YAML (``yaml.safe_load``), apply dotted overrides, validate.

    ``overrides`` maps dotted keys to values, e.g. ``{"loss.lambda_per": 0.1, "model.blocks": 4}``.
    """
    path = resolve_space_path(name_or_path)
    data = read_space_data(path)
    data.setdefault("name", path.stem)  # a space without a name is named after its file, never "unnamed"
    data.pop("sweep", None)  # sweep spaces may share a file; they are read by nasfe.distributed
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: override {dotted!r}: {part!r} is not a section")
        node[parts[-1]] = value
    cfg = space_from_dict(data, where=str(path))
    cfg.source = str(path)
    return cfg

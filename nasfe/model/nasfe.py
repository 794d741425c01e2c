"""The NASFE network (Figure 2): CN prior, three task encoders, identity information, fusion, decoder.

Data flow for a degraded y (N, 3, H, W), any H and W:

1. CN(y) -> class logits (N, 3); their sigmoid, detached, is the prior p (the restoration loss
   does not train CN; CN is trained on its own BCE, see ``classifier.classification_loss``).
2. y is padded (replicate) to a multiple of ``pad_multiple`` and each encoder maps [y, p maps]
   to (N, E, H/2, W/2).
3. I_iden = identity(y, refs) (the injected, frozen identity module, run without gradients),
   projected by a 3x3 conv to ``identity_channels`` and resized to H/2 x W/2. Without refs (or
   for samples whose ``has_refs`` is False) a learned "no identity" embedding replaces it; a
   presence-flag channel (1 with refs, 0 without) tells the network which it got.
4. stem: 3x3 conv of [E_B, E_N, E_L, p maps, I_iden, flag] -> C channels; fusion network;
   decoder -> residual; restored = y + residual, cropped back to H x W and NOT clamped (the
   losses see the raw output; clamp for display/metrics).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.config import ModelConfig
from nasfe.model.classifier import DegradationClassifier
from nasfe.model.decoder import Decoder
from nasfe.model.encoders import TASKS, PretrainHead, TaskEncoder, prior_maps


class NASFEOutput(NamedTuple):
    """``restored`` (N, 3, H, W) unclamped; ``class_logits`` (N, 3) for (blur, noise, low light)."""

    restored: torch.Tensor
    class_logits: torch.Tensor


def _task_index(task: str) -> int:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return TASKS.index(task)


class ArchSource(Protocol):
    """What NASFE asks of its fusion module beyond ``nn.Module``."""

    def arch_parameters(self) -> list[nn.Parameter]: ...


class NASFE(nn.Module):
    """The whole restoration network around an interchangeable fusion module (search, derived or Res2)."""

    identity: Optional[nn.Module]

    def __init__(
        self, cfg: ModelConfig, fusion: nn.Module, identity: Optional[nn.Module] = None, pad_multiple: int = 2
    ):
        super().__init__()
        self.cfg = cfg
        self.pad_multiple = pad_multiple
        e, c = cfg.encoder_channels, cfg.channels
        self.classifier = DegradationClassifier()
        prior_ch = self.classifier.classes if cfg.use_classifier else 0
        self.encoders = nn.ModuleDict(
            {t: TaskEncoder(e, cfg.encoder_blocks, prior_ch, cfg.global_context) for t in TASKS}
        )
        self.pretrain_heads = nn.ModuleDict({t: PretrainHead(e) for t in TASKS})
        iden_ch = 0
        self.identity = None
        if cfg.use_identity:
            if identity is None:
                raise ValueError("model.use_identity is true but no identity module was given")
            out_ch = getattr(identity, "out_channels", None)
            if not isinstance(out_ch, int) or out_ch < 1:
                raise ValueError(f"identity module {type(identity).__name__} needs an integer attribute out_channels")
            self.identity = identity
            self.identity_proj = nn.Conv2d(out_ch, cfg.identity_channels, 3, padding=1)
            self.no_identity = nn.Parameter(torch.zeros(1, cfg.identity_channels, 1, 1))
            iden_ch = cfg.identity_channels + 1  # + presence flag
        self.stem = nn.Conv2d(3 * e + prior_ch + iden_ch, c, 3, padding=1)
        self.fusion = fusion
        self.decoder = Decoder(c, e, cfg.decoder_blocks)
        #: the layout in use (``cfg.channels_last`` resolved for the device by apply_execution_options)
        self.channels_last = cfg.channels_last is True

    # ---- architecture / weight parameter groups -------------------------------------------------
    @property
    def alphas(self) -> Optional[nn.Parameter]:
        """Cell-level architecture logits (cell types, edges, n_ops); None for a derived/BN network."""
        return getattr(self.fusion, "alphas", None)

    @property
    def betas(self) -> Optional[nn.Parameter]:
        """Network-level transition logits (cells, levels, 3); None for a derived/BN network."""
        return getattr(self.fusion, "betas", None)

    def arch_parameters(self) -> list[nn.Parameter]:
        """[alphas, betas] (+ PC-DARTS edge weights when partial_channels > 1); [] when derived."""
        return list(cast(ArchSource, self.fusion).arch_parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every trainable weight except architecture parameters, the identity module (frozen
        backbone) and the encoder pre-training heads (see ``pretrain_parameters``)."""
        skip = {id(p) for p in self.arch_parameters()}
        skip |= {id(p) for p in self.pretrain_heads.parameters()}
        if self.identity is not None:
            skip |= {id(p) for p in self.identity.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def pretrain_parameters(self, task: str) -> list[nn.Parameter]:
        """Weights trained when pre-training the encoder of ``task`` alone: encoder + its head."""
        _task_index(task)
        return list(self.encoders[task].parameters()) + list(self.pretrain_heads[task].parameters())

    def weight_parts(self) -> dict[str, list[nn.Parameter]]:
        """``weight_parameters`` by part: encoders, classifier (CN), stem (with the identity
        projection and the no-identity embedding), fusion, decoder. Per-part gradient clipping
        (``grad_clip_per_part``) clips each separately."""
        own = {id(p) for p in self.weight_parameters()}
        pick = lambda mod: [p for p in mod.parameters() if id(p) in own] if mod is not None else []  # noqa: E731
        stem = pick(self.stem)
        if self.identity is not None:
            stem += pick(self.identity_proj) + [self.no_identity]
        parts = {
            "encoders": pick(self.encoders),
            "classifier": pick(self.classifier),
            "stem": stem,
            "fusion": pick(self.fusion),
            "decoder": pick(self.decoder),
        }
        seen = {id(p) for ps in parts.values() for p in ps}
        rest = [p for p in self.weight_parameters() if id(p) not in seen]
        if rest:
            parts["other"] = rest
        return {k: v for k, v in parts.items() if v}

    def parameter_counts(self) -> dict[str, int]:
        """Learnable parameters by part; ``restoration`` is what Table 6 counts (encoders, stem,
        identity projection, fusion, decoder: no CN, no pre-training heads, no backbone, no alpha/beta)."""

        def n(mod) -> int:
            return sum(p.numel() for p in mod.parameters()) if mod is not None else 0

        arch = {id(p) for p in self.arch_parameters()}
        fusion = sum(p.numel() for p in self.fusion.parameters() if id(p) not in arch)
        iden = (n(self.identity_proj) + self.no_identity.numel()) if self.identity is not None else 0
        counts = {
            "encoders": n(self.encoders),
            "stem": n(self.stem),
            "identity_proj": iden,
            "fusion": fusion,
            "decoder": n(self.decoder),
            "classifier": n(self.classifier),
            "pretrain_heads": n(self.pretrain_heads),
            "arch": sum(p.numel() for p in self.arch_parameters()),
        }
        counts["restoration"] = sum(counts[k] for k in ("encoders", "stem", "identity_proj", "fusion", "decoder"))
        return counts

    # ---- pieces ----------------------------------------------------------------------------------
    def classify(self, y: torch.Tensor) -> torch.Tensor:
        """CN's logits (N, 3) for (blur, noise, low light)."""
        return self.classifier(y)

    def _pad(self, y: torch.Tensor) -> torch.Tensor:
        h, w = y.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        return F.pad(y, (0, pw, 0, ph), mode="replicate") if ph or pw else y

    def _prior(
        self, y: torch.Tensor, c: Optional[torch.Tensor], logits: Optional[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        if not self.cfg.use_classifier:
            return None
        if c is not None:
            if c.shape != (y.shape[0], 3):
                raise ValueError(f"c must have shape ({y.shape[0]}, 3), got {tuple(c.shape)}")
            return c.to(y.dtype)
        return torch.sigmoid(logits if logits is not None else self.classifier(y)).detach()

    def encoder_outputs(self, y: torch.Tensor, c: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Each task encoder's features (N, E, ceil(H/m)*m/2, ...) on the padded y. ``c``: prior
        override (N, 3) (e.g. the true labels); default CN's detached prediction."""
        prior = self._prior(y, c, None)
        yp = self._pad(y)
        return {t: enc(yp, prior) for t, enc in self.encoders.items()}

    def _identity_maps(self, y, refs, has_refs, size) -> torch.Tensor:
        n = y.shape[0]
        if refs is None:
            has = torch.zeros(n, device=y.device, dtype=y.dtype)
            feat = self.no_identity.to(y.dtype).expand(n, -1, size[0], size[1])
        else:
            assert self.identity is not None, "identity maps are built only when model.use_identity is true"
            with torch.no_grad():  # the backbone is frozen; nothing upstream needs its gradient
                if has_refs is not None and has_refs.dim() == 2:  # (N, k) per-reference mask
                    ident = self.identity(y, refs, has_refs)
                    has_refs = has_refs.bool().any(dim=1)
                else:
                    ident = self.identity(y, refs)
            feat = F.interpolate(self.identity_proj(ident.to(y.dtype)), size=size, mode="bilinear", align_corners=False)
            has = (
                torch.ones(n, device=y.device, dtype=y.dtype)
                if has_refs is None
                else has_refs.to(device=y.device, dtype=y.dtype).reshape(n)
            )
            h4 = has[:, None, None, None]
            feat = h4 * feat + (1 - h4) * self.no_identity.to(y.dtype)
        flag = has[:, None, None, None].expand(n, 1, size[0], size[1])
        return torch.cat([feat, flag], dim=1)

    def forward(
        self,
        y: torch.Tensor,
        refs: Optional[torch.Tensor] = None,
        c: Optional[torch.Tensor] = None,
        has_refs: Optional[torch.Tensor] = None,
    ) -> NASFEOutput:
        """Restore ``y`` (N, 3, H, W). ``refs`` (N, k, 3, H', W') clean photos of the same identity or
        None; ``c`` optional prior override (N, 3); ``has_refs`` optional mask, (N,) of samples whose
        refs are real (the others are treated as refs=None) or (N, k) of valid references (passed to
        the identity module as its ``mask``; samples with none are treated as refs=None)."""
        if y.dim() != 4 or y.shape[1] != 3:
            raise ValueError(f"y must be (N, 3, H, W), got {tuple(y.shape)}")
        if self.channels_last:  # the format of the input carries through every convolution
            y = y.contiguous(memory_format=torch.channels_last)
        h, w = y.shape[-2:]
        logits = self.classifier(y)
        prior = self._prior(y, c, logits)
        yp = self._pad(y)
        feats = [enc(yp, prior) for enc in self.encoders.values()]
        size = feats[0].shape[-2:]
        parts = list(feats)
        if prior is not None:
            parts.append(prior_maps(prior, size))
        if self.identity is not None:
            parts.append(self._identity_maps(y, refs, has_refs, size))
        x = self.fusion(self.stem(torch.cat(parts, dim=1)))
        restored = y + self.decoder(x)[..., :h, :w]
        return NASFEOutput(restored, logits)


def compile_targets(model: NASFE) -> list[nn.Module]:
    """The parts ``model.compile`` compiles: each encoder, CN, the decoder and each fusion cell
    (the whole fusion when it has no cells). Cells, not the whole network: cell checkpointing and
    the identity module's no_grad stay outside the compiled graphs, and a graph stays small."""
    cells = getattr(model.fusion, "cells", None)
    fusion = (
        list(cells.values() if isinstance(cells, nn.ModuleDict) else cells) if cells is not None else [model.fusion]
    )
    return [*model.encoders.values(), model.classifier, model.decoder, *fusion]


#: Keyword arguments of ``nn.Module.compile`` for ``model.compile`` (tests use the eager backend).
#: Static shapes: the cells of the three levels would otherwise turn dynamic on the second size,
#: and inductor (torch 2.13, CPU) fails on the symbolic strides of the derived fusion.
COMPILE_KWARGS: dict = {"dynamic": False}


def resolve_channels_last(cfg: ModelConfig, device: torch.device | str | None = None) -> bool:
    """``model.channels_last`` for ``device`` (None: the CPU, where models are built): true and
    false as given; "auto" on for the CPU, where NHWC convolutions (oneDNN) measure faster
    (docs/BENCHMARKS.md, "Profile of a step"), and off on any other device until
    ``benchmarks/gpu_check.py`` shows it faster there."""
    if isinstance(cfg.channels_last, bool):
        return cfg.channels_last
    return torch.device(device or "cpu").type == "cpu"


def apply_execution_options(model: NASFE, device: torch.device | str | None = None) -> NASFE:
    """Apply ``model.channels_last`` (resolved for ``device``, :func:`resolve_channels_last`) and
    ``model.compile`` of the model's config, in place.

    Both keep parameter names, state dicts and results (within float tolerance); they only change
    how the network runs. Compiling is lazy: the first forward of each part compiles it.
    """
    model.channels_last = resolve_channels_last(model.cfg, device)
    if model.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits memory_format
    if model.cfg.compile:
        for part in compile_targets(model):
            part.compile(**COMPILE_KWARGS)
    return model


def encoder_task_loss(
    model: NASFE, task: str, y: torch.Tensor, x: torch.Tensor, c: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Single-task pre-training loss of one encoder: MSE(y + head(E_task(y, c)), x).

    ``c`` is the prior fed to the encoder; default the one-hot of ``task`` (the sample has only
    that degradation). Optimise ``model.pretrain_parameters(task)``.
    """
    i = _task_index(task)
    if c is None:
        c = torch.zeros(y.shape[0], 3, device=y.device, dtype=y.dtype)
        c[:, i] = 1
    prior = c.to(y.dtype) if model.cfg.use_classifier else None
    h, w = y.shape[-2:]
    feats = model.encoders[task](model._pad(y), prior)
    out = y + model.pretrain_heads[task](feats)[..., :h, :w]
    return F.mse_loss(out, x)

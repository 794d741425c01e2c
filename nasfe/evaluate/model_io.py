"""Load a trained NASFE network for evaluation, restoration and export.

Two ways to name a trained model:

* a ``model.pt`` written by ``run_retrain`` (or a folder holding one, or a ``retrain_step_*.pt``
  checkpoint): it carries the weights, the search space and the genotype;
* ``--genotype genotype.json --weights file.pt --space space.yaml``: the parts given separately
  (``--weights`` may be any file with a ``model`` state dict, or a plain state dict). With
  ``fusion: res2`` (the BN baseline) no genotype is needed.

Every failure is one clear line naming the file (``CheckpointError``, ``GenotypeError`` or
``ConfigError``, which the CLI prints without a traceback).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import torch

from nasfe.config import SpaceConfig, load_space, space_from_dict
from nasfe.engine.checkpoint import CheckpointError, load_checkpoint
from nasfe.genotype import Genotype, GenotypeError
from nasfe.registry import fusion_is_searched
from nasfe.errors import CommandError
from nasfe.config import CHANNELS_LAST_AUTO, PACKAGED_WEIGHTS
from nasfe.data.remote import is_uri
from nasfe.engine.network import build_network
import sys
from nasfe.pretrained import default_model_path

log = logging.getLogger("nasfe.evaluate")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {name!r}: not a device (try cpu, cuda, cuda:1 or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CommandError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    return dev


def _read_payload(path: Path) -> dict[str, Any]:
    """A nasfe checkpoint dict, or ``{'model': state_dict}`` for a plain state-dict file."""
    try:
        return load_checkpoint(path, required=())
    except CheckpointError as exc:
        if "checkpoint version None" not in str(exc):
            raise
    # not a nasfe checkpoint: maybe a plain state dict saved with torch.save(model.state_dict())
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"model": payload}
    raise CheckpointError(f"{path}: neither a nasfe checkpoint nor a state dict of tensors")


#: ``identity.weights`` while a model is built whose checkpoint holds the backbone's weights: a
#: seeded init that the checkpoint replaces, without the "no weights" warning
CHECKPOINT_WEIGHTS = "<checkpoint>"


def _space_without_missing_weights(space: SpaceConfig, where: str) -> SpaceConfig:
    """The checkpoint carries the frozen backbone's weights, so a backbone weights file that is
    not on this machine is not needed: build the backbone without it and load the checkpoint's."""

    w = space.identity.weights
    if w and w != PACKAGED_WEIGHTS and not is_uri(w) and not Path(w).expanduser().is_file():
        if space.identity.backbone == "mobilefacenet":
            # the packaged MobileFaceNet is that network's real weights: the backbone is built from
            # them (and the checkpoint's copy, when it has one, replaces them): never a random init
            log.info(
                "%s: identity.weights %s is not here; the MobileFaceNet backbone starts from the packaged weights",
                where,
                w,
            )
            new = PACKAGED_WEIGHTS
        else:
            log.info("%s: identity.weights %s is not here; the backbone weights come from the checkpoint", where, w)
            new = CHECKPOINT_WEIGHTS
        space = dataclasses.replace(space, identity=dataclasses.replace(space.identity, weights=new))
    return space


def refuse_non_finite(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``CommandError`` when a floating tensor of ``state_dict`` holds NaN or infinity (a
    diverged run): restoring with it would only write black or garbage images."""

    bad = [
        (k, int((~torch.isfinite(v)).sum()))
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        total = sum(n for _, n in bad)
        raise CommandError(
            f"{where}: {total} non-finite weight value(s) in {len(bad)} tensor(s), first {bad[0][0]}; "
            "the training run diverged: retrain from its last good checkpoint"
        )


def build_and_load(
    space: SpaceConfig,
    genotype: Optional[Genotype],
    state_dict: dict[str, torch.Tensor],
    where: str,
    device: str | torch.device = "cpu",
    fill: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Build the network of ``space``/``genotype``, load ``state_dict`` strictly, eval mode, frozen.

    ``fill``: key prefixes the file leaves out on purpose (the frozen face backbone of a packaged
    model): those weights come from the backbone as built here (``identity.weights`` when that file
    is on this machine, else seeded random init, and then ``model.refs_usable`` is False)."""

    searched = fusion_is_searched(space.model.fusion)
    if searched and genotype is None:
        raise GenotypeError(
            f"{where}: the space searches its fusion (model.fusion: {space.model.fusion}) but no genotype was "
            "given; pass --genotype genotype.json (or use the model.pt that retrain wrote)"
        )
    if not searched and genotype is not None:
        log.info("%s: model.fusion is %s (not searched); the genotype is ignored", where, space.model.fusion)
        genotype = None
    refuse_non_finite(state_dict, where)
    built = _space_without_missing_weights(space, where)
    model, _ = build_network(built, genotype, with_loss=False, device=device)
    model.refs_usable = True
    if fill:
        own = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(fill))}
        state_dict = {**own, **state_dict}
        model.refs_usable = built.identity.weights not in (None, CHECKPOINT_WEIGHTS)
        if not model.refs_usable:
            log.info(
                "%s: the face backbone is not in the file and identity.weights %s is not here: "
                "the network restores without reference photos only",
                where,
                space.identity.weights,
            )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape or key mismatch"
        missing = sum(1 for k in model.state_dict() if k not in state_dict)
        extra = sum(1 for k in state_dict if k not in model.state_dict())
        raise CheckpointError(
            f"{where}: weights do not fit the network of this space/genotype "
            f"({missing} missing, {extra} unexpected keys; {first})"
        ) from None
    model.eval().requires_grad_(False)
    return model.to(device)


def load_trained(
    path: Optional[str | Path] = None,
    device: str | torch.device = "cpu",
    *,
    genotype: Optional[str | Path] = None,
    weights: Optional[str | Path] = None,
    space: Optional[str | Path] = None,
) -> tuple[torch.nn.Module, SpaceConfig, Optional[Genotype]]:
    """A trained network in eval mode on ``device``, with its space and genotype (None for BN).

    ``path``: a ``model.pt`` (or a run folder holding one, or a retrain checkpoint). Otherwise
    ``weights`` plus ``space`` (a YAML file or built-in name) and, for a searched fusion,
    ``genotype`` (JSON). ``genotype``/``space`` given together with ``path`` override what the
    checkpoint holds (the weights must still fit).
    """
    if path is None and weights is None:
        raise CheckpointError("no model given: pass a model.pt, or --weights with --space (and --genotype)")
    if path is not None and weights is not None:
        raise CheckpointError(f"{path}: give either a model.pt or --weights, not both")
    src = Path(path if path is not None else weights).expanduser()
    if src.is_dir():
        if (src / "model.pt").is_file():
            src = src / "model.pt"
        else:
            raise CheckpointError(f"{src}: a folder without model.pt (run `nasfe retrain` first, or pass the file)")
    payload = _read_payload(src)
    if payload.get("phase") == "search":
        raise CheckpointError(
            f"{src}: a search checkpoint (supernet weights); retrain its genotype.json and "
            "evaluate the model.pt that retrain writes"
        )
    state = payload.get("model")
    if not isinstance(state, dict):
        raise CheckpointError(f"{src}: holds no 'model' weights")

    if space is not None:
        cfg = load_space(space)
    elif isinstance(payload.get("space"), dict):
        cfg = space_from_dict(payload["space"], where=f"{src} (space)")
        # the layout the network trained in says nothing about the device it restores on
        cfg.model.channels_last = CHANNELS_LAST_AUTO
    else:
        raise CheckpointError(f"{src}: holds no search space; pass --space space.yaml")

    geno: Optional[Genotype] = None
    if not fusion_is_searched(cfg.model.fusion):
        if genotype is not None:
            log.info("%s: model.fusion is %s (not searched); --genotype is ignored", src, cfg.model.fusion)
    elif genotype is not None:
        geno = Genotype.from_json(genotype, space=cfg)
    elif isinstance(payload.get("genotype"), dict):
        geno = Genotype.from_dict(payload["genotype"], space=cfg, where=f"{src} (genotype)")
    model = build_and_load(cfg, geno, state, str(src), device, fill=tuple(payload.get("stripped") or ()))
    return model, cfg, (geno if fusion_is_searched(cfg.model.fusion) else None)


def model_kind(space: SpaceConfig, genotype: Optional[Genotype] = None) -> str:
    """What a trained network is, for every row and message that names it: ``BN`` (the hand-made
    Res2Block fusion, no searched cell), ``random #k`` (a genotype drawn by ``nasfe rank``, k its
    draw index) or ``NASFE`` (a searched genotype)."""
    if not fusion_is_searched(space.model.fusion):
        return "BN"
    index = (genotype.meta or {}).get("sample_index") if genotype is not None else None
    return f"random #{index}" if isinstance(index, int) and not isinstance(index, bool) else "NASFE"


def add_model_arguments(parser) -> None:
    """The shared way commands name a trained model: ``MODEL`` or ``--weights/--space/--genotype``."""
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="model.pt written by retrain (or its run folder); default: the packaged CPU-trained "
        "model (nasfe/pretrained/cpu_default.pt, CelebA: non-commercial research only)",
    )
    parser.add_argument("--weights", default=None, help="weights file (instead of MODEL); needs --space")
    parser.add_argument(
        "--space",
        dest="model_space",
        default=None,
        help="search space YAML or built-in name for --weights (overrides the checkpoint's)",
    )
    parser.add_argument("--genotype", default=None, help="genotype.json (for a searched fusion with --weights)")


def load_from_args(args, device: str | torch.device = "cpu"):
    """``load_trained`` from the arguments of :func:`add_model_arguments`; with neither MODEL nor
    ``--weights``, the packaged default model (:mod:`nasfe.pretrained`)."""

    model = args.model
    if model is None and args.weights is None:
        if args.genotype is not None or args.model_space is not None:
            raise CommandError("--genotype/--space go with MODEL or --weights, not with the packaged default model")

        model = default_model_path()
        loaded = load_trained(model, device)
        print(
            f"using the packaged model {model}, a {model_kind(loaded[1], loaded[2])} network (trained on "
            f"CelebA: non-commercial research use only)",
            file=sys.stderr,
        )
        return loaded
    return load_trained(model, device, genotype=args.genotype, weights=args.weights, space=args.model_space)

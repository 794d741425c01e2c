"""The model shipped inside the package: the default of ``nasfe restore`` and ``nasfe evaluate``.

``cpu_default.pt`` is a network trained on a 2-core CPU on CelebA faces (search_spaces/cpu.yaml;
the command and its numbers are in docs/RESULTS.md). It is a nasfe checkpoint (weights stored as
float16 to stay under 1 MiB, loaded back into float32) with its search space and genotype, read
with ``torch.load(weights_only=True)`` like every other checkpoint. Its training data is CelebA:
non-commercial research use only (``NOTICE`` beside it).

``python -m nasfe.pretrained RUN/model.pt`` packs a retrained ``model.pt`` into that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from nasfe.engine.checkpoint import CheckpointError
from nasfe.engine.checkpoint import load_checkpoint, save_checkpoint

#: the packaged default model and its notice
DEFAULT_MODEL = Path(__file__).resolve().with_name("cpu_default.pt")
NOTICE = Path(__file__).resolve().with_name("NOTICE")
#: the packaged file must stay this small (it ships in every wheel)
MAX_BYTES = 1 << 20
#: state-dict prefix of the frozen identity backbone, left out of a packaged file
BACKBONE_PREFIX = "identity.backbone."


def default_model_path() -> Path:
    """The packaged model file (an error naming it when the installation lacks it)."""

    if not DEFAULT_MODEL.is_file():
        raise CheckpointError(
            f"{DEFAULT_MODEL}: the packaged default model is missing from this installation; pass a model.pt"
        )
    return DEFAULT_MODEL


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).clone()
        for k, v in state.items()
    }


def pack_model(src: str | Path, dest: str | Path = DEFAULT_MODEL, note: str = "") -> dict[str, Any]:
    """Write the model of ``src`` (a ``model.pt`` written by retrain) to ``dest`` with float16 weights,
    its space and genotype, without the frozen identity backbone (a pretrained face network that the
    loader rebuilds from ``identity.weights``); refuse (ValueError) when the result exceeds
    ``MAX_BYTES``. Returns ``{'path', 'bytes', 'parameters'}``."""

    payload = load_checkpoint(src, required=("model", "space"))
    space = payload["space"]
    stripped: list[str] = []
    state = payload["model"]
    if space.get("model", {}).get("use_identity"):
        # the frozen, pretrained face backbone is not trained here and would not fit: leave it out;
        # the loader takes it from identity.weights when that file is there (needed for --refs only)
        stripped = [BACKBONE_PREFIX]
        state = {k: v for k, v in state.items() if not k.startswith(BACKBONE_PREFIX)}
    state = _half(state)
    packed = {
        "phase": "packaged",
        "model": state,
        "space": space,
        "genotype": payload.get("genotype"),
        "stripped": stripped,
        "note": note,
    }
    dest = Path(dest)
    save_checkpoint(dest, packed)
    dest.chmod(0o644)  # a temp file's 0600 would make an installed copy unreadable to other users
    size = dest.stat().st_size
    if size > MAX_BYTES:
        dest.unlink()
        raise ValueError(f"{src}: packed to {size} bytes, over the {MAX_BYTES}-byte limit of the packaged model")
    return {"path": str(dest), "bytes": size, "parameters": sum(v.numel() for v in state.values())}

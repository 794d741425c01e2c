"""The network a phase trains: the model and its loss, sharing one frozen face backbone."""

from __future__ import annotations

from nasfe.config import SpaceConfig, resolve_cache_mb
from nasfe.identity.adain import IdentityInfo
from nasfe.identity.backbones import build_backbone
from nasfe.identity.losses import NASFELoss
from nasfe.model.registry import create_model


def build_network(space: SpaceConfig, genotype=None, with_loss: bool = True, device=None):
    """The model and its loss sharing one frozen face backbone (loss None without ``with_loss``),
    on the CPU, with the execution options chosen for ``device`` (None: the CPU); with the loss,
    the backbone keeps clean photos' outputs across steps (``identity.cache_mb``)."""
    backbone = build_backbone(space.identity)
    identity = IdentityInfo(backbone) if space.model.use_identity else None
    model = create_model(space, genotype=genotype, identity=identity, device=device)
    loss = NASFELoss(backbone, space.loss) if with_loss else None
    if with_loss:  # training: clean targets and references come back every epoch
        backbone.enable_cache(resolve_cache_mb(space.identity, device) << 20)
    return model, loss

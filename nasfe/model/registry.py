"""Model registry: named builders and ``create_model``, the one entry point the engine uses.

``create_model`` builds the fusion model that ``model.fusion`` names in the fusion registry
(``nasfe.registry.FUSIONS``): ``nas`` is ``nasfe_search`` without a genotype and ``nasfe_derived``
with one, ``res2`` is ``nasfe_bn``. :func:`register_fusion` adds a fusion model.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from nasfe.config import SpaceConfig
from nasfe.genotype import Genotype
from nasfe.model.fusion import DerivedFusion, Res2Fusion, SearchFusion
from nasfe.model.nasfe import NASFE, apply_execution_options
from nasfe.registry import FUSIONS
from nasfe.identity.adain import IdentityInfo
from nasfe.identity.backbones import build_backbone

_MODELS: dict[str, Callable[..., NASFE]] = {}


def register_model(name: str):
    """Decorator: register ``fn(space, genotype, identity) -> NASFE`` under ``name``."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names of the registered model builders, sorted."""
    return sorted(_MODELS)


def default_identity(space: SpaceConfig) -> nn.Module:
    """The identity module I_iden of ``space.identity``, from the identity room."""
    return IdentityInfo(build_backbone(space.identity))


def identity_for(space: SpaceConfig, identity: Optional[nn.Module]) -> Optional[nn.Module]:
    """The identity module a model of ``space`` gets: None without ``model.use_identity``, else
    ``identity`` or, when that is None, :func:`default_identity`."""
    if not space.model.use_identity:
        return None
    return identity if identity is not None else default_identity(space)


def _nas_pad(space: SpaceConfig) -> int:
    return 2 * (1 << (space.model.levels - 1))  # encoder /2, then levels-1 halvings in the trellis


@register_model("nasfe_search")
def nasfe_search(
    space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None
) -> NASFE:
    """The supernet: searchable fusion cells (alpha) on the network-level trellis (beta)."""
    if genotype is not None:
        raise ValueError("nasfe_search builds the supernet; it takes no genotype")
    return NASFE(space.model, SearchFusion(space.model), identity_for(space, identity), _nas_pad(space))


@register_model("nasfe_derived")
def nasfe_derived(
    space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None
) -> NASFE:
    """The discrete network of ``genotype`` (checked against ``space``)."""
    if genotype is None:
        raise ValueError("nasfe_derived needs a genotype")
    genotype.check_space(space)
    return NASFE(space.model, DerivedFusion(space.model, genotype), identity_for(space, identity), _nas_pad(space))


@register_model("nasfe_bn")
def nasfe_bn(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """The ablation baseline BN (Table 6): fusion = ``model.res2_blocks`` Res2Blocks."""
    if genotype is not None:
        raise ValueError("nasfe_bn (model.fusion: res2) has no searched architecture; do not pass a genotype")
    return NASFE(space.model, Res2Fusion(space.model), identity_for(space, identity), 2)


def register_fusion(name: str, builder=None, *, searched: bool = False):
    """Add a ``model.fusion`` value: ``builder(space, genotype, identity) -> NASFE``.

    The builder raises ValueError for a genotype it cannot use and typically returns
    ``NASFE(space.model, MyFusion(space.model), identity_for(space, identity), pad_multiple)``,
    where the fusion module maps the stem's (N, C, H/2, W/2) map to the same shape. ``searched``:
    it is a supernet without a genotype and a derived network with one (a trained model then
    needs its genotype); otherwise it never takes one. Usable as a decorator.
    """
    return FUSIONS.register(name, builder, searched=searched)


@register_fusion("nas", searched=True)
def nas_fusion(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """Searched fusion cells: the supernet without a genotype, the derived network with one."""
    return (nasfe_search if genotype is None else nasfe_derived)(space, genotype, identity)


register_fusion("res2", nasfe_bn)


def create_model(
    space: SpaceConfig,
    genotype: Optional[Genotype] = None,
    identity: Optional[nn.Module] = None,
    device: torch.device | str | None = None,
) -> NASFE:
    """Build the network ``space`` describes: the fusion model ``model.fusion`` names (BN baseline,
    supernet without a genotype or derived network with one, or a registered one), with the
    execution options for ``device`` (None: the CPU; the model itself stays on the CPU)."""
    return apply_execution_options(FUSIONS[space.model.fusion](space, genotype, identity), device)


def build_model(
    name: str,
    space: SpaceConfig,
    genotype: Optional[Genotype] = None,
    identity: Optional[nn.Module] = None,
    device: torch.device | str | None = None,
) -> NASFE:
    """Build a registered model by name (``model.channels_last`` / ``model.compile`` applied for ``device``)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return apply_execution_options(_MODELS[name](space, genotype, identity), device)

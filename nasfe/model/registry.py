"""Model registry: named builders and ``create_model``, the one entry point the engine uses.

``create_model`` picks ``nasfe_bn`` when ``model.fusion == "res2"``, else ``nasfe_search``
without a genotype and ``nasfe_derived`` with one.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from nasfe.config import SpaceConfig
from nasfe.genotype import Genotype
from nasfe.model.fusion import DerivedFusion, Res2Fusion, SearchFusion
from nasfe.model.nasfe import NASFE, apply_execution_options

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
    try:
        from nasfe.identity.adain import IdentityInfo
        from nasfe.identity.backbones import build_backbone
    except ImportError as exc:
        raise RuntimeError(
            f"model.use_identity is true but nasfe.identity is not available ({exc}); pass identity= "
            "to create_model or set model.use_identity: false") from exc
    return IdentityInfo(build_backbone(space.identity))


def _identity_for(space: SpaceConfig, identity: Optional[nn.Module]) -> Optional[nn.Module]:
    if not space.model.use_identity:
        return None
    return identity if identity is not None else default_identity(space)


def _nas_pad(space: SpaceConfig) -> int:
    return 2 * (1 << (space.model.levels - 1))  # encoder /2, then levels-1 halvings in the trellis


@register_model("nasfe_search")
def nasfe_search(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """The supernet: searchable fusion cells (alpha) on the network-level trellis (beta)."""
    if genotype is not None:
        raise ValueError("nasfe_search builds the supernet; it takes no genotype")
    return NASFE(space.model, SearchFusion(space.model), _identity_for(space, identity), _nas_pad(space))


@register_model("nasfe_derived")
def nasfe_derived(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """The discrete network of ``genotype`` (checked against ``space``)."""
    if genotype is None:
        raise ValueError("nasfe_derived needs a genotype")
    genotype.check_space(space)
    return NASFE(space.model, DerivedFusion(space.model, genotype), _identity_for(space, identity), _nas_pad(space))


@register_model("nasfe_bn")
def nasfe_bn(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """The ablation baseline BN (Table 6): fusion = ``model.res2_blocks`` Res2Blocks."""
    if genotype is not None:
        raise ValueError("nasfe_bn (model.fusion: res2) has no searched architecture; do not pass a genotype")
    return NASFE(space.model, Res2Fusion(space.model), _identity_for(space, identity), 2)


def create_model(space: SpaceConfig, genotype: Optional[Genotype] = None, identity: Optional[nn.Module] = None) -> NASFE:
    """Build the network ``space`` describes: BN baseline, supernet (no genotype) or derived network."""
    if space.model.fusion == "res2":
        name = "nasfe_bn"
    else:
        name = "nasfe_search" if genotype is None else "nasfe_derived"
    return build_model(name, space, genotype, identity)


def build_model(name: str, space: SpaceConfig, genotype: Optional[Genotype] = None,
                identity: Optional[nn.Module] = None) -> NASFE:
    """Build a registered model by name (``model.channels_last`` / ``model.compile`` applied)."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return apply_execution_options(_MODELS[name](space, genotype, identity))

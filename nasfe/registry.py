"""The extension points of nasfe: one registry per kind, names and metadata, no torch.

Five kinds can be extended, each by one function or class and one registration call:

- ``OPERATORS``: fusion-cell edge operators, ``name -> constructor (C) -> nn.Module``
  (``nasfe.model.ops.register_operator``; ``OPS`` is this registry);
- ``FACE_SOURCES``: ``data.source`` names, ``name -> factory (DataConfig) -> FaceSource``
  (``nasfe.data.faces.register_face_source``);
- ``BACKBONES``: ``identity.backbone`` names, ``name -> factory (weights, width) -> FaceBackbone``
  (``nasfe.identity.backbones.register_backbone``);
- ``FUSIONS``: ``model.fusion`` names, ``name -> builder (space, genotype, identity) -> NASFE``
  (``nasfe.model.registry.register_fusion``);
- ``DEGRADATIONS``: the degradations of the training pipeline and the class labels of CN, in label
  order (``nasfe.degrade.pipeline.register_degradation``).

This module is the ground floor: it imports nothing of nasfe, so the configuration reads valid
choices from here without importing torch. Each registry names the module (its room) that
registers the built-in entries; that module is imported the first time the registry is read.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional


class Registry(Mapping):
    """An ordered ``name -> object`` table with per-entry metadata.

    Reading it (``[name]``, ``in``, iteration, ``len``) first imports its room, so the built-in
    entries are always there; registration order is kept (it is the order of ``list(registry)``).
    """

    def __init__(self, kind: str, room: str):
        self.kind = kind
        self.room = room
        self._objects: dict[str, Any] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            try:
                importlib.import_module(self.room)
            except BaseException:
                self._loaded = False
                raise

    def register(self, name: str, obj: Any = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name`` (with metadata ``meta``); without ``obj``, a decorator."""
        if obj is None:
            return lambda o: self.register(name, o, **meta)
        self._load()  # built-ins first: registration order is the order of the room, then extensions
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names are non-empty strings, got {name!r}")
        if name in self._objects:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._objects[name] = obj
        self._meta[name] = dict(meta)
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (KeyError when it is not registered)."""
        self._load()
        if name not in self._objects:
            raise KeyError(f"{self.kind} {name!r} is not registered")
        del self._objects[name]
        del self._meta[name]

    @contextmanager
    def registered(self, name: str, obj: Any, **meta: Any) -> Iterator[Any]:
        """Register ``obj`` for the duration of a ``with`` block (tests, experiments)."""
        self._load()
        self.register(name, obj, **meta)
        try:
            yield obj
        finally:
            self.unregister(name)

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name`` (a copy)."""
        self._load()
        self._check(name)
        return dict(self._meta[name])

    def names(self, **where: Any) -> list[str]:
        """Registered names in registration order; ``where`` keeps those whose metadata match."""
        self._load()
        return [n for n in self._objects if all(self._meta[n].get(k) == v for k, v in where.items())]

    def _check(self, name: str) -> None:
        if name not in self._objects:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._objects)}")

    def __getitem__(self, name: str) -> Any:
        self._load()
        self._check(name)
        return self._objects[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._objects))

    def __len__(self) -> int:
        self._load()
        return len(self._objects)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._objects)})"


OPERATORS = Registry("operator", "nasfe.model.ops")
FACE_SOURCES = Registry("face source", "nasfe.data.faces")
BACKBONES = Registry("identity backbone", "nasfe.identity.backbones")
FUSIONS = Registry("fusion model", "nasfe.model.registry")
DEGRADATIONS = Registry("degradation", "nasfe.degrade.pipeline")

#: Configuration fields whose valid values are the names of a registry.
CONFIG_CHOICES: dict[tuple[str, str], Registry] = {
    ("model", "fusion"): FUSIONS,
    ("identity", "backbone"): BACKBONES,
    ("data", "source"): FACE_SOURCES,
}


def choices(section: str, key: str) -> Optional[list[str]]:
    """Valid values of config field ``section.key`` when a registry defines them, else None."""
    reg = CONFIG_CHOICES.get((section, key))
    return None if reg is None else reg.names()


def fusion_is_searched(fusion: str) -> bool:
    """Whether the fusion model ``fusion`` (a ``model.fusion`` value) is searched: a supernet
    without a genotype, a derived network with one (its ``searched`` flag)."""
    return bool(FUSIONS.meta(fusion).get("searched"))


def param_free_ops() -> tuple[str, ...]:
    """Registered operators without learnable parameters (their ``param_free`` flag)."""
    return tuple(OPERATORS.names(param_free=True))


__all__ = [
    "BACKBONES",
    "CONFIG_CHOICES",
    "DEGRADATIONS",
    "FACE_SOURCES",
    "FUSIONS",
    "OPERATORS",
    "Registry",
    "choices",
    "fusion_is_searched",
    "param_free_ops",
]

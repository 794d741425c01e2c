"""Frozen face backbones behind one interface: VGGFace (pool3) and MobileFaceNet.

Every backbone takes RGB float images in [0, 1], NCHW, of any size, normalises them itself, has no
trainable parameters and stays in eval mode even when a parent module calls ``.train()``; it is
still differentiable with respect to its input, so the perceptual and identity losses backpropagate
through it into the restoration network.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasfe.config import ConfigError, IdentityConfig
from nasfe.identity.align import ARCFACE_SIZE, align_faces
from nasfe.identity.cache import CleanImageCache
from nasfe.identity.mobilefacenet import MobileFaceNetNet, load_mobilefacenet_state
from nasfe.identity.vggface import VGGFACE_MEAN, VGGFacePool3, load_vggface_state
from nasfe.registry import BACKBONES
from nasfe.config import PACKAGED_WEIGHTS
from nasfe.identity.packaged import MOBILEFACENET
from nasfe.data.remote import fetch_file, is_uri

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}: expected RGB images (N,3,H,W), got shape {tuple(x.shape)}")


def _compute_dtype(x: torch.Tensor) -> str:
    """The dtype a backbone pass on ``x`` computes in: autocast's when it is on, else x's."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return str(torch.get_autocast_dtype(device))
    return str(x.dtype)


class FaceBackbone(nn.Module):
    """Interface of the frozen face networks used for I_iden, L_per and L_iden.

    ``features(x)`` -> (N, feature_channels, h, w) spatial map (the perceptual / AdaIN features);
    ``embedding(x)`` -> (N, D) identity descriptor compared by cosine in the identity loss.
    """

    feature_channels: int
    #: False when the weights are a seeded random init: then the loss switches L_per and L_iden off
    #: (``NASFELoss``) instead of training towards random features.
    pretrained: bool = True
    #: True when ``embedding(x)`` is ``embedding_from_features(features(x))`` (one pass serves both).
    embedding_uses_features: bool = False

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature map of images x (N,3,H,W) in [0, 1]."""
        raise NotImplementedError

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Identity descriptor (N, D) of images x (N,3,H,W) in [0, 1] (not normalised)."""
        raise NotImplementedError

    def embedding_from_features(self, feats: torch.Tensor) -> Optional[torch.Tensor]:
        """The embedding computed from ``features(x)`` when it is a function of them, else None.

        Lets the loss reuse one backbone pass for both L_per and L_iden (VGGFace).
        """
        return None

    # ---- the reference photos' outputs, once per batch ---------------------------------------------
    # The model (I_iden) and the loss (L_iden) both need the references' backbone outputs. They are
    # memoised for the last ``refs`` tensor seen (the same object, unchanged since), so one training
    # forward + loss runs the backbone over the references once, not once per user; a new batch
    # replaces the memo. References are clean targets: no graph is ever kept for them.
    def _ref_memo(self, refs: torch.Tensor) -> dict:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return {}  # a memoised tensor would be baked into the exported graph as a constant
        memo = self.__dict__.get("_refs_memo")
        if memo is None or memo["refs"] is not refs or memo["version"] != refs._version:
            memo = {"refs": refs, "version": refs._version}
            self.__dict__["_refs_memo"] = memo
        return memo

    # ---- clean photos' outputs across steps ----------------------------------------------------------
    # With a cache enabled and the batch's photo keys bound (``image_keys``), the outputs of clean
    # targets and references come from ``CleanImageCache`` when the photo was seen before.
    def enable_cache(self, max_bytes: int) -> None:
        """Keep clean photos' outputs across steps, at most ``max_bytes`` (0: no cache)."""
        self.__dict__["_clean_cache"] = CleanImageCache(max_bytes) if max_bytes > 0 else None

    @property
    def clean_cache(self) -> Optional[CleanImageCache]:
        """The cache of clean photos' outputs, or None."""
        return self.__dict__.get("_clean_cache")

    @contextmanager
    def image_keys(self, *pairs: tuple[Optional[torch.Tensor], Optional[Sequence]]) -> Iterator[None]:
        """Within the block, the tensors of ``pairs`` (images, keys) are known clean photos: targets
        (N,3,H,W) with N keys, references (N,k,3,H,W) with N lists of k keys."""
        known = {id(t): (t, t._version, keys) for t, keys in pairs if t is not None and keys is not None}
        self.__dict__["_image_keys"] = known
        try:
            yield
        finally:
            self.__dict__.pop("_image_keys", None)

    def _keys_of(self, images: torch.Tensor) -> Optional[list]:
        known = self.__dict__.get("_image_keys")
        if not known or self.clean_cache is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return None
        entry = known.get(id(images))
        if entry is None or entry[0] is not images or entry[1] != images._version:
            return None
        keys = list(entry[2])
        if len(keys) != images.shape[0]:
            return None
        return keys

    def target_features(self, x: torch.Tensor) -> torch.Tensor:
        """``features`` of clean targets x (N,3,H,W) without a graph (cached when keyed)."""
        with torch.no_grad():
            keys = self._keys_of(x)
            if keys is None:
                return self.features(x)
            cache = self.clean_cache
            assert cache is not None
            return cache.lookup(("features", _compute_dtype(x)), keys, lambda pos: self.features(x[pos]))

    def reference_features(self, refs: torch.Tensor) -> torch.Tensor:
        """``features`` of references (N,k,3,H,W) as (N*k, C, h, w), without a graph (memoised per
        batch; cached across steps when keyed)."""
        memo = self._ref_memo(refs)
        if "features" not in memo:
            with torch.no_grad():
                flat = refs.flatten(0, 1)
                keys = self._flat_ref_keys(refs, refs.shape[0])
                if keys is None:
                    memo["features"] = self.features(flat)
                else:
                    memo["features"] = self.clean_cache.lookup(  # type: ignore[union-attr]
                        ("features", _compute_dtype(flat)), keys, lambda pos: self.features(flat[pos])
                    )
        return memo["features"]

    def _flat_ref_keys(self, refs: torch.Tensor, samples: int) -> Optional[list[int]]:
        keys = self._keys_of(refs)
        if keys is None or any(len(row) != refs.shape[1] for row in keys):
            return None
        return [int(k) for row in keys[:samples] for k in row]

    def reference_embeddings(
        self, refs: torch.Tensor, size: Optional[tuple[int, int]] = None, samples: Optional[int] = None
    ) -> torch.Tensor:
        """``embedding`` of references (N,k,3,H,W) as (N,k,D) float32, without a graph (memoised per batch).

        ``size``: resize the references to (H, W) first (the restored image's size) when they differ.
        ``samples``: only the first ``samples`` samples' references (``loss.iden_samples``), (samples,k,D).
        Reuses the memoised feature maps when the embedding is a function of them (VGGFace).
        """
        n, k = refs.shape[:2]
        m = n if samples is None else max(0, min(int(samples), n))
        same_size = size is None or tuple(refs.shape[-2:]) == tuple(size)
        memo = self._ref_memo(refs)
        key = ("embedding", None if same_size else tuple(size), m)
        if key not in memo:
            with torch.no_grad():
                e = None
                if same_size and self.embedding_uses_features:
                    e = self.embedding_from_features(self.reference_features(refs)[: m * k])
                if e is None:
                    flat = refs[:m].flatten(0, 1)

                    def embed(images: torch.Tensor) -> torch.Tensor:
                        if not same_size:
                            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
                        return self.embedding(images)

                    keys = self._flat_ref_keys(refs, m)
                    if keys is None:
                        e = embed(flat)
                    else:
                        kind = ("embedding", None if same_size else tuple(size), _compute_dtype(flat))
                        e = self.clean_cache.lookup(kind, keys, lambda pos: embed(flat[pos]))  # type: ignore[union-attr]
            memo[key] = e.float().view(m, k, -1)
        return memo[key]

    def freeze(self) -> "FaceBackbone":
        """No gradients for the weights; eval mode (BN statistics fixed)."""
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FaceBackbone":
        """Always eval: a parent's ``.train()`` must not switch BN to batch statistics."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`features`."""
        return self.features(x)


class VGGFace(FaceBackbone):
    """VGGFace truncated at pool3 (256*width channels at H/8).

    ``embedding`` is the spatial mean of the pool3 map (N, C). pool3 is a mid-level layer, not
    VGGFace's identity descriptor (fc7, never built here); flattening it, as before, made L_iden
    compare the layout of two different photos rather than who is in them. The mean over
    positions is layout-free; it is a weak identity cue, so prefer ``mobilefacenet`` for L_iden.
    """

    def __init__(self, weights: Optional[str] = None, width: float = 1.0, seed: int = 0, warn: bool = True):
        super().__init__()
        self.net = VGGFacePool3(width)
        if weights is not None:
            if width != 1.0:
                raise ConfigError(f"identity.width = {width}: real VGGFace weights ({weights}) need width 1.0")
            load_vggface_state(self.net, weights)
        else:
            self.net.seeded_init(seed)
            self.pretrained = False
            (log.warning if warn else log.debug)(
                "VGGFace has no weights (identity.weights is empty): seeded random init; "
                "I_iden, the perceptual and the identity losses are not meaningful for faces"
            )
        self.feature_channels = self.net.out_channels
        self.register_buffer("mean255", torch.tensor(VGGFACE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """pool3 map (N, 256*width, floor(H/8), floor(W/8))."""
        _check_images(x, "VGGFace.features")
        return self.net(x * 255.0 - self.mean255.to(x.dtype))

    embedding_uses_features = True

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean of the pool3 map (N, C): what is there, not where (see the class doc)."""
        return self.embedding_from_features(self.features(x))

    def embedding_from_features(self, feats: torch.Tensor) -> Optional[torch.Tensor]:
        return feats.mean(dim=(-2, -1))


class MobileFaceNet(FaceBackbone):
    """MobileFaceNet: ``features`` = the stride-8 map after features.11, ``embedding`` = 128-d.

    ``features`` runs the convolutional trunk on the image at its own size (ImageNet mean/std),
    so the map (128*width channels at ceil(H/8) x ceil(W/8)) is registered with the input like
    VGGFace's pool3; CelebA-style 176x144 crops have the face at about the scale MobileFaceNet
    was trained on (eye distance 39 px vs 35 px). ``embedding`` first aligns the face to the
    112x112 ArcFace template (``align=True``, CelebA layout assumed, see ``align.py``) or just
    resizes it to 112x112 (``align=False``, for faces already aligned to the template).
    """

    def __init__(
        self, weights: Optional[str] = None, width: float = 1.0, align: bool = True, seed: int = 0, warn: bool = True
    ):
        super().__init__()
        if width <= 0:
            raise ConfigError(f"identity.width must be > 0, got {width}")
        self.net = MobileFaceNetNet(width)
        if weights is not None:
            if width != 1.0:
                raise ConfigError(f"identity.width = {width}: MobileFaceNet weights ({weights}) need width 1.0")
            load_mobilefacenet_state(self.net, weights)
        else:
            self.net.seeded_init(seed)
            self.pretrained = False
            (log.warning if warn else log.debug)(
                "MobileFaceNet has no weights (identity.weights is empty): seeded random init; "
                "identity features and losses are not meaningful for faces"
            )
        self.align = align
        self.feature_channels = self.net.feature_channels
        self.embedding_dim = self.net.conv3.out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @property
    def fold_bn(self) -> bool:
        """Whether eval-mode passes fold each batch norm into its convolution (on by default)."""
        return all(getattr(m, "fold", True) for m in self.net.modules() if isinstance(m, nn.BatchNorm2d))

    @fold_bn.setter
    def fold_bn(self, value: bool) -> None:
        for m in self.net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.fold = bool(value)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def to_template(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,112,112) faces in [0, 1] on the ArcFace template (aligned or resized)."""
        _check_images(x, "MobileFaceNet")
        if self.align:
            return align_faces(x, ARCFACE_SIZE)
        if x.shape[-2:] == (ARCFACE_SIZE, ARCFACE_SIZE):
            return x
        return F.interpolate(x, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk map after features.11 of the unaligned image: (N, 128*width, ceil(H/8), ceil(W/8))."""
        _check_images(x, "MobileFaceNet.features")
        return self.net.trunk(self._normalise(x))

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """128-d embedding of the aligned 112x112 face (not normalised)."""
        return self.net(self._normalise(self.to_template(x)))


def resolve_weights(weights: Optional[str]) -> Optional[str]:
    """The local file of ``identity.weights``: ``packaged`` is the MobileFaceNet shipped in
    ``nasfe/identity/packaged``; a URI (``s3://bucket/key``, as ``data.root``) is fetched once per
    node into the data cache; a path is returned as given; None stays None."""
    if weights is None:
        return None

    if weights == PACKAGED_WEIGHTS:
        return str(MOBILEFACENET)

    return str(fetch_file(weights)) if is_uri(weights) else weights


def register_backbone(name: str, factory=None):
    """Add an ``identity.backbone`` value: ``factory(weights, width) -> FaceBackbone`` (``weights``: a
    path or None for a seeded random init; ``width``: channel scaling > 0; ``warn=False`` is added
    when a checkpoint's weights will replace the init). Usable as a decorator."""
    return BACKBONES.register(name, factory)


register_backbone("vggface", VGGFace)
register_backbone("mobilefacenet", MobileFaceNet)


def build_backbone(cfg: IdentityConfig) -> FaceBackbone:
    """The frozen backbone named by ``cfg.backbone`` (a name of ``nasfe.registry.BACKBONES``:
    'vggface', 'mobilefacenet' and any registered with :func:`register_backbone`).

    ``cfg.weights``: path, URI or ``packaged`` (``resolve_weights``), or None (seeded random init,
    with a logged warning);
    ``cfg.width``: channel scaling (1.0 for real weights; smaller for fast CPU spaces).
    """
    width = float(cfg.width)
    if width <= 0:
        raise ConfigError(f"identity.width must be > 0, got {width}")
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"identity.backbone = {cfg.backbone!r}; expected one of {BACKBONES.names()}")
    # "<checkpoint>": a checkpoint's state dict will replace the weights (nasfe.evaluate.model_io),
    # so the init is quiet
    if cfg.weights == "<checkpoint>":
        return BACKBONES[cfg.backbone](None, width=width, warn=False)
    return BACKBONES[cfg.backbone](resolve_weights(cfg.weights), width=width)

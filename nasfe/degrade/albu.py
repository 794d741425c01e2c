"""An albumentations ``ImageOnlyTransform`` that applies the NASFE degradation to one image.

For per-sample CPU pipelines (DataLoader workers): uint8 or float HxWx3 RGB in, the same dtype out.
Parameters are drawn like training parameters (:func:`sample_params`) from the transform's own
random generator, so ``A.Compose([...], seed=s)`` makes it reproducible. The parameters of the
last call are kept in ``last_params`` (a :class:`DegradeParams` of length 1, with ``labels()``).
"""

from __future__ import annotations

from typing import Any, Optional

import albumentations as A
import numpy as np
import torch

from nasfe.degrade.camera import ResponseCurves
from nasfe.degrade.kernels import KernelBank
from nasfe.degrade.pipeline import Degrader, DegradeParams


class NASFEDegrade(A.ImageOnlyTransform):
    """Degrade an image with y = r * (k conv x) + n, parameters drawn per call from ``cfg`` (a DegradeConfig)."""

    def __init__(self, cfg, bank: Optional[KernelBank] = None, curves: Optional[ResponseCurves] = None, p: float = 1.0):
        super().__init__(p=p)
        self.cfg = cfg
        self._degrader = Degrader(cfg, bank=bank, curves=curves)  # lazy bank and curves, shared logic
        self.last_params: Optional[DegradeParams] = None

    @property
    def bank(self) -> KernelBank:
        """The kernel bank (built or loaded from the cache on first use)."""
        return self._degrader.bank

    @property
    def curves(self) -> ResponseCurves:
        """The camera response curves."""
        return self._degrader.curves

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"NASFEDegrade: expected an HxWx3 RGB image, got shape {img.shape}")
        is_uint8 = img.dtype == np.uint8
        x = torch.from_numpy(np.ascontiguousarray(img)).float()
        x = (x / 255.0 if is_uint8 else x).permute(2, 0, 1)[None]
        g = torch.Generator().manual_seed(int(self.random_generator.integers(0, 2**62)))
        y, p = self._degrader(x, g)
        out = y[0].permute(1, 2, 0).numpy()
        self.last_params = p
        if is_uint8:
            return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
        return out.astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("cfg",)

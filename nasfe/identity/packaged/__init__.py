"""Face-backbone weights shipped inside the package: MobileFaceNet (Apache-2.0, ``LICENSE`` and
``NOTICE`` beside it). ``identity.weights: packaged`` names them."""

from __future__ import annotations

from pathlib import Path

#: the packaged MobileFaceNet state dict
MOBILEFACENET = Path(__file__).resolve().with_name("mobilefacenet.pt")

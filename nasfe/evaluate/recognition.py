"""Face recognition for evaluation (Table 5): embedders, Top-k identification, cosine/angle.

Protocol of ``recognition_topk`` (closed-set identification): every probe (a restored face) is
compared by cosine with every gallery image (clean faces, one or more per identity, every probe's
identity present). An identity's score is the max (default) or mean cosine over its gallery
images; the probe counts as a Top-k hit when fewer than k other identities score at least as high
as the true one (ties count against the probe, so a constant embedder never scores well).

The recogniser must not be the training identity backbone (otherwise the identity loss would
train for the metric): ``OnnxRecognizer`` runs an ArcFace-style ONNX model (the shared
``MobileFaceNet.onnx``), ``TorchMobileFaceNetRecognizer`` the torch MobileFaceNet. Both align
176x144 CelebA-layout faces to the 112x112 ArcFace template first (``nasfe.identity.align``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nasfe.identity.align import ARCFACE_SIZE, align_faces
from nasfe.identity.backbones import IMAGENET_MEAN, IMAGENET_STD
from nasfe.identity.backbones import MobileFaceNet

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: expected RGB images (N,3,H,W) in [0, 1], got shape {tuple(images.shape)}")
    return images.float()


def _to_template(images: torch.Tensor, align: bool) -> torch.Tensor:
    """(N,3,112,112) normalised input for an ArcFace-style network."""
    if align:
        faces = align_faces(images, ARCFACE_SIZE)
    elif images.shape[-2:] == (ARCFACE_SIZE, ARCFACE_SIZE):
        faces = images
    else:
        faces = F.interpolate(images, size=(ARCFACE_SIZE, ARCFACE_SIZE), mode="bilinear", align_corners=False)
    return (faces - _MEAN.to(faces)) / _STD.to(faces)


class Recognizer:
    """A face embedder: ``embed(images (N,3,H,W) in [0,1]) -> (N,D)`` unit-norm float32 rows."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of the faces."""
        raise NotImplementedError


class OnnxRecognizer(Recognizer):
    """An ArcFace-style ONNX embedder (112x112 input, ImageNet mean/std) through onnxruntime.

    The shared MobileFaceNet.onnx has its batch fixed to 1, so images go one at a time.
    ``align=False`` assumes the faces are already on the ArcFace template (resized to 112 only).
    """

    def __init__(self, path: str | Path, align: bool = True):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX face-recognition model not found")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                f"{path}: onnxruntime is not installed; `pip install onnxruntime` or use TorchMobileFaceNetRecognizer"
            ) from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # corrupt file, missing external .data
            raise ValueError(f"{path}: onnxruntime cannot load the model ({exc})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch_fixed = not isinstance(inp.shape[0], str) and inp.shape[0] is not None
        self.align = align
        self.path = path

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised (N, D) embeddings (a loop over images when the model's batch is fixed)."""
        images = _check_images(images, f"OnnxRecognizer({self.path.name}).embed")
        with torch.no_grad():
            x = _to_template(images.cpu(), self.align).numpy().astype(np.float32)
        if self.batch_fixed:
            out = [self.session.run(None, {self.input_name: x[i : i + 1]})[0] for i in range(len(x))]
            e = np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
        else:
            e = self.session.run(None, {self.input_name: x})[0]
        e = torch.from_numpy(np.asarray(e, dtype=np.float32)).reshape(len(x), -1)
        return F.normalize(e, dim=1)


class TorchMobileFaceNetRecognizer(Recognizer):
    """The torch MobileFaceNet (``mobilefacenet.pt``) as a recogniser, in batches."""

    def __init__(self, weights_path: str | Path, align: bool = True, device: str = "cpu", batch_size: int = 64):
        self.model = MobileFaceNet(str(weights_path), align=align).to(device)
        self.device = device
        self.batch_size = batch_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised (N, 128) embeddings."""
        images = _check_images(images, "TorchMobileFaceNetRecognizer.embed")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                out.append(self.model.embedding(images[i : i + self.batch_size].to(self.device)).float().cpu())
        e = torch.cat(out) if out else torch.zeros(0, self.model.embedding_dim)
        return F.normalize(e, dim=1)


def _as_ids(ids: Sequence, who: str, n: int) -> list:
    ids = [i.item() if hasattr(i, "item") else i for i in ids]
    if len(ids) != n:
        raise ValueError(f"recognition_topk: {who} has {len(ids)} ids for {n} embeddings")
    return ids


def recognition_topk(
    probe_emb,
    probe_ids: Sequence,
    gallery_emb,
    gallery_ids: Sequence,
    ks: Iterable[int] = (1, 5),
    reduce: str = "max",
) -> dict[str, float]:
    """Top-k identification accuracy of probes against a gallery (protocol in the module doc).

    Returns ``{'top1': ..., 'top5': ..., 'n_probes': N, 'n_identities': G}`` (accuracies in [0, 1];
    one 'top{k}' per k). ``reduce``: 'max' or 'mean' cosine over an identity's gallery images.
    """
    p = F.normalize(torch.as_tensor(probe_emb, dtype=torch.float32), dim=1)
    g = F.normalize(torch.as_tensor(gallery_emb, dtype=torch.float32), dim=1)
    if p.dim() != 2 or g.dim() != 2 or p.shape[1] != g.shape[1]:
        raise ValueError(
            f"recognition_topk: embeddings must be (N,D) and (M,D), got {tuple(p.shape)} and {tuple(g.shape)}"
        )
    if reduce not in ("max", "mean"):
        raise ValueError(f"recognition_topk: reduce must be 'max' or 'mean', got {reduce!r}")
    pid = _as_ids(probe_ids, "probe_ids", len(p))
    gid = _as_ids(gallery_ids, "gallery_ids", len(g))
    idents = sorted(set(gid), key=str)
    col = {ident: j for j, ident in enumerate(idents)}
    absent = sorted({i for i in pid if i not in col}, key=str)
    if absent:
        raise ValueError(f"recognition_topk: probe identities {absent[:10]} have no gallery image")
    sims = p @ g.T  # (N, M)
    member = torch.zeros(len(g), len(idents))
    member[torch.arange(len(g)), torch.tensor([col[i] for i in gid])] = 1.0
    if reduce == "max":
        masked = sims.unsqueeze(2).masked_fill(member.unsqueeze(0) == 0, -math.inf)
        scores = masked.max(dim=1).values  # (N, G)
    else:
        scores = sims @ member / member.sum(0)
    true = scores[torch.arange(len(p)), torch.tensor([col[i] for i in pid])]
    # Rank = identities scoring >= the true one, itself excluded (ties count against the probe).
    rank = (scores >= true.unsqueeze(1)).sum(1) - 1
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"recognition_topk: k must be >= 1, got {k}")
        out[f"top{k}"] = float((rank < k).float().mean()) if len(p) else float("nan")
    out["n_probes"] = len(p)
    out["n_identities"] = len(idents)
    return out


def cosine_and_degrees(a, b) -> tuple[float, float]:
    """Row-wise identity similarity of paired embeddings: (mean cosine, mean angle in degrees)."""
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"cosine_and_degrees: expected two (N,D) arrays of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    cos = F.cosine_similarity(a, b, dim=1).clamp(-1.0, 1.0)
    return float(cos.mean()), float(torch.rad2deg(torch.arccos(cos)).mean())


def load_recognizer(path: str | Path, align: bool = True) -> Recognizer:
    """An ``OnnxRecognizer`` for a .onnx file, a ``TorchMobileFaceNetRecognizer`` for a .pt state dict."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxRecognizer(path, align=align)
    if path.suffix.lower() in (".pt", ".pth"):
        return TorchMobileFaceNetRecognizer(path, align=align)
    raise ValueError(f"{path}: unknown recogniser format (expected .onnx or .pt)")

"""Faces, identities, splits and training batches (see docs/DATA.md)."""
from nasfe.data.batches import Batch, BatchMaker, FaceRefDataset, ShardSampler
from nasfe.data.faces import (CelebAFaces, FaceRecord, FaceSource, FolderFaces, SyntheticFaces,
                              VGGFace2Faces, fit_to_size, open_faces)
from nasfe.data.splits import Splits, split_identities

__all__ = [
    "Batch", "BatchMaker", "CelebAFaces", "FaceRecord", "FaceRefDataset", "FaceSource", "FolderFaces",
    "ShardSampler", "Splits", "SyntheticFaces", "VGGFace2Faces", "fit_to_size", "open_faces",
    "split_identities",
]

"""Face sources (folder, CelebA, VGGFace2, synthetic), open_faces, and identity-disjoint splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from nasfe.config import DataConfig
from nasfe.data.faces import (
    CelebAFaces,
    FaceRecord,
    FolderFaces,
    SyntheticFaces,
    VGGFace2Faces,
    fit_to_size,
    open_faces,
)
from nasfe.data.splits import split_identities
from nasfe.data.synthetic import synthetic_faces
from nasfe.imageio import ImageReadError, read_image


def _save(path, h, w, seed=0, mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "L":
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(path, format=fmt)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA").save(path, format=fmt)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([yy * 255 // max(h - 1, 1), xx * 255 // max(w - 1, 1), np.full((h, w), seed * 37 % 256)], -1)
        Image.fromarray(a.astype(np.uint8)).save(path, format=fmt)
    return path


def _folder(root, counts, h=40, w=32):
    for n, (ident, k) in enumerate(counts.items()):
        for j in range(k):
            _save(root / ident / f"img{j}.png", h, w, seed=n * 10 + j)
    return root


# --------------------------------------------------------------------------- FolderFaces


def test_folder_scan_load_and_counts(tmp_path):
    root = _folder(tmp_path / "faces", {"bob": 3, "amy": 2})
    (root / "amy" / "notes.txt").write_text("not an image")
    (root / "empty_person").mkdir()
    _save(root / "stray.png", 40, 32)
    (root / "amy" / ".hidden.png").write_bytes(b"junk")
    f = FolderFaces(root)
    assert [r.identity for r in f.records] == ["amy", "amy", "bob", "bob", "bob"]
    assert f.records[0] == FaceRecord("amy", "amy/img0.png")
    assert (f.height, f.width) == (40, 32)
    assert f.skipped == {"not_an_image": 1, "empty_identity_folder": 1, "outside_identity_folder": 1}
    img = f.load(f.records[2])
    assert img.shape == (40, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, read_image(root / "bob" / "img0.png"))
    assert f.identities() == ["amy", "bob"] and len(f.by_identity()["bob"]) == 3


def test_folder_converts_gray_rgba_and_resizes(tmp_path):
    root = tmp_path / "faces"
    _save(root / "a" / "0.png", 40, 32)
    _save(root / "a" / "gray.png", 40, 32, mode="L")
    _save(root / "a" / "rgba.png", 40, 32, mode="RGBA")
    _save(root / "a" / "big.png", 80, 80)
    f = FolderFaces(root, height=40, width=32)
    for rec in f.records:
        out = f.load(rec)
        assert out.shape == (40, 32, 3) and out.dtype == np.uint8
    gray = f.load(FaceRecord("a", "a/gray.png"))
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_folder_bad_images_raise_at_load_naming_file(tmp_path):
    root = _folder(tmp_path / "faces", {"a": 2})
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    _save(root / "a" / "tiny.png", 8, 8)
    f = FolderFaces(root, min_size=16)  # scanning never decodes: both are listed
    assert len(f.records) == 4
    with pytest.raises(ImageReadError, match="broken.jpg"):
        f.load(FaceRecord("a", "a/broken.jpg"))
    with pytest.raises(ImageReadError, match=r"tiny.png.*min_size 16"):
        f.load(FaceRecord("a", "a/tiny.png"))


def test_folder_manifest(tmp_path):
    root = _folder(tmp_path / "faces", {"d1": 2, "d2": 2})
    (root / "identities.csv").write_text(
        "file,identity,det_score\n"
        "d1/img0.png,alice,0.9\n"
        "d1/img1.png,alice,0.9\n"
        "d2/img0.png,bert,0.8\n"
        "d2/gone.png,bert,0.8\n"
        ",bert,0.1\n"
        "d1/img0.png,alice,0.9\n"
    )
    f = FolderFaces(root)
    assert [(r.identity, r.key) for r in f.records] == [
        ("alice", "d1/img0.png"),
        ("alice", "d1/img1.png"),
        ("bert", "d2/img0.png"),
    ]
    assert f.skipped == {
        "listed_but_missing": 1,
        "bad_manifest_row": 1,
        "duplicate_manifest_row": 1,
        "not_in_manifest": 1,
    }


def test_folder_manifest_errors(tmp_path):
    root = _folder(tmp_path / "faces", {"d1": 1})
    (root / "identities.csv").write_text("path,person\nd1/img0.png,x\n")
    with pytest.raises(ValueError, match=r"identities.csv.*missing column"):
        FolderFaces(root)
    (root / "identities.csv").write_text("file,identity\nd1/nothere.png,x\n")
    with pytest.raises(ValueError, match="empty face folder"):
        FolderFaces(root)


def test_folder_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderFaces(tmp_path / "nowhere")
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty face folder"):
        FolderFaces(tmp_path / "empty")


def test_fit_to_size_covers_and_centres():
    a = np.zeros((100, 50, 3), np.uint8)
    a[:, 20:30] = 255  # a bright vertical bar in the middle
    out = fit_to_size(a, 30, 30)
    assert out.shape == (30, 30, 3)
    assert out[:, 15].min() > 200 and out[:, 0].max() < 50
    assert fit_to_size(a, 100, 50) is a


# --------------------------------------------------------------------------- CelebA / VGGFace2


def _celeba(root, table):
    """table: list of (file, identity, partition code)."""
    img = root / "img_align_celeba"
    for n, (fname, _, _) in enumerate(table):
        _save(img / fname, 218, 178, seed=n, fmt="JPEG")
    (root / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for f, i, _ in table))
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, _, p in table))
    return root


def test_celeba_partitions_and_crop(tmp_path):
    table = [
        ("000001.jpg", "10", 0),
        ("000002.jpg", "10", 0),
        ("000003.jpg", "11", 0),
        ("000004.jpg", "11", 0),
        ("000005.jpg", "12", 1),
        ("000006.jpg", "12", 1),
        ("000007.jpg", "13", 2),
        ("000008.jpg", "13", 2),
    ]
    root = _celeba(tmp_path / "celeba", table)
    all_ = CelebAFaces(root, "all")
    assert len(all_) == 8 and (all_.height, all_.width) == (176, 144)
    assert {r.identity for r in CelebAFaces(root, "train").records} == {"10", "11"}
    assert [r.key for r in CelebAFaces(root, "test").records] == ["000007.jpg", "000008.jpg"]
    rec = all_.records[0]
    out = all_.load(rec)
    full = read_image(root / "img_align_celeba" / rec.key)
    assert out.shape == (176, 144, 3)
    assert np.array_equal(out, full[21:197, 17:161])


def test_celeba_missing_and_malformed(tmp_path):
    root = _celeba(tmp_path / "celeba", [("000001.jpg", "1", 0), ("000002.jpg", "1", 0)])
    with open(root / "identity_CelebA.txt", "a") as f:
        f.write("000099.jpg 1\n")
    with open(root / "list_eval_partition.txt", "a") as f:
        f.write("000099.jpg 0\n")
    c = CelebAFaces(root, "all")
    assert len(c) == 2 and c.skipped["listed_but_missing"] == 1
    (root / "list_eval_partition.txt").write_text("000001.jpg\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt:1"):
        CelebAFaces(root, "all")
    with pytest.raises(FileNotFoundError, match="identity_CelebA.txt"):
        (root / "identity_CelebA.txt").unlink()
        CelebAFaces(root, "all")
    with pytest.raises(ValueError, match="partition"):
        CelebAFaces(root, "training")


def test_vggface2_layout(tmp_path):
    root = tmp_path / "vgg"
    for i in range(2):
        for j in range(2):
            _save(root / "train" / f"n00000{i}" / f"{j:04d}_01.jpg", 250 + 10 * j, 200, seed=i + j, fmt="JPEG")
    _save(root / "test" / "n000009" / "0001_01.jpg", 240, 240, fmt="JPEG")
    v = VGGFace2Faces(root, "train")
    assert v.identities() == ["n000000", "n000001"] and (v.height, v.width) == (224, 224)
    assert v.load(v.records[1]).shape == (224, 224, 3)
    assert VGGFace2Faces(root, "test").identities() == ["n000009"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        VGGFace2Faces(tmp_path / "nowhere")
    (root / "train").rename(root / "other")
    with pytest.raises(FileNotFoundError, match="train"):
        VGGFace2Faces(root, "train")


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_identity_stable():
    a = SyntheticFaces(3, 2, 48, 40, seed=5)
    b = SyntheticFaces(3, 2, 48, 40, seed=5)
    c = SyntheticFaces(5, 2, 48, 40, seed=5)
    d = SyntheticFaces(3, 2, 48, 40, seed=6)
    r = a.records[3]
    img = a.load(r)
    assert img.shape == (48, 40, 3) and img.dtype == np.uint8
    assert np.array_equal(img, b.load(r))
    assert np.array_equal(img, c.load(r))  # identity i does not depend on how many there are
    assert not np.array_equal(img, d.load(r))
    assert not np.array_equal(a.load(a.records[0]), a.load(a.records[1]))  # per-image variation
    assert len({x.identity for x in a.records}) == 3 and len(a) == 6


def test_synthetic_same_identity_looks_alike():
    imgs, ids = synthetic_faces(6, 4, 48, 40, seed=3)
    face = imgs.astype(float)[:, 12:40, 8:32]  # central face region
    same, diff = [], []
    for i in range(len(face)):
        for j in range(i + 1, len(face)):
            (same if ids[i] == ids[j] else diff).append(np.abs(face[i] - face[j]).mean())
    assert np.mean(same) < 0.85 * np.mean(diff)
    # A face: the centre differs from the image corner (background) and has contrast.
    assert imgs.std() > 20


def test_open_faces_dispatch_and_errors(tmp_path):
    src = open_faces(DataConfig(synthetic_identities=4, synthetic_images_per_identity=2, height=32, width=24))
    assert isinstance(src, SyntheticFaces) and len(src) == 8 and (src.height, src.width) == (32, 24)
    with pytest.raises(ValueError, match="data.root"):
        open_faces(DataConfig(source="folder"))
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        open_faces(DataConfig(source="celeba", root=str(tmp_path / "missing_dir")))
    with pytest.raises(ValueError, match="source"):
        open_faces(DataConfig(source="imagenet"))
    root = _folder(tmp_path / "f", {"a": 2})
    assert isinstance(open_faces(DataConfig(source="folder", root=str(root))), FolderFaces)


# --------------------------------------------------------------------------- splits


def test_split_disjoint_deterministic_and_drops_singletons():
    src = SyntheticFaces(20, 3, 16, 16, seed=0)
    src.records = [r for r in src.records if not (r.identity in ("syn0001", "syn0002") and not r.key.endswith("/0"))]
    cfg = DataConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    s = split_identities(src, cfg)
    ids = {k: {r.identity for r in v} for k, v in s.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert len(ids["test"]) == 4 and len(ids["val"]) == 4
    singles = {"syn0001", "syn0002"}
    assert not singles & (ids["train"] | ids["val"])
    dropped = len(singles - ids["test"])
    assert s.stats.get("single_image_identities_dropped", 0) == dropped
    assert sum(len(v) for v in s.values()) == len(src.records) - dropped
    again = split_identities(src, cfg)
    assert {k: list(v) for k, v in again.items()} == {k: list(v) for k, v in s.items()}
    other = split_identities(src, DataConfig(val_fraction=0.2, test_fraction=0.2, seed=2))
    assert {r.identity for r in other["test"]} != ids["test"]


def test_split_max_images_and_too_few_identities():
    src = SyntheticFaces(10, 4, 16, 16)
    s = split_identities(src, DataConfig(val_fraction=0.1, test_fraction=0.1, max_images=12))
    assert 0 < len(s["train"]) <= 12
    assert all(n >= 2 for n in __import__("collections").Counter(r.identity for r in s["train"]).values())
    with pytest.raises(ValueError, match="identities"):
        split_identities(SyntheticFaces(2, 2, 16, 16), DataConfig(val_fraction=0.5, test_fraction=0.5))


def test_split_celeba_keeps_official_partition(tmp_path):
    table = [(f"{n:06d}.jpg", str((n - 1) // 2), p) for n, p in zip(range(1, 13), [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])]
    # identity "2" (files 5, 6) straddles train and val: it goes to one split only (tie: train)
    src = CelebAFaces(_celeba(tmp_path / "celeba", table), "all")
    s = split_identities(src, DataConfig(val_fraction=0.5, test_fraction=0.0))  # fractions ignored
    ids = {k: {r.identity for r in v} for k, v in s.items()}
    assert ids == {"train": {"0", "1", "2"}, "val": {"3"}, "test": {"4", "5"}}
    assert s.stats["partition_conflicts"] == 1


# --------------------------------------------------------------------------- ../shared


def test_shared_celeba_id():
    root = shared_path("data", "celeba-id")
    f = FolderFaces(root)
    assert len(f) == 4858 and len(f.identities()) == 230
    assert (f.height, f.width) == (176, 144) and f.skipped == {}
    assert f.load(f.records[0]).shape == (176, 144, 3)
    s = split_identities(f, DataConfig(source="folder", root=str(root)))
    ids = [{r.identity for r in s[k]} for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(v) for v in s.values()) == 4858  # every identity has >= 3 images

"""FaceRefDataset (x + k refs of the same identity), ShardSampler, Batch and BatchMaker."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from nasfe.config import SpaceConfig
from nasfe.data.batches import Batch, BatchMaker, FaceRefDataset, ShardSampler
from nasfe.data.faces import FolderFaces, SyntheticFaces


class _Params:
    """Stand-in for DegradeParams: only what BatchMaker uses."""

    def __init__(self, labels):
        self._labels = labels

    def labels(self):
        return self._labels


def fake_degrader(x, generator):
    """Darken each sample by a random factor drawn from the CPU generator (like the real one)."""
    r = torch.rand(x.shape[0], generator=generator)
    y = x * r.to(x.device).view(-1, 1, 1, 1)
    return y, _Params(torch.stack([torch.zeros_like(r), torch.zeros_like(r), (r < 0.5).float()], 1))


def _space(h=16, w=12, refs=2, ids=10, per=3):
    sp = SpaceConfig()
    sp.data.height, sp.data.width = h, w
    sp.data.synthetic_identities, sp.data.synthetic_images_per_identity = ids, per
    sp.data.val_fraction = sp.data.test_fraction = 0.2
    sp.identity.refs = refs
    return sp


@pytest.fixture(scope="module")
def faces():
    return SyntheticFaces(10, 3, 16, 12, seed=0)


def test_refs_are_other_images_of_same_identity(faces):
    ds = FaceRefDataset(faces, faces.records, k=2, seed=0)
    assert len(ds) == 30
    for i in range(len(ds)):
        item = ds[i]
        assert item["x"].shape == (3, 16, 12) and item["refs"].shape == (2, 3, 16, 12)
        x_rec = ds.records[item["record"]]
        refs = item["ref_records"].tolist()
        assert item["record"] not in refs
        assert all(ds.records[m].identity == x_rec.identity for m in refs)
        assert ds.identity_names[item["identity"]] == x_rec.identity
        for slot in range(2):  # distinct synthetic images: a ref is never x's pixels
            assert not torch.equal(item["refs"][slot], item["x"])
        assert 0.0 <= float(item["x"].min()) and float(item["x"].max()) <= 1.0


def test_refs_with_replacement_when_too_few(faces):
    ds = FaceRefDataset(faces, faces.records, k=5, seed=0)  # only 2 others per identity
    item = ds[4]
    refs = item["ref_records"].tolist()
    assert len(refs) == 5 and len(set(refs)) <= 2 and item["record"] not in refs


def test_deterministic_per_seed_epoch_index(faces):
    a = FaceRefDataset(faces, faces.records, k=1, seed=3)
    b = FaceRefDataset(faces, faces.records, k=1, seed=3)
    draws_a = [a[i]["ref_records"].tolist() for i in range(len(a))]
    assert draws_a == [b[i]["ref_records"].tolist() for i in range(len(b))]
    assert torch.equal(a[7]["refs"], b[7]["refs"])
    a.set_epoch(1)
    assert [a[i]["ref_records"].tolist() for i in range(len(a))] != draws_a


def test_singletons_skipped_and_unreadable_substituted(tmp_path, caplog):
    root = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for ident, n in {"a": 3, "b": 2, "solo": 1}.items():
        (root / ident).mkdir(parents=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(root / ident / f"{j}.png")
    (root / "a" / "9_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    src = FolderFaces(root, height=20, width=16, min_size=8)
    ds = FaceRefDataset(src, src.records, k=2, seed=0)
    assert ds.skipped == {"single_image_identity": 1}
    bad = next(n for n, r in enumerate(ds.records) if r.key.endswith("9_bad.png"))
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]
    assert all(it["record"] != bad and bad not in it["ref_records"].tolist() for it in items)
    assert all(it["refs"].shape == (2, 3, 20, 16) for it in items)
    assert ds.skipped["unreadable"] == 1
    assert sum("9_bad.png" in m for m in caplog.messages) == 1  # warned once per file


def test_resizes_to_requested_size(faces):
    ds = FaceRefDataset(faces, faces.records, k=1, height=8, width=8)
    item = ds[0]
    assert item["x"].shape == (3, 8, 8) and item["refs"].shape == (1, 3, 8, 8)


def test_shard_sampler_disjoint_and_covering():
    for drop_last in (True, False):
        shards = [list(ShardSampler(11, r, 2, shuffle=True, seed=1, drop_last=drop_last)) for r in range(2)]
        assert not set(shards[0]) & set(shards[1])
        assert len(shards[0]) == len(ShardSampler(11, 0, 2, drop_last=drop_last))
        if drop_last:
            assert len(shards[0]) == len(shards[1]) == 5
        else:
            assert sorted(shards[0] + shards[1]) == list(range(11))
    s = ShardSampler(11, 0, 1, shuffle=True, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert sorted(first) == sorted(list(s)) and first != list(s)
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(4, 2, 2)


def test_batch_to_and_len():
    b = Batch(y=torch.zeros(2, 3, 4, 4), x=torch.ones(2, 3, 4, 4), c=torch.zeros(2, 3), refs=None, params="p")
    m = b.to("cpu")
    assert len(m) == 2 and m.refs is None and m.params == "p" and torch.equal(m.x, b.x)
    assert m.y.device.type == "cpu" and m is not b


def test_batch_maker_train(faces):
    sp = _space()
    maker = BatchMaker(sp, "train", batch_size=4, faces=faces, degrader=fake_degrader)
    n_train = len(maker.dataset)
    assert len(maker) == n_train // 4
    batches = list(maker)
    assert len(batches) == len(maker)
    b = batches[0]
    assert b.x.shape == (4, 3, 16, 12) and b.y.shape == b.x.shape and b.refs.shape == (4, 2, 3, 16, 12)
    assert b.c.shape == (4, 3) and len(b) == 4 and b.identity.shape == (4,)
    assert torch.all(b.y <= b.x + 1e-6)
    train_ids = {r.identity for r in maker.splits["train"]}
    assert not train_ids & {r.identity for r in maker.splits["test"]}
    # determinism: a second maker gives the same batches; another epoch differs
    again = list(BatchMaker(sp, "train", batch_size=4, faces=faces, degrader=fake_degrader))
    assert all(torch.equal(p.y, q.y) and torch.equal(p.refs, q.refs) for p, q in zip(batches, again))
    maker.set_epoch(1)
    assert not torch.equal(next(iter(maker)).x, b.x)


def test_batch_maker_two_ranks(faces):
    sp = _space()
    for split in ("train", "val"):
        keys = []
        for rank in range(2):
            m = BatchMaker(sp, split, batch_size=2, rank=rank, world_size=2, faces=faces, degrader=fake_degrader)
            # which records the batches hold: batches carry identity only, so follow the sampler
            shard = [m.dataset.records[m.dataset.items[i]].key for i in m.sampler]
            n_batched = sum(len(b) for b in m)
            assert n_batched == (len(shard) // 2) * 2 if split == "train" else n_batched == len(shard)
            keys.append(shard)
        assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
        all_keys = {r.key for r in m.dataset.records}
        if split == "train":
            assert len(keys[0]) == len(keys[1]) and len(all_keys) - len(keys[0] + keys[1]) < 2
        else:
            assert sorted(keys[0] + keys[1]) == sorted(all_keys)


def test_batch_maker_val_is_fixed_across_epochs(faces):
    m = BatchMaker(_space(), "val", batch_size=3, faces=faces, degrader=fake_degrader)
    first = next(iter(m))
    m.set_epoch(5)
    second = next(iter(m))
    assert torch.equal(first.y, second.y) and torch.equal(first.refs, second.refs)


def test_batch_maker_errors(faces):
    with pytest.raises(ValueError, match="split"):
        BatchMaker(_space(), "training", 2, faces=faces, degrader=fake_degrader)
    with pytest.raises(ValueError, match="batch_size"):
        BatchMaker(_space(), "train", 1000, faces=faces, degrader=fake_degrader)


def test_batch_maker_default_source_and_no_refs():
    sp = _space(h=12, w=12, refs=0, ids=6, per=2)
    m = BatchMaker(sp, "train", batch_size=2, degrader=fake_degrader)  # synthetic via open_faces
    b = next(iter(m))
    assert b.refs is None and b.x.shape == (2, 3, 12, 12)
    assert Counter(r.identity for r in m.splits["train"])  # some training identities


def test_batch_maker_with_real_degrader(faces, tmp_path):
    pipeline = pytest.importorskip("nasfe.degrade.pipeline")
    sp = _space()
    sp.degrade.motion_kernels = 4
    sp.degrade.gaussian_kernels = 2
    sp.degrade.kernel_sizes = [5, 7]
    sp.degrade.cache_dir = str(tmp_path)
    m = BatchMaker(sp, "train", batch_size=4, faces=faces, degrader=pipeline.Degrader(sp.degrade))
    b = next(iter(m))
    assert b.y.shape == b.x.shape and b.c.shape == (4, 3)
    assert set(b.c.unique().tolist()) <= {0.0, 1.0}
    assert float(b.y.min()) >= 0.0 and float(b.y.max()) <= 1.0


class _PidFaces(SyntheticFaces):
    """Synthetic faces that note which process loaded each image."""

    def __init__(self, log_path, *args):
        super().__init__(*args)
        self.log_path = str(log_path)

    def load(self, rec):
        import os

        with open(self.log_path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return super().load(rec)


def test_workers_persist_across_passes_and_see_each_epoch(tmp_path):
    """DataLoader workers are started once per maker, not once per pass, and still draw each
    epoch's references (they hold their own copy of the dataset, so the epoch must reach them)."""
    import os

    log = tmp_path / "pids.txt"
    faces = _PidFaces(log, 10, 3, 16, 12, 0)
    sp = _space()
    sp.data.workers = 1
    maker = BatchMaker(sp, "train", batch_size=4, faces=faces, degrader=fake_degrader)
    assert maker.loader.persistent_workers and not maker.loader.pin_memory  # CPU: nothing to pin
    sp0 = _space()
    plain = BatchMaker(sp0, "train", batch_size=4, faces=SyntheticFaces(10, 3, 16, 12, seed=0), degrader=fake_degrader)
    for epoch in (0, 1, 2):
        maker.set_epoch(epoch)
        plain.set_epoch(epoch)
        for a, b in zip(maker, plain):
            assert torch.equal(a.x, b.x) and torch.equal(a.refs, b.refs), f"epoch {epoch}"
    pids = set(log.read_text().split())
    assert len(pids) == 1 and str(os.getpid()) not in pids, pids


def test_loader_pins_memory_for_cuda(faces):
    sp = _space()
    sp.data.workers = 2
    m = BatchMaker(sp, "train", batch_size=4, device="cuda", faces=faces, degrader=fake_degrader)
    assert m.loader.pin_memory and m.loader.persistent_workers

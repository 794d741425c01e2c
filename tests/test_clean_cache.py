"""The clean-photo cache: frozen-backbone outputs of clean targets and references kept across
training steps. It saves backbone passes and never changes what a step computes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nasfe.config import ConfigError, load_space, resolve_cache_mb
from nasfe.data.batches import BatchMaker, image_key
from nasfe.data.faces import FaceRecord
from nasfe.engine.retrain import RetrainPhase
from nasfe.identity.cache import CleanImageCache

# the tiny space as shipped (the packaged MobileFaceNet: perceptual and identity losses on, as in
# training), every sample's L_iden, one block
SMALL = {"model.blocks": 1, "model.cells": 1, "model.levels": 1, "loss.iden_samples": 0, "identity.drop_refs": 0.0}


def _phase(tmp_path, cache_mb, **over):
    space = load_space("tiny", {**SMALL, "identity.cache_mb": cache_mb, **over})
    torch.manual_seed(0)
    phase = RetrainPhase(space, None, tmp_path / f"run{cache_mb}")
    phase.build()
    return space, phase


def _batches(space, n=2):
    maker = BatchMaker(space, "train", batch_size=4, seed=3)
    maker.set_epoch(0)
    out = []
    for batch in maker:
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError("too few batches")


def _loss_and_grads(phase, batch):
    phase.model.zero_grad(set_to_none=True)
    loss, parts = phase.network_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in phase.model.named_parameters() if p.grad is not None}
    return loss.detach(), parts, grads


def _trunk_images(backbone):
    """A counter of the images the backbone's trunk sees (every feature map and embedding)."""
    seen = {"images": 0}
    backbone.net.conv1.register_forward_pre_hook(
        lambda m, a: seen.__setitem__("images", seen["images"] + a[0].shape[0])
    )
    return seen


def test_cached_steps_compute_what_uncached_steps_compute_with_fewer_backbone_passes(tmp_path):
    space, plain = _phase(tmp_path, 0)
    _, cached = _phase(tmp_path, 64)
    cached.model.load_state_dict(plain.model.state_dict())
    assert plain.loss_fn.backbone.clean_cache is None
    seen_plain, seen_cached = _trunk_images(plain.loss_fn.backbone), _trunk_images(cached.loss_fn.backbone)
    batch = _batches(space, 1)[0]
    ref_loss, ref_parts, ref_grads = _loss_and_grads(plain, batch)
    for attempt in ("cold", "warm"):
        before = seen_cached["images"]
        # new tensors, as every step brings (the per-batch memo does not apply)
        again = dataclasses.replace(batch, x=batch.x.clone(), refs=batch.refs.clone(), y=batch.y.clone())
        loss, parts, grads = _loss_and_grads(cached, again)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6, msg=attempt)
        for name in ("l2", "per", "iden"):
            torch.testing.assert_close(parts[name], ref_parts[name], rtol=1e-5, atol=1e-6, msg=f"{attempt} {name}")
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=f"{attempt} {name}")
        passes = seen_cached["images"] - before
        if attempt == "cold":
            assert passes == seen_plain["images"]  # nothing in the cache yet: every photo computed
    # warm: only the degraded input (identity features) and the restored image (loss) go through
    # the trunk, features and embedding: 4 + 4 + 4; uncached adds x (4) and refs (8 + 8)
    assert seen_plain["images"] == 4 * 3 + 4 + 8 + 8
    assert passes == 4 * 3
    cache = cached.loss_fn.backbone.clean_cache
    assert cache.hits == 4 + 8 + 8 and cache.misses == 4 + 8 + 8


def test_a_float32_pass_never_reads_a_bf16_entry(tmp_path):
    space, phase = _phase(tmp_path, 64)
    backbone = phase.loss_fn.backbone
    batch = _batches(space, 1)[0]
    with backbone.image_keys((batch.x, batch.keys)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = backbone.target_features(batch.x)
        full = backbone.target_features(batch.x)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert backbone.clean_cache.misses == 8 and backbone.clean_cache.hits == 0


def test_images_changed_after_binding_are_computed_not_read(tmp_path):
    space, phase = _phase(tmp_path, 64)
    backbone = phase.loss_fn.backbone
    batch = _batches(space, 1)[0]
    with backbone.image_keys((batch.x, batch.keys)):
        first = backbone.target_features(batch.x)
        batch.x.mul_(0.5)  # in place: the keys no longer describe these pixels
        second = backbone.target_features(batch.x)
    assert backbone.clean_cache.hits == 0
    assert not torch.allclose(first, second)


def test_unkeyed_images_bypass_the_cache(tmp_path):
    _, phase = _phase(tmp_path, 64)
    backbone = phase.loss_fn.backbone
    backbone.target_features(torch.rand(2, 3, 48, 40))
    assert len(backbone.clean_cache) == 0


def test_the_cache_stays_within_its_bytes_and_drops_the_least_recently_used():
    row = torch.zeros(10)  # 40 bytes
    cache = CleanImageCache(max_bytes=100)
    cache.lookup("f", [1, 2], lambda pos: row.expand(len(pos), 10))
    cache.lookup("f", [1], lambda pos: pytest.fail("1 is cached"))  # 1 becomes the most recent
    cache.lookup("f", [3], lambda pos: row.expand(len(pos), 10))  # 120 bytes > 100: 2 goes
    assert cache.bytes == 80 and len(cache) == 2
    computed = []
    cache.lookup("f", [1, 2, 3], lambda pos: computed.extend(pos) or row.expand(len(pos), 10))
    assert computed == [1]  # position of key 2, the only one recomputed


def test_a_zero_cache_keeps_nothing():
    cache = CleanImageCache(max_bytes=0)
    out = cache.lookup("f", [1, 2], lambda pos: torch.ones(len(pos), 3))
    assert out.shape == (2, 3) and len(cache) == 0 and cache.bytes == 0


def test_photo_keys_follow_the_record_and_size_and_travel_with_the_batch():
    a, b = FaceRecord("id1", "a.png"), FaceRecord("id1", "b.png")
    assert image_key(a, 48, 40) == image_key(FaceRecord("id1", "a.png"), 48, 40)
    assert len({image_key(a, 48, 40), image_key(b, 48, 40), image_key(a, 96, 80)}) == 3
    space = load_space("tiny", SMALL)
    maker = BatchMaker(space, "train", batch_size=4, seed=3)
    maker.set_epoch(0)
    batch = next(iter(maker))
    records = maker.dataset.records
    item = maker.dataset[0]
    assert item["key"] == image_key(records[item["record"]], 48, 40)
    assert item["ref_keys"].tolist() == [image_key(records[m], 48, 40) for m in item["ref_records"].tolist()]
    assert len(batch.keys) == 4 and [len(r) for r in batch.ref_keys] == [2] * 4
    assert all(k not in row for k, row in zip(batch.keys, batch.ref_keys))  # a reference is never x itself


def test_cache_size_is_chosen_per_device_and_validated():
    space = load_space("tiny")
    assert space.identity.cache_mb == "auto"
    assert resolve_cache_mb(space.identity, torch.device("cpu")) > 0
    assert resolve_cache_mb(space.identity, torch.device("cuda")) == 0
    assert resolve_cache_mb(load_space("tiny", {"identity.cache_mb": 0}).identity, "cpu") == 0
    for bad in (-1, "lots", True):
        with pytest.raises(ConfigError, match="identity.cache_mb"):
            load_space("tiny", {"identity.cache_mb": bad})


def test_the_profile_warms_the_cache_so_its_step_runs_only_the_uncached_passes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from profile_step import warm_clean_cache

    space, phase = _phase(tmp_path, 64)
    seen = _trunk_images(phase.loss_fn.backbone)
    batch = _batches(space, 1)[0]
    warm_clean_cache(phase, batch)
    before = seen["images"]
    _loss_and_grads(phase, batch)
    assert seen["images"] - before == 4 * 3  # degraded input, restored features and embedding

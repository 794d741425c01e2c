"""``search_spaces/rehearsal.yaml`` is paper.yaml with only sizes changed, through ``inherit:``."""

from __future__ import annotations


import pytest

from nasfe.config import ConfigError, load_space

#: what a rehearsal may change: sizes (image size and data, channel widths, steps, pre-training
#: steps, batch), never structure
SIZE_FIELDS = {
    "model": {"channels", "encoder_channels", "identity_channels"},
    "data": "*",
    "search": {
        "epochs",
        "warmup_epochs",
        "steps_per_epoch",
        "batch_size",
        "pretrain_steps",
        "val_batches",
        "checkpoint_every",
        "log_every",
    },
    "retrain": {
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "pretrain_steps",
        "val_batches",
        "checkpoint_every",
        "log_every",
    },
}


def _diff(a, b, prefix=""):
    out = []
    for k in a:
        if isinstance(a[k], dict):
            out += _diff(a[k], b[k], f"{prefix}{k}.")
        elif a[k] != b[k]:
            out.append(f"{prefix}{k}")
    return out


def test_the_rehearsal_is_the_paper_space_except_sizes():
    paper, rehearsal = load_space("paper"), load_space("rehearsal")
    a, b = paper.to_dict(), rehearsal.to_dict()
    changed = [k for k in _diff(a, b) if k != "name"]
    for key in changed:
        section, field = key.split(".", 1)
        allowed = SIZE_FIELDS.get(section, set())
        assert allowed == "*" or field in allowed, f"rehearsal changes {key}, not a size"
    m = rehearsal.model
    assert (m.blocks, m.cells, m.levels, m.operators) == (12, 4, 3, paper.model.operators)
    assert m.partial_channels == 4 and m.checkpoint_cells and m.stable_cells and m.use_classifier and m.use_identity
    assert rehearsal.search.pretrain_steps > 0 and rehearsal.retrain.pretrain_steps > 0
    assert rehearsal.identity.weights == "packaged" and rehearsal.search.grad_clip_per_part


def test_a_change_to_the_inherited_space_reaches_the_child(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {blocks: 5, channels: 8}\nsearch: {epochs: 30}\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\nmodel: {channels: 4}\n")
    child = load_space(tmp_path / "child.yaml")
    assert (child.name, child.model.blocks, child.model.channels, child.search.epochs) == ("child", 5, 4, 30)
    base.write_text("model: {blocks: 7, channels: 8}\n")
    assert load_space(tmp_path / "child.yaml").model.blocks == 7


def test_bad_inheritance_is_one_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_space(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("inherit: [paper]\n")
    with pytest.raises(ConfigError, match="inherit must name a space"):
        load_space(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("inherit: nope\n")
    with pytest.raises(ConfigError, match="unknown search space 'nope'"):
        load_space(tmp_path / "d.yaml")


#: the rehearsal at the smallest sizes that keep its structure: 32x32 synthetic faces, C = 4 (one
#: channel per partial-channel group), a few steps of every phase, a small blur-kernel bank (the
#: paper's 25000 kernels take minutes to build where no cache holds them)
SHORT = {
    "degrade.motion_kernels": 64,
    "model.channels": 4,
    "model.encoder_channels": 8,
    "model.identity_channels": 4,
    "data.source": "synthetic",
    "data.root": None,
    "data.height": 32,
    "data.width": 32,
    "data.synthetic_identities": 10,
    "data.synthetic_images_per_identity": 4,
    "data.max_images": None,
    "search.epochs": 2,
    "search.warmup_epochs": 1,
    "search.steps_per_epoch": 1,
    "search.batch_size": 2,
    "search.pretrain_steps": 1,
    "search.val_batches": 1,
    "search.checkpoint_every": 100,
    "search.log_every": 1,
    "retrain.epochs": 1,
    "retrain.steps_per_epoch": 2,
    "retrain.batch_size": 2,
    "retrain.pretrain_steps": 1,
    "retrain.val_batches": 1,
    "retrain.checkpoint_every": 100,
    "retrain.log_every": 1,
}


@pytest.mark.slow
def test_the_rehearsal_runs_every_phase_in_the_engine(tmp_path):
    """Pre-training, search (weights-only, then alternating), derivation, retraining and evaluation
    of the rehearsal space at small size, in the plain engine (no Ray)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12-block supernet on 32x32 images is many small kernels: threads only wait
    try:
        _rehearse(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _rehearse(tmp_path):
    import math

    import torch

    from nasfe.engine.callbacks import Callback
    from nasfe.engine.network import build_network
    from nasfe.engine.retrain import run_retrain
    from nasfe.engine.search import run_search
    from nasfe.evaluate.split_eval import evaluate_restoration
    from nasfe.genotype import Genotype

    class Losses(Callback):
        def __init__(self):
            self.rows = []

        def on_step(self, state, metrics):
            self.rows.append(dict(metrics))

    space = load_space("rehearsal", SHORT)
    assert space.model.blocks == 12 and space.identity.weights == "packaged"
    searched, retrained = Losses(), Losses()
    summary = run_search(space, tmp_path / "search", callbacks=[searched])
    assert len(searched.rows) == 2 and "arch_loss" in searched.rows[-1]
    for row in searched.rows:
        assert math.isfinite(row["loss"]), row
        assert row["per"] > 0 and row["iden"] > 0, "the rehearsal trains L_per and L_iden"
    assert math.isfinite(searched.rows[-1]["arch_loss"])

    genotype = Genotype.from_json(tmp_path / "search" / "genotype.json")
    assert genotype.to_dict()["cells"] == summary["genotype"]["cells"]
    assert all(len(cell) == 12 for cell in genotype.cells) and len(genotype.path) == 4

    run_retrain(space, genotype, tmp_path / "retrain", callbacks=[retrained])
    assert len(retrained.rows) == 2 and all(math.isfinite(r["loss"]) for r in retrained.rows)
    model_path = tmp_path / "retrain" / "model.pt"
    model, _ = build_network(space, genotype=genotype)
    model.load_state_dict(torch.load(model_path, weights_only=True)["model"])
    y = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(y).restored
    assert out.shape == y.shape and torch.isfinite(out).all()

    row = evaluate_restoration(space, genotype, model_path, max_images=4)
    assert row["images"] == 4
    assert all(math.isfinite(row[k]) for k in ("input_psnr", "psnr", "input_ssim", "ssim"))

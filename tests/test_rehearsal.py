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

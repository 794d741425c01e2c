"""The plain-PyTorch engine on the tiny space: search, derive, resume, retrain (no Ray, no W&B)."""
from __future__ import annotations

import json

import pytest
import torch

from nasfe.config import load_space
from nasfe.engine.callbacks import Callback
from nasfe.engine.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from nasfe.engine.retrain import run_retrain
from nasfe.engine.search import run_search


def tiny(**overrides):
    base = {"search.epochs": 2, "search.warmup_epochs": 1, "search.steps_per_epoch": 2,
            "search.val_batches": 1, "search.checkpoint_every": 1, "search.log_every": 1,
            "retrain.epochs": 1, "retrain.steps_per_epoch": 2, "retrain.val_batches": 1}
    base.update(overrides)
    return load_space("tiny", base)


class Recorder(Callback):
    def __init__(self):
        self.steps, self.epochs, self.ckpts, self.starts = [], [], [], []

    def on_start(self, state, config):
        self.starts.append((state.step, config["resumed_from"]))

    def on_step(self, state, metrics):
        self.steps.append((state.step, dict(metrics)))

    def on_epoch_end(self, state, metrics, genotype=None):
        self.epochs.append((state.epoch, dict(metrics), genotype))

    def on_checkpoint(self, state, path, metrics):
        self.ckpts.append((state.step, path))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    run = tmp_path_factory.mktemp("search")
    rec = Recorder()
    summary = run_search(tiny(), run, callbacks=[rec])
    return run, rec, summary


def test_search_derives_a_genotype_every_epoch(searched):
    from nasfe.genotype import Genotype

    run, rec, summary = searched
    assert [s for s, _ in rec.steps] == [1, 2, 3, 4]
    assert [e for e, _, _ in rec.epochs] == [1, 2]
    assert all(g is not None for _, _, g in rec.epochs)
    g = Genotype.from_json(run / "genotype.json", space=tiny())
    assert all(op != "zero" for cell in g.cells for block in cell for op in block.ops)
    assert sorted(p.name for p in (run / "genotypes").iterdir()) == ["epoch_001.json", "epoch_002.json"]
    assert summary["genotype_id"] == g.genotype_id()
    assert json.loads((run / "search_summary.json").read_text())["steps"] == 4


def test_architecture_steps_start_after_warmup(searched):
    _, rec, _ = searched
    assert all("arch_loss" not in m for s, m in rec.steps[:2])  # epoch 1 is warm-up
    assert all("arch_loss" in m for s, m in rec.steps[2:])


def test_validation_reports_psnr_of_input_and_output(searched):
    _, rec, _ = searched
    metrics = rec.epochs[-1][1]
    for key in ("val_psnr", "val_ssim", "input_psnr", "input_ssim", "loss"):
        assert key in metrics and torch.isfinite(torch.tensor(float(metrics[key])))
    assert metrics["alpha_rank_diff"] == 0.0


def test_checkpoints_hold_everything_to_continue(searched):
    run, rec, _ = searched
    ckpts = list_checkpoints(run / "checkpoints", "search")
    assert 1 <= len(ckpts) <= 3  # pruned to the newest three
    payload = load_checkpoint(ckpts[-1])
    assert payload["step"] == 4 and payload["epoch"] == 2
    assert set(payload["optimizers"]) == {"weights", "arch"}
    assert any(k.endswith("alphas") for k in payload["model"])


def test_interrupted_search_resumes_at_its_step(tmp_path):
    space = tiny()

    class Stop(Exception):
        pass

    class Interrupt(Callback):
        def on_checkpoint(self, state, path, metrics):
            if state.step == 3:
                raise Stop

    with pytest.raises(Stop):
        run_search(space, tmp_path, callbacks=[Interrupt()])
    assert load_checkpoint(list_checkpoints(tmp_path / "checkpoints", "search")[-1])["step"] == 3
    rec = Recorder()
    run_search(space, tmp_path, callbacks=[rec])
    assert rec.starts[0][0] == 3 and rec.starts[0][1].endswith("search_step_00000003.pt")
    assert [s for s, _ in rec.steps] == [4]
    # the resumed run ends where an uninterrupted one does
    fresh = tmp_path / "fresh"
    run_search(space, fresh)
    a = load_checkpoint(list_checkpoints(tmp_path / "checkpoints", "search")[-1])["model"]
    b = load_checkpoint(list_checkpoints(fresh / "checkpoints", "search")[-1])["model"]
    key = next(k for k in a if k.endswith("alphas"))
    assert torch.allclose(a[key], b[key], atol=1e-6)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "search_step_00000009.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="search_step_00000009.pt"):
        run_search(tiny(), tmp_path)


def test_second_order_and_pretraining_run(tmp_path):
    space = tiny(**{"search.second_order": True, "search.epochs": 1, "search.warmup_epochs": 0,
                    "search.steps_per_epoch": 1, "search.pretrain_steps": 1})
    summary = run_search(space, tmp_path)
    assert summary["steps"] == 1 and "genotype" in summary


def test_retrain_writes_a_loadable_model(searched, tmp_path):
    from nasfe.genotype import Genotype

    run, _, _ = searched
    g = Genotype.from_json(run / "genotype.json")
    summary = run_retrain(tiny(), g, tmp_path)
    assert summary["steps"] == 2 and summary["parameters"] > 0
    payload = load_checkpoint(tmp_path / "model.pt", required=("model", "space", "genotype"))
    assert payload["genotype"]["cells"] == g.to_dict()["cells"]


def test_bf16_autocast_search_step_is_finite(tmp_path):
    space = tiny(**{"search.amp": True, "search.epochs": 1, "search.warmup_epochs": 0, "search.steps_per_epoch": 1})
    rec = Recorder()
    run_search(space, tmp_path, callbacks=[rec])
    (_, metrics), = rec.steps
    assert torch.isfinite(torch.tensor([metrics["loss"], metrics["arch_loss"]])).all()

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
    base = {
        "search.epochs": 2,
        "search.warmup_epochs": 1,
        "search.steps_per_epoch": 2,
        "search.val_batches": 1,
        "search.checkpoint_every": 1,
        "search.log_every": 1,
        "retrain.epochs": 1,
        "retrain.steps_per_epoch": 2,
        "retrain.val_batches": 1,
    }
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
    space = tiny(
        **{
            "search.second_order": True,
            "search.epochs": 1,
            "search.warmup_epochs": 0,
            "search.steps_per_epoch": 1,
            "search.pretrain_steps": 1,
        }
    )
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
    ((_, metrics),) = rec.steps
    assert torch.isfinite(torch.tensor([metrics["loss"], metrics["arch_loss"]])).all()


def test_cosine_schedule_warms_up_decays_and_leaves_alpha_alone():
    from nasfe.engine.loop import scheduled_lr

    s = tiny(
        **{
            "retrain.lr": 1e-3,
            "retrain.lr_schedule": "cosine",
            "retrain.lr_min": 1e-5,
            "retrain.lr_warmup_steps": 4,
        }
    ).retrain
    lrs = [scheduled_lr(s, i, 104) for i in range(104)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and lrs[54] == pytest.approx((1e-3 + 1e-5) / 2)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # never rises after the warm-up
    assert scheduled_lr(s, 104, 104) == pytest.approx(1e-5)
    assert scheduled_lr(tiny().retrain, 50, 104) == tiny().retrain.lr


class LrRecorder(Callback):
    def __init__(self, phase_ref):
        self.phase_ref, self.lrs = phase_ref, []

    def on_step(self, state, metrics):
        ph = self.phase_ref[0]
        self.lrs.append([g["lr"] for o in ph.optimizers().values() for g in o.param_groups])


@pytest.mark.slow
@pytest.mark.parametrize("phase_name", ["search", "retrain"])
def test_phase_follows_the_schedule_for_weights_only_and_across_resume(tmp_path, phase_name):
    from nasfe.engine.retrain import RetrainPhase
    from nasfe.engine.search import SearchPhase

    space = tiny(
        **{
            f"{phase_name}.lr_schedule": "cosine",
            f"{phase_name}.lr": 1e-3,
            f"{phase_name}.lr_min": 1e-4,
            f"{phase_name}.epochs": 2,
            f"{phase_name}.steps_per_epoch": 3,
            f"{phase_name}.checkpoint_every": 100,
        }
    )
    cls = SearchPhase if phase_name == "search" else RetrainPhase
    make = (
        (lambda cbs: SearchPhase(space, tmp_path, callbacks=cbs))
        if cls is SearchPhase
        else (lambda cbs: RetrainPhase(space, None, tmp_path, callbacks=cbs))
    )
    ref = [None]
    rec = LrRecorder(ref)
    ref[0] = ph = make([rec])
    ph.run()
    from nasfe.engine.loop import scheduled_lr

    want = [scheduled_lr(space.phase(phase_name), i, 6) for i in range(6)]
    assert [lrs[0] for lrs in rec.lrs] == pytest.approx(want)
    assert want[0] > want[-1] >= 1e-4
    if phase_name == "search":  # alpha/beta keep their own constant rate
        assert all(lrs[-1] == space.search.arch_lr for lrs in rec.lrs)
    # a phase resumed from its epoch-1 checkpoint continues the same curve
    ckpts = list_checkpoints(tmp_path / "checkpoints", phase_name)
    first = [c for c in ckpts if load_checkpoint(c)["step"] == 3]
    assert first, ckpts
    ref2 = [None]
    rec2 = LrRecorder(ref2)
    ref2[0] = ph2 = (
        cls(space, None, tmp_path / "again", callbacks=[rec2], resume_from=first[0])
        if cls is RetrainPhase
        else cls(space, tmp_path / "again", callbacks=[rec2], resume_from=first[0])
    )
    ph2.run()
    assert [lrs[0] for lrs in rec2.lrs] == pytest.approx(want[3:])

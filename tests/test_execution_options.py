"""model.channels_last and model.compile: execution settings that change how the network runs,
never what it computes, its parameter names or its space hash."""

from __future__ import annotations

import pytest
import torch

import nasfe.model.nasfe as nasfe_mod
from nasfe.config import ConfigError, load_space
from nasfe.model import create_model
from nasfe.model.nasfe import compile_targets, resolve_channels_last


def _build(small=False, **opts):
    over = {f"model.{k}": v for k, v in opts.items()}
    if small:  # fewer graphs for dynamo to trace
        over.update({"model.operators": ["res_op", "skip_connect", "zero"], "model.blocks": 1})
    space = load_space("tiny", over)
    torch.manual_seed(0)
    return space, create_model(space)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 32, 24, generator=g), torch.rand(2, 2, 3, 32, 24, generator=g)


def _run(model, dtype=torch.float32):
    y, refs = (t.to(dtype) for t in _inputs())
    model.zero_grad(set_to_none=True)
    out = model(y, refs)
    out.restored.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.restored.detach(), grads


def test_options_leave_the_space_hash_alone():
    plain = load_space("tiny")
    assert load_space("tiny", {"model.channels_last": True, "model.compile": True}).space_hash() == plain.space_hash()


def test_channels_last_same_results_and_names():
    _, ref = _build(channels_last=False)
    _, cl = _build(channels_last=True)
    assert ref.stem.weight.is_contiguous() and not ref.channels_last
    assert list(cl.state_dict()) == list(ref.state_dict())
    assert cl.stem.weight.is_contiguous(memory_format=torch.channels_last)
    # Compared in float64 (deterministic, no tolerance guessed): NHWC convolutions sum in another
    # order, and in float32 that order alone moves small gradients (sums of thousands of terms that
    # cancel) by more than a fixed rtol/atol holds every time. In float64 the reordering costs
    # ~1e-16 per term: the layouts agree to 3e-13 here, and 1e-9 leaves a margin of 1e4.
    ref, cl = ref.double(), cl.double()
    assert cl.stem.weight.is_contiguous(memory_format=torch.channels_last)
    out_ref, g_ref = _run(ref, torch.float64)
    out_cl, g_cl = _run(cl, torch.float64)
    torch.testing.assert_close(out_cl, out_ref, rtol=1e-9, atol=1e-9)
    assert g_cl.keys() == g_ref.keys()
    for name in g_ref:
        torch.testing.assert_close(g_cl[name].contiguous(), g_ref[name], rtol=1e-9, atol=1e-9, msg=name)


def test_compile_compiles_the_parts_in_place(monkeypatch):
    monkeypatch.setattr(nasfe_mod, "COMPILE_KWARGS", {"backend": "eager"})  # tracing only: fast on CPU
    torch._dynamo.reset()
    _, ref = _build(small=True)
    _, comp = _build(small=True, compile=True)
    parts = compile_targets(comp)
    assert len(parts) == 3 + 1 + 1 + len(comp.fusion.cells)
    assert all(p._compiled_call_impl is not None for p in parts)
    assert list(comp.state_dict()) == list(ref.state_dict())  # no "_orig_mod." prefixes
    with torch.no_grad():
        out_ref, out_c = ref(*_inputs()).restored, comp(*_inputs()).restored
    torch.testing.assert_close(out_c, out_ref, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_channels_last_auto_is_the_default_on_for_the_cpu_only():
    space = load_space("tiny")
    assert space.model.channels_last == "auto"
    assert resolve_channels_last(space.model, "cpu") and resolve_channels_last(space.model, None)
    assert not resolve_channels_last(space.model, "cuda")
    torch.manual_seed(0)
    on_cpu = create_model(space)
    assert on_cpu.channels_last and on_cpu.stem.weight.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    for_gpu = create_model(space, device="cuda")  # built on the CPU, laid out for the GPU
    assert not for_gpu.channels_last and for_gpu.stem.weight.is_contiguous()
    for explicit in (True, False):
        cfg = load_space("tiny", {"model.channels_last": explicit}).model
        assert resolve_channels_last(cfg, "cuda") is explicit and resolve_channels_last(cfg, "cpu") is explicit


def test_channels_last_accepts_true_false_or_auto_only():
    for value in (True, False, "auto"):
        assert load_space("tiny", {"model.channels_last": value}).model.channels_last == value
    for bad in ("yes", "on", 1):
        with pytest.raises(ConfigError, match="model.channels_last"):
            load_space("tiny", {"model.channels_last": bad})


def test_phases_lay_out_the_network_for_their_device(tmp_path):
    from nasfe.engine.retrain import RetrainPhase

    space = load_space("tiny", {"model.fusion": "res2", "model.use_identity": False})
    phase = RetrainPhase(space, None, tmp_path, device="cpu", resume=False)
    phase.build()
    assert phase.model.channels_last
    assert phase.model.stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_saved_network_restores_in_the_layout_of_the_device_it_loads_on():
    from nasfe.evaluate.model_io import load_trained
    from nasfe.pretrained import DEFAULT_MODEL

    # the packaged model's file says channels_last: false (how it trained); on the CPU it runs NHWC
    assert torch.load(DEFAULT_MODEL, weights_only=True)["space"]["model"]["channels_last"] is False
    model, space, _ = load_trained(DEFAULT_MODEL)
    assert space.model.channels_last == "auto" and model.channels_last
    assert model.stem.weight.is_contiguous(memory_format=torch.channels_last)


def test_retrain_amp_auto_is_bf16_on_a_cpu_with_native_bf16_only(monkeypatch):
    from nasfe.engine import loop

    space = load_space("tiny")
    assert space.retrain.amp == "auto" and space.search.amp is False
    assert load_space("paper").retrain.amp is False  # GPUs: fp32 until the GPU check decides
    assert loop.resolve_amp("auto", torch.device("cpu")) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    for native in (True, False):
        monkeypatch.setattr(loop, "native_bf16", lambda device, native=native: native and device.type == "cpu")
        assert loop.resolve_amp("auto", torch.device("cpu")) is native
        assert loop.resolve_amp("auto", torch.device("cuda")) is False
        for explicit in (True, False):
            assert loop.resolve_amp(explicit, torch.device("cuda")) is explicit
            assert loop.resolve_amp(explicit, torch.device("cpu")) is explicit


def test_amp_accepts_true_false_or_auto_only():
    for value in (True, False, "auto"):
        assert load_space("tiny", {"retrain.amp": value}).retrain.amp == value
    for section in ("search", "retrain"):
        with pytest.raises(ConfigError, match=f"{section}.amp"):
            load_space("tiny", {f"{section}.amp": "on"})


def _retrain_phase(tmp_path, amp):
    from nasfe.engine.retrain import RetrainPhase

    space = load_space("tiny", {"model.fusion": "res2", "retrain.amp": amp, "retrain.val_batches": 1})
    torch.manual_seed(0)
    phase = RetrainPhase(space, None, tmp_path / str(amp), device="cpu", resume=False)
    phase.build()
    phase.val_maker = phase.make_batches("val", seed_offset=1000)
    return phase


def _first_batch(phase):
    maker = phase.weight_batches()
    maker.set_epoch(0)
    return next(iter(maker))


def test_amp_runs_the_loss_backbone_in_bf16_and_its_terms_in_float32(tmp_path):
    phase = _retrain_phase(tmp_path, True)
    seen, backbone = [], phase.loss_fn.backbone
    features = backbone.features

    def recorded(x):
        out = features(x)
        seen.append(out.dtype)
        return out

    backbone.features = recorded
    total, parts = phase.network_loss(_first_batch(phase))
    assert seen and set(seen) == {torch.bfloat16}
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    assert float(parts["per"]) > 0 and float(parts["iden"]) > 0


def test_a_bf16_training_step_matches_float32_to_bf16_precision(tmp_path):
    losses, grads = {}, {}
    for amp in (False, True):
        phase = _retrain_phase(tmp_path, amp)  # same seed: same weights, same batch
        phase.model.zero_grad(set_to_none=True)
        total, _ = phase.network_loss(_first_batch(phase))
        total.backward()
        losses[amp] = total.item()
        grads[amp] = torch.cat([p.grad.flatten() for p in phase.model.parameters() if p.grad is not None])
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)
    assert grads[True].shape == grads[False].shape
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0) > 0.99


def test_validation_runs_in_float32_whatever_the_training_precision(tmp_path):
    fp32, bf16 = _retrain_phase(tmp_path, False), _retrain_phase(tmp_path, True)
    bf16.model.load_state_dict(fp32.model.state_dict())
    assert bf16.validate() == fp32.validate()


def test_pretraining_runs_under_the_phase_autocast(tmp_path, monkeypatch):
    from nasfe.engine import pretrain

    phase = _retrain_phase(tmp_path, True)
    seen = []
    loss = pretrain.encoder_task_loss

    def recorded(model, task, y, x, c=None):
        seen.append(torch.is_autocast_enabled("cpu"))
        return loss(model, task, y, x, c)

    monkeypatch.setattr(pretrain, "encoder_task_loss", recorded)
    phase.cfg.pretrain_steps = 1
    phase.pretrain()
    assert seen == [True, True, True]

"""The second-order architecture gradient is the derivative of the whole look-ahead objective
L_arch(w - AdamStep(clip(grad_w L_train(w, arch))), arch), and the look-ahead is Adam's real step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasfe.config import load_space
from nasfe.engine.search import SearchPhase, strict_fp32
from tests.test_search_objective import tiny

OPS = ["sep_conv_3x3", "res_op", "deveil_op", "skip_connect", "zero"]
PAPER_OPS = list(load_space("paper").model.operators)  # all eleven, fft_op and self_attn included


def _phase(tmp_path, clip: float, per_part: bool, ops=OPS, **model):
    space = tiny(
        **{
            "search.second_order": True,
            "search.grad_clip": clip,
            "search.grad_clip_per_part": per_part,
            "model.operators": ops,
            "identity.drop_refs": 0.0,
            "search.batch_size": 2,
            "data.height": 32,
            "data.width": 32,
            **{f"model.{k}": v for k, v in model.items()},
        }
    )
    phase = SearchPhase(space, tmp_path)
    torch.manual_seed(0)
    phase.build()
    train_batch = next(iter(phase.weight_batches()))
    arch_batch = phase._arch_batch()
    return phase, train_batch, arch_batch


def _loss_in_model_dtype(phase):
    """``network_loss`` computed in the model's dtype (the real one casts the output to float32)."""

    def loss(batch, drop_refs=False):
        dt = next(phase.model.parameters()).dtype
        refs = batch.refs.to(dt) if batch.refs is not None else None
        out = phase.model(batch.y.to(dt), refs=None if drop_refs else refs)
        total, _ = phase.loss_fn(out.restored, batch.x.to(dt), refs)
        if phase.space.loss.lambda_cls > 0 and out.class_logits is not None:
            cls = F.binary_cross_entropy_with_logits(out.class_logits, batch.c.to(dt))
            total = total + phase.space.loss.lambda_cls * cls
        return total, {}

    return loss


def _to_float64(phase):
    """The phase's model, loss and Adam state in float64 (the same values, exactly representable)."""
    phase.model.double()
    phase.loss_fn.double()
    for st in phase.opt_w.state.values():
        for k in ("exp_avg", "exp_avg_sq"):
            st[k] = st[k].double()
    phase.network_loss = _loss_in_model_dtype(phase)


def _real_steps(phase, batch, steps=2, skip_at=1):
    """Adam steps on the weights; one weight has no gradient at step ``skip_at`` (Adam skips it, so
    its own step count falls behind the others')."""
    for k in range(steps):
        phase.opt_w.zero_grad(set_to_none=True)
        phase.network_loss(batch)[0].backward()
        if k == skip_at:
            phase.weights[0].grad = None
        phase.clip(phase.weights)
        phase.opt_w.step()


def _directional_derivatives(phase, tb, ab, h=1e-5):
    """(analytic, numeric) derivative of ``lookahead_objective`` along a random direction of the
    architecture: ``second_order_gradient`` as the phase runs it (float32, default settings), and a
    central finite difference of the objective in float64 (a copy of the same values)."""
    grads, _ = phase.second_order_gradient(tb, ab)
    gen = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in phase.arch_params]
    analytic = sum(float((g.double() * d).sum()) for g, d in zip(grads, direction))
    _to_float64(phase)
    a0 = [p.detach().clone() for p in phase.arch_params]
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, a, d in zip(phase.arch_params, a0, direction):
                p.copy_(a + sign * h * d)
        values.append(float(phase.lookahead_objective(tb, ab)))
    return analytic, (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("clip,per_part", [(0.05, True)])
def test_lookahead_is_adams_real_step_for_every_weight(tmp_path, clip, per_part):
    phase, tb, _ = _phase(tmp_path, clip, per_part)
    _real_steps(phase, tb)
    phase.opt_w.zero_grad(set_to_none=True)
    phase.network_loss(tb)[0].backward()
    phase.weights[1].grad = None  # no gradient now: Adam leaves it where it is
    grads = [p.grad.detach().clone() if p.grad is not None else None for p in phase.weights]
    with torch.no_grad():
        predicted = phase._adam_lookahead(grads)
    before = [w.detach().clone() for w in phase.weights]
    phase.clip(phase.weights)
    phase.opt_w.step()
    counts = {int(phase.opt_w.state[w]["step"]) for w in phase.weights if w in phase.opt_w.state}
    assert len(counts) > 1  # the weights' own step counts differ
    for w, b, d in zip(phase.weights, before, predicted):
        torch.testing.assert_close(b - d, w.detach(), rtol=1e-5, atol=1e-7)
    assert torch.equal(predicted[1], torch.zeros_like(predicted[1]))


def test_float64_mirror_of_the_loss_is_the_phases_loss(tmp_path):
    phase, tb, _ = _phase(tmp_path, 0.0, False)
    real, _ = phase.network_loss(tb)
    torch.testing.assert_close(_loss_in_model_dtype(phase)(tb)[0], real)


@pytest.mark.slow  # float64 references and a finite difference: seconds each, in the default suite
@pytest.mark.parametrize("clip,per_part", [(0.0, False), (0.05, True)])
def test_second_order_gradient_in_float32_matches_a_float64_finite_difference_of_the_lookahead(
    tmp_path, clip, per_part
):
    phase, tb, ab = _phase(tmp_path, clip, per_part)
    _real_steps(phase, tb)
    analytic, numeric = _directional_derivatives(phase, tb, ab)
    assert analytic == pytest.approx(numeric, rel=0.05), (analytic, numeric)


@pytest.mark.slow  # float64 references and a finite difference: seconds each, in the default suite
def test_second_order_gradient_is_right_with_every_paper_operator_partial_channels_and_checkpointed_cells(
    tmp_path,
):
    phase, tb, ab = _phase(
        tmp_path, 0.05, True, ops=PAPER_OPS, partial_channels=4, checkpoint_cells=True, stable_cells=True
    )
    _real_steps(phase, tb)
    analytic, numeric = _directional_derivatives(phase, tb, ab)
    assert analytic == pytest.approx(numeric, rel=0.05), (analytic, numeric)


@pytest.mark.slow  # float64 references and a finite difference: seconds each, in the default suite
def test_mixed_second_derivative_matches_a_finite_difference_along_the_architecture(tmp_path):
    """grad_arch (grad_w L . z) by double backward against a float64 central difference of
    grad_w L . z (computed exactly at each point) along a random architecture direction: no step
    size on the weights' side enters the comparison."""
    phase, tb, _ = _phase(tmp_path, 0.0, False)
    _to_float64(phase)
    gen = torch.Generator().manual_seed(3)
    z = [torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in phase.weights]
    with strict_fp32(phase):
        mixed = phase.mixed_second_derivative(tb, z)
    d = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in phase.arch_params]

    def g_dot_z():
        loss, _ = phase.network_loss(tb)
        g = torch.autograd.grad(loss, phase.weights, allow_unused=True)
        return sum(float((gi * zi).sum()) for gi, zi in zip(g, z) if gi is not None)

    a0 = [p.detach().clone() for p in phase.arch_params]
    h, vals = 1e-6, []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, a, di in zip(phase.arch_params, a0, d):
                p.copy_(a + sign * h * di)
        vals.append(g_dot_z())
    numeric = (vals[0] - vals[1]) / (2 * h)
    analytic = sum(float((m * di).sum()) for m, di in zip(mixed, d))
    assert analytic == pytest.approx(numeric, rel=1e-4), (analytic, numeric)


def test_strict_fp32_runs_attention_on_a_kernel_with_double_backward_and_restores_the_settings(tmp_path):
    phase, _, _ = _phase(tmp_path, 0.0, False)
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled())
    q = torch.randn(1, 1, 4, 8, requires_grad=True)
    with strict_fp32(phase):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        out = F.scaled_dot_product_attention(q, q, q)
        (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), q)
    assert torch.isfinite(gg).all()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()) == before

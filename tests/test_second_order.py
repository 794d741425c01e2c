"""The second-order architecture gradient is the derivative of the whole look-ahead objective
L_arch(w - AdamStep(clip(grad_w L_train(w, arch))), arch), and the look-ahead is Adam's real step."""

from __future__ import annotations


import pytest
import torch

from nasfe.engine.search import SearchPhase
from tests.test_search_objective import tiny

OPS = ["sep_conv_3x3", "res_op", "deveil_op", "skip_connect", "zero"]  # no FFT: it computes in float32


def _phase(tmp_path, clip: float, per_part: bool, double: bool = False):
    space = tiny(
        **{
            "search.second_order": True,
            "search.grad_clip": clip,
            "search.grad_clip_per_part": per_part,
            "model.operators": OPS,
            "identity.drop_refs": 0.0,
            "search.batch_size": 2,
            "data.height": 32,
            "data.width": 32,
        }
    )
    phase = SearchPhase(space, tmp_path)
    torch.manual_seed(0)
    phase.build()
    train_batch = next(iter(phase.weight_batches()))
    arch_batch = phase._arch_batch()
    if double:
        phase.model.double()
        dt = torch.float64

        def loss(batch, drop_refs=False):  # L2 in float64 (the real loss casts to float32)
            out = phase.model(batch.y.to(dt), refs=None)
            return (out.restored - batch.x.to(dt)).square().sum(), {}

        phase.network_loss = loss
    return phase, train_batch, arch_batch


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


@pytest.mark.slow
@pytest.mark.timeout(1800)  # eleven float64 forward/backward passes: minutes on a loaded 2-core host
@pytest.mark.parametrize("clip,per_part", [(0.0, False), (0.05, True)])
def test_second_order_gradient_matches_a_finite_difference_of_the_lookahead_objective(tmp_path, clip, per_part):
    phase, tb, ab = _phase(tmp_path, clip, per_part, double=True)
    _real_steps(phase, tb)
    phase.hvp_norm = 1e-5  # float64: a small perturbation keeps the Hessian-vector product linear
    grads, _ = phase.second_order_gradient(tb, ab)
    gen = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in phase.arch_params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    a0 = [p.detach().clone() for p in phase.arch_params]
    h = 1e-5
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, a, d in zip(phase.arch_params, a0, direction):
                p.copy_(a + sign * h * d)
        values.append(float(phase.lookahead_objective(tb, ab)))
    numeric = (values[0] - values[1]) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=0.05), (analytic, numeric)

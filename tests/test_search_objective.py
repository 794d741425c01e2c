"""The search optimises restoration. At least one test for each of:

1. loss balance (L2 at the paper's scale dominates; a random backbone never drives a loss)
2. derivation uses the PC-DARTS edge weights (a search in partial-channel mode)
3. pre-training on by default in paper.yaml
4. the architecture trains on held-out, reshuffled training identities with fresh degradations
5. the second-order look-ahead stays bounded
6. divergence stops the phase; nothing non-finite is written or loaded
7. L_iden compares identity, not layout
plus: search health in the epoch metrics, host reads once per logging interval, the references'
backbone pass once per step, and nasfe.genotype importing no torch.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from nasfe.config import IdentityConfig, LossConfig, load_space
from nasfe.engine.search import SearchPhase, run_search
from tests.conftest import shared_path
from tests.test_identity import load_celeba_id


def tiny(**overrides):
    base = {
        "search.epochs": 1,
        "search.warmup_epochs": 0,
        "search.steps_per_epoch": 2,
        "search.val_batches": 1,
        "search.checkpoint_every": 1,
        "retrain.epochs": 1,
        "retrain.steps_per_epoch": 2,
        "retrain.val_batches": 1,
        "search.pretrain_steps": 0,
    }
    base.update(overrides)
    return load_space("tiny", base)


MFN = ("models", "mobilefacenet", "mobilefacenet.pt")


# ---------------------------------------------------------------- 1. loss balance


def test_weighted_l2_dominates_at_the_papers_lambdas_with_real_face_features():
    """L2 is a sum, so at the paper's lambdas fidelity outweighs the perceptual term (a mean would let it be 8x-300x smaller)."""
    from nasfe.identity.backbones import MobileFaceNet
    from nasfe.identity.losses import NASFELoss, identity_loss, l2_loss, perceptual_loss

    bb = MobileFaceNet(str(shared_path(*MFN)))
    x, _ = load_celeba_id(n_ids=3, per_id=3)
    x, refs = x[0::3], torch.stack([x[1::3], x[2::3]], dim=1)  # each face's refs: two other photos
    loss = NASFELoss(bb, LossConfig(lambda_per=0.04, lambda_iden=0.003))
    for sigma in (0.02, 0.1):  # near the solution and far from it
        noise = sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        restored = (x + noise).requires_grad_()
        _, parts = loss(restored, x, refs)
        l2, per, iden = parts["l2"].item(), 0.04 * parts["per"].item(), 0.003 * parts["iden"].item()
        assert l2 > 10 * per and l2 > 10 * iden, (sigma, l2, per, iden)
        terms = {
            "l2": lambda r: l2_loss(r, x),
            "per": lambda r: 0.04 * perceptual_loss(bb, r, x),
            "iden": lambda r: 0.003 * identity_loss(bb, r, refs),
        }
        grads = {}
        for name, term in terms.items():
            r = (x + noise).requires_grad_()
            (g,) = torch.autograd.grad(term(r), r)
            grads[name] = g.norm().item()
        assert grads["l2"] > 10 * grads["per"] and grads["l2"] > 10 * grads["iden"], (sigma, grads)


def test_random_backbone_never_drives_a_loss(caplog):
    """Without identity weights, L_per and L_iden are off: no loss trains towards a random network's features."""
    from nasfe.identity.backbones import build_backbone
    from nasfe.identity.losses import NASFELoss, l2_loss

    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    with caplog.at_level(logging.WARNING):
        loss = NASFELoss(bb, LossConfig(lambda_per=0.04, lambda_iden=0.003))
    assert (loss.lambda_per, loss.lambda_iden) == (0.0, 0.0)
    assert "no pretrained weights" in caplog.text and "set to 0" in caplog.text
    x = torch.rand(2, 3, 32, 24)
    r = torch.rand(2, 3, 32, 24)
    total, parts = loss(r, x, torch.rand(2, 2, 3, 32, 24))
    assert total.item() == pytest.approx(l2_loss(r, x).item()) and parts["per"].item() == 0.0


# ---------------------------------------------------------------- 2. derivation with edge weights


class _FixedArch(SearchPhase):
    """A search whose architecture is set by hand and never moves (arch_lr 0): alphas prefer the
    edges to inputs 0 and 1 of block 1 (skip connections everywhere), the edge weights prefer
    inputs 1 and 2."""

    def build(self):
        super().build()
        ops = self.space.model.operators
        with torch.no_grad():
            self.model.alphas.zero_()
            for e, strength in ((0, 3.0), (1, 3.0), (2, 3.0), (3, 2.0), (4, 1.0)):
                self.model.alphas[0, e, ops.index("skip_connect")] = strength
            gam = self.model.fusion.edge_gammas
            gam.zero_()
            gam[0, 2], gam[0, 4] = -5.0, 5.0


@pytest.fixture(scope="module")
def pc_search(tmp_path_factory):
    run = tmp_path_factory.mktemp("pc")
    space = tiny(**{"model.partial_channels": 2, "search.arch_lr": 0.0, "search.arch_weight_decay": 0.0})
    rec = []

    class Rec:
        def __getattr__(self, name):
            return lambda *a, **k: rec.append((name, a))

    phase = _FixedArch(space, run, callbacks=[Rec()])
    summary = phase.run()
    return space, run, summary, rec


def test_pc_search_derives_with_the_learned_edge_weights(pc_search):
    """The written genotype uses the PC-DARTS edge weights."""
    from nasfe.genotype import Genotype

    space, run, summary, _ = pc_search
    g = Genotype.from_json(run / "genotype.json", space=space)
    assert g.cells[0][1].inputs == [1, 2]  # without the edge weights: [0, 1]
    assert summary["genotype"]["cells"] == g.to_dict()["cells"]


def test_search_health_in_epoch_metrics(pc_search):
    """Deliver 5: entropies and the parameter-free share per epoch; a warning above one half."""
    _, _, _, rec = pc_search
    ((_, (state, metrics, genotype)),) = [r for r in rec if r[0] == "on_epoch_end"]
    for key in ("alpha_entropy", "beta_entropy", "edge_entropy", "param_free_share"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0
    assert metrics["param_free_share"] == 1.0  # skip connections everywhere
    assert metrics["alpha_entropy"] < 0.9  # decided alphas


def test_collapse_warning_is_logged(tmp_path, caplog):
    space = tiny(
        **{
            "model.partial_channels": 2,
            "search.arch_lr": 0.0,
            "search.arch_weight_decay": 0.0,
            "search.steps_per_epoch": 1,
        }
    )
    with caplog.at_level(logging.WARNING, logger="nasfe.engine"):
        _FixedArch(space, tmp_path).run()
    assert "parameter-free" in caplog.text and "collapse" in caplog.text


def test_arch_entropies_and_param_free_share():
    from nasfe.genotype import BlockGene, Genotype, arch_entropies, param_free_share

    space = tiny()
    uniform = arch_entropies([torch.zeros(1, 5, 6), torch.zeros(2, 2, 3)], space)
    assert uniform["alpha_entropy"] == pytest.approx(1.0) and uniform["beta_entropy"] == pytest.approx(1.0)
    peaked = torch.zeros(1, 5, 6)
    peaked[..., 0] = 50.0
    assert arch_entropies([peaked, torch.zeros(2, 2, 3)], space)["alpha_entropy"] < 1e-3
    g = Genotype(
        [[BlockGene([0, 1], ["skip_connect", "fft_op"]), BlockGene([1, 2], ["skip_connect", "skip_connect"])]],
        [0, 0],
        list(space.model.operators),
        2,
        space.space_hash(),
    )
    assert param_free_share(g) == 0.75


def test_param_free_ops_are_the_ops_without_parameters():
    from nasfe.genotype import PARAM_FREE_OPS
    from nasfe.model.ops import OPS, op_param_count

    assert set(PARAM_FREE_OPS) == {name for name in OPS if op_param_count(name, 8) == 0}


# ---------------------------------------------------------------- 3. pre-training before the search


def test_paper_search_pretrains_encoders_and_cn_first():
    paper = load_space("paper")
    assert paper.search.pretrain_steps > 0 and paper.search.arch_fraction == 0.5


# ---------------------------------------------------------------- 4. held-out architecture data


def test_architecture_trains_on_held_out_training_identities_with_fresh_degradations(tmp_path):
    """alpha/beta train on held-out training identities, reshuffled, with fresh degradations (not the validation split)."""
    seen = {"weights": [], "arch": []}

    class Spy(SearchPhase):
        def train_step(self, batch):
            seen["weights"].append(batch)
            return super().train_step(batch)

        def _arch_step_first_order(self, batch, drop):
            seen["arch"].append(batch)
            return super()._arch_step_first_order(batch, drop)

    space = tiny(**{"search.steps_per_epoch": 3})
    phase = Spy(space, tmp_path)
    phase.run()
    key = lambda img: hash(img.numpy().tobytes())  # noqa: E731
    weight_imgs = {key(i) for b in seen["weights"] for i in b.x}
    arch_imgs = {key(i) for b in seen["arch"] for i in b.x}
    val_imgs = {key(i) for b in phase.val_maker for i in b.x}
    assert len(seen["arch"]) == 3 and arch_imgs
    assert not arch_imgs & val_imgs  # validation is used for nothing else
    assert not arch_imgs & weight_imgs  # held out from the weights
    ys = [b.y for b in seen["arch"]]
    assert not torch.equal(ys[0], ys[1]) and not torch.equal(ys[1], ys[2])  # fresh draws every step


# ---------------------------------------------------------------- 5. second order


def test_second_order_lookahead_is_the_weight_optimisers_step_and_stays_bounded(tmp_path):
    """The look-ahead is the step Adam itself takes (an SGD step at Adam's learning rate is unbounded): the loss at the look-ahead weights equals the loss after the
    real weight step, and at the paper's learning rate it stays bounded."""
    import copy

    space = tiny(**{"search.second_order": True})
    phase = SearchPhase(space, tmp_path)
    torch.manual_seed(0)
    phase.build()
    maker = phase.weight_batches() if hasattr(phase, "weight_batches") else phase.make_batches("train")
    train_batch = next(iter(maker))
    arch_batch = phase._arch_batch()
    before = float(phase.network_loss(arch_batch)[0].detach())
    saved = copy.deepcopy(phase.model.state_dict()), copy.deepcopy(phase.opt_w.state_dict())
    phase.opt_w.zero_grad(set_to_none=True)
    phase.network_loss(train_batch)[0].backward()
    phase.clip(phase.weights)
    phase.opt_w.step()  # the real weight step
    real = float(phase.network_loss(arch_batch)[0].detach())
    phase.model.load_state_dict(saved[0])
    phase.opt_w.load_state_dict(saved[1])
    phase.opt_w.zero_grad(set_to_none=True)
    after = float(phase._arch_step_second_order(train_batch, arch_batch, False)["arch_loss"])
    assert after == pytest.approx(real, rel=1e-3), (before, after, real)
    assert after < 1.5 * before
    assert all(torch.isfinite(p.grad).all() for p in phase.arch_params if p.grad is not None)
    for w, v in zip(
        phase.weights, [saved[0][k] for k, p in phase.model.named_parameters() if any(p is q for q in phase.weights)]
    ):
        assert torch.equal(w.detach(), v)  # the look-ahead leaves the weights as they were


# ---------------------------------------------------------------- 6. divergence


def _finite_file(path) -> bool:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    tensors = [v for v in payload["model"].values() if v.is_floating_point()]
    return all(torch.isfinite(t).all() for t in tensors)


def test_diverging_search_stops_and_writes_nothing_non_finite(tmp_path):
    """At lr 1e12 the search stops with one line and writes no NaN genotype or checkpoint."""
    from nasfe.engine.checkpoint import list_checkpoints
    from nasfe.errors import DivergenceError

    space = tiny(**{"search.lr": 1.0e12, "search.arch_lr": 1.0e12, "search.steps_per_epoch": 3})
    with pytest.raises(DivergenceError) as err:
        run_search(space, tmp_path)
    msg = str(err.value)
    assert msg.startswith("non-finite") and "search step" in msg and "\n" not in msg
    assert not (tmp_path / "genotype.json").exists()
    assert all(_finite_file(p) for p in list_checkpoints(tmp_path / "checkpoints", "search"))
    good = list_checkpoints(tmp_path / "checkpoints", "search")
    assert (err.value.last_good is None) == (not good)


def test_diverging_retrain_writes_no_model_and_a_nan_model_is_refused(tmp_path):
    from nasfe.engine.checkpoint import load_checkpoint, save_checkpoint
    from nasfe.engine.retrain import run_retrain
    from nasfe.errors import CommandError, DivergenceError
    from nasfe.evaluate.model_io import load_trained
    from tests.conftest import train_tiny_model

    space, genotype, model_pt = train_tiny_model(tmp_path / "ok")
    bad_space = load_space(
        "tiny",
        {
            "retrain.lr": 1.0e12,
            "retrain.epochs": 1,
            "retrain.steps_per_epoch": 3,
            "retrain.batch_size": 4,
            "retrain.val_batches": 1,
        },
    )
    with pytest.raises(DivergenceError, match="^non-finite .* retrain step"):
        run_retrain(bad_space, genotype, tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.pt").exists()
    payload = load_checkpoint(model_pt, required=("model",))
    key = next(k for k, v in payload["model"].items() if v.is_floating_point() and v.numel() > 1)
    payload["model"][key] = payload["model"][key].clone().fill_(float("nan"))
    payload.pop("checkpoint_version")
    save_checkpoint(tmp_path / "nan.pt", payload)
    with pytest.raises(CommandError, match="non-finite") as err:
        load_trained(tmp_path / "nan.pt")
    assert "\n" not in str(err.value) and "nan.pt" in str(err.value)


# ---------------------------------------------------------------- 7. identity, not layout


def test_vggface_identity_embedding_ignores_layout():
    """L_iden compares identity, not layout: a shifted photo of the same face stays close."""
    from nasfe.identity.backbones import build_backbone

    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.25))
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 96, 80, generator=g), 3, 1, 1)
    shifted = torch.roll(x, shifts=(8, 8), dims=(2, 3))
    cos = torch.nn.functional.cosine_similarity(bb.embedding(x), bb.embedding(shifted), dim=1)
    assert (cos > 0.97).all(), cos


def test_identity_loss_with_real_weights_separates_people():
    from nasfe.identity.backbones import MobileFaceNet
    from nasfe.identity.losses import identity_loss

    bb = MobileFaceNet(str(shared_path(*MFN)))
    x, _ = load_celeba_id(n_ids=4, per_id=3)
    probe, refs = x[0::3], torch.stack([x[1::3], x[2::3]], dim=1)
    same = identity_loss(bb, probe, refs).item()
    other = identity_loss(bb, probe, refs.roll(1, dims=0)).item()
    assert same + 0.3 < other


# ---------------------------------------------------------------- host reads


class _HostReads:
    """Counts Tensor -> host reads (item, float, int, bool, tolist, numpy, cpu), skipping the
    optimisers' CPU step counters (Adam keeps them on the host on purpose) and anything while
    ``paused`` (batch making: degradations are drawn on a CPU generator by design)."""

    NAMES = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")

    def __init__(self, skip_ids):
        self.skip_ids = skip_ids
        self.count = 0
        self.saved = {}
        self.paused = False

    def __enter__(self):
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)
            self.saved[name] = orig

            def wrapper(t, *a, __orig=orig, **k):
                if not self.paused and id(t) not in self.skip_ids():
                    self.count += 1
                return __orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc):
        for name, orig in self.saved.items():
            setattr(torch.Tensor, name, orig)


def test_search_steps_read_the_device_once_per_logging_interval(tmp_path):
    """The loss terms are read to the host once per logging interval, not with float() each step."""
    reads = []

    class Counted(SearchPhase):
        counter = None

        def train_step(self, batch):
            opts = list(self.optimizers().values())

            def steps():
                return {id(st["step"]) for o in opts for st in o.state.values() if "step" in st}

            with _HostReads(steps) as self.counter:
                out = super().train_step(batch)
            reads.append(self.counter.count)
            self.counter = None
            return out

        def _arch_batch(self):
            if self.counter is not None:
                self.counter.paused = True
            try:
                return super()._arch_batch()
            finally:
                if self.counter is not None:
                    self.counter.paused = False

    # the default log_every (10) > 4 steps: the only read is the loop's, at the epoch's end
    space = tiny(**{"search.steps_per_epoch": 4, "identity.drop_refs": 0.5})
    Counted(space, tmp_path).run()
    assert reads == [0, 0, 0, 0], reads


def test_step_metrics_are_means_of_the_interval(tmp_path):
    from nasfe.engine.callbacks import Callback

    got = []

    class Rec(Callback):
        def on_step(self, state, metrics):
            got.append((state.step, dict(metrics)))

    run_search(
        tiny(**{"search.steps_per_epoch": 5, "search.log_every": 2, "search.checkpoint_every": 0}),
        tmp_path,
        callbacks=[Rec()],
    )
    assert [s for s, m in got if m] == [2, 4, 5]  # every log_every steps and at the epoch's end
    assert all(isinstance(v, float) for _, m in got for v in m.values())
    assert {"loss", "l2", "arch_loss"} <= set(got[1][1])


def test_meter_sums_on_device_and_reports_first_bad_step():
    from nasfe.engine.meter import StepMeter

    m = StepMeter("cpu")
    m.add({"loss": torch.tensor(1.0)})
    m.watch(1, "loss", torch.tensor(1.0))
    m.add({"loss": torch.tensor(3.0), "arch_loss": torch.tensor(2.0)})
    m.watch(2, "gradient", torch.tensor(float("inf")))
    m.watch(3, "loss", torch.tensor(float("nan")))
    assert m.read([torch.ones(2)]) == ("gradient", 2)
    assert m.interval_means() == {"loss": 2.0, "arch_loss": 2.0}
    m.add({"loss": torch.tensor(5.0)})
    m.read()
    assert m.interval_means() == {"loss": 5.0} and m.epoch_means()["loss"] == 3.0
    fresh = StepMeter("cpu")
    assert fresh.read([torch.tensor([1.0, float("nan")])]) == ("weights", -1)


# ---------------------------------------------------------------- one reference pass


def test_reference_features_computed_once_per_step():
    """The model (I_iden) and the loss (L_iden) share one backbone pass over the references."""
    from nasfe.identity.adain import IdentityInfo
    from nasfe.identity.backbones import build_backbone
    from nasfe.identity.losses import NASFELoss
    from nasfe.model.registry import create_model

    space = tiny()
    bb = build_backbone(IdentityConfig(backbone="vggface", width=0.125))
    bb.pretrained = True  # stand in for real weights, so L_iden is on
    model = create_model(space, identity=IdentityInfo(bb))
    loss = NASFELoss(bb, LossConfig())
    n, k = 2, 2
    calls = []
    bb.net.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    y, x = torch.rand(n, 3, 48, 40), torch.rand(n, 3, 48, 40)
    refs = torch.rand(n, k, 3, 48, 40)
    out = model(y, refs=refs)
    _, parts = loss(out.restored, x, refs)
    assert parts["iden"].item() > 0
    assert calls.count(n * k) == 1, calls  # one pass over the n*k references
    refs2 = torch.rand(n, k, 3, 48, 40)  # a new batch is computed anew
    loss(out.restored.detach(), x, refs2)
    assert calls.count(n * k) == 2


# ---------------------------------------------------------------- Deliver 8: plain-data genotype


def test_genotype_module_imports_no_torch_and_no_model():
    code = (
        "import sys, nasfe.genotype as g; assert g.num_edges(12) == 90 and g.edge_offset(3) == 9;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m.startswith('nasfe.model')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    from nasfe.genotype import edge_offset
    from nasfe.model import cell

    assert cell.edge_offset is edge_offset  # the model reads the numbering from the genotype

"""ONNX and TorchScript export of a trained tiny network: outputs equal PyTorch's within 1e-4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nasfe.cli import main as cli
from nasfe.evaluate.export import (
    ExportError,
    MatmulFFTOp,
    check_deterministic,
    exportable_fft,
    matmul_wiener_deconvolve,
)
from nasfe.evaluate.model_io import load_trained
from nasfe.model.nasfe import NASFEOutput
from nasfe.model.ops import FFTOp, wiener_deconvolve
from conftest import train_tiny_model

H, W = 48, 40


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory):
    """A tiny derived network (with the FFT operator in its cell) trained for one step."""
    return train_tiny_model(tmp_path_factory.mktemp("export_run"), first_op="fft_op")[2]


@pytest.mark.parametrize("shape", [(2, 3, 7, 10), (1, 4, 12, 9), (2, 2, 24, 20)])
def test_matmul_dft_matches_torch_fft(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x1, x2 = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    ref = wiener_deconvolve(x1, x2, 0.01)
    got = matmul_wiener_deconvolve(x1, x2, 0.01)
    assert got.dtype == x1.dtype
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)


def test_fft_swap_is_undone_and_keeps_weights(model_pt):
    model, _, _ = load_trained(model_pt)
    keys = list(model.state_dict())
    n_fft = sum(isinstance(m, FFTOp) for m in model.modules())
    assert n_fft >= 1
    with exportable_fft(model) as swapped:
        assert swapped == n_fft
        assert not any(isinstance(m, FFTOp) for m in model.modules())
        assert sum(isinstance(m, MatmulFFTOp) for m in model.modules()) == n_fft
        assert list(model.state_dict()) == keys  # same parameter names: the same weights are used
    assert sum(isinstance(m, FFTOp) for m in model.modules()) == n_fft
    assert not any(isinstance(m, MatmulFFTOp) for m in model.modules())


def test_onnx_and_torchscript_equal_pytorch(model_pt, tmp_path):
    out = tmp_path / "exp"
    assert cli(["export", str(model_pt), "--out", str(out), "--height", str(H), "--width", str(W)]) == 0
    report = json.loads((out / "export.json").read_text())
    assert report["ok"] and report["fft_ops_swapped"] >= 1
    model, _, _ = load_trained(model_pt)
    y = torch.rand(3, 3, H, W, generator=torch.Generator().manual_seed(5))  # batch 3: the batch axis is dynamic
    with torch.no_grad():
        ref = model(y)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["y"]
    restored, logits = sess.run(None, {"y": y.numpy()})
    assert np.abs(restored - ref.restored.numpy()).max() < 1e-4
    assert np.abs(logits - ref.class_logits.numpy()).max() < 1e-4
    ts = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        t_restored, t_logits = ts(y)
    assert (t_restored - ref.restored).abs().max() < 1e-4
    assert (t_logits - ref.class_logits).abs().max() < 1e-4


def test_onnx_with_reference_input(model_pt, tmp_path):
    out = tmp_path / "exp_refs"
    assert (
        cli(
            [
                "export",
                str(model_pt),
                "--out",
                str(out),
                "--height",
                str(H),
                "--width",
                str(W),
                "--refs",
                "2",
                "--no-torchscript",
            ]
        )
        == 0
    )
    model, _, _ = load_trained(model_pt)
    g = torch.Generator().manual_seed(6)
    y, refs = torch.rand(1, 3, H, W, generator=g), torch.rand(1, 2, 3, H, W, generator=g)
    with torch.no_grad():
        with_refs, without = model(y, refs=refs).restored, model(y).restored
    assert (with_refs - without).abs().max() > 1e-4  # the refs input really matters
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["restored"], {"y": y.numpy(), "refs": refs.numpy()})[0]
    # within the export's tolerance: 1e-4 relative to outputs above 1 (this barely trained net reaches ~10)
    tol = 1e-4 * max(1.0, float(with_refs.abs().max()))
    assert np.abs(got - with_refs.numpy()).max() < tol
    assert np.abs(got - without.numpy()).max() > 100 * tol  # the graph uses the refs it is given
    assert not (out / "model.ts").exists()


def test_random_forward_is_refused():
    class Noisy(torch.nn.Module):
        def forward(self, y, refs=None):
            return NASFEOutput(y + torch.rand_like(y), torch.zeros(len(y), 3))

    with pytest.raises(ExportError, match="not deterministic"):
        check_deterministic(Noisy(), (torch.rand(1, 3, 8, 8),))


def test_bad_arguments_are_one_line_errors(model_pt, tmp_path, capsys):
    assert cli(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.pt" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert cli(["export", str(model_pt), "--out", str(tmp_path / "o"), "--opset", "13"]) == 2
    assert "opset" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert cli(["export", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "junk.pt" in capsys.readouterr().err

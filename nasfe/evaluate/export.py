"""``nasfe export``: a trained network to ONNX (onnxruntime) and TorchScript, checked against PyTorch.

The FFT operator uses ``torch.fft.rfft2``/``irfft2``, which the TorchScript-based ONNX exporter
cannot translate (and the dynamo exporter needs onnxscript). For export, every ``FFTOp`` is swapped
(inside :func:`exportable_fft`, undone on exit) for :class:`MatmulFFTOp`: the same weights, with
the orthonormal 2-D DFT written as real matrix products with precomputed cos/sin matrices for the
feature-map size being traced. The Wiener filter's spectrum is Hermitian, so the real part of the
full inverse DFT equals ``irfft2`` of the half spectrum: the outputs match PyTorch's within float32
rounding. The DFT runs in float64 (ONNX MatMul supports it) because the Wiener division by
``|X2|^2 + eps`` amplifies rounding where the spectrum is small.

Consequences: an exported graph has a fixed height and width (``--height/--width``; the batch
size is dynamic in ONNX), and its size grows with H*H + W*W per FFT resolution. Outputs are
``restored`` (unclamped, like the PyTorch model; clamp to [0, 1] for display) and
``class_logits``. With ``--refs K`` the graph takes a second input ``refs`` (N, K, 3, H, W).
"""

from __future__ import annotations

import io
import logging
import math
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from nasfe.errors import ExportError
from nasfe.imageio import atomic_write_bytes
from nasfe.model.ops import FFTOp
from nasfe.imageio import atomic_write_json
from nasfe.evaluate.model_io import add_model_arguments
from nasfe.errors import CommandError
from nasfe.evaluate.model_io import load_from_args
from nasfe.imageio import ensure_writable_dir

log = logging.getLogger("nasfe.evaluate")

#: outputs of the exported graph must match PyTorch's within this (the issue's requirement)
EXPORT_ATOL = 1e-4
DEFAULT_OPSET = 17


def _dft_mats(n: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of the orthonormal n-point DFT (symmetric n x n float64 matrices)."""
    k = np.arange(n)
    # reduce k*m mod n before the angle: exact integer phases keep float64 error at ~1e-16
    ang = 2.0 * math.pi * ((np.outer(k, k) % n) / n)
    s = 1.0 / math.sqrt(n)
    return np.cos(ang) * s, np.sin(ang) * s


def matmul_wiener_deconvolve(
    x1: torch.Tensor, x2: torch.Tensor, eps: float, mats: Optional[dict] = None
) -> torch.Tensor:
    """``nasfe.model.ops.wiener_deconvolve`` with the DFT as matrix products (exportable).

    With X = F x = (C - iS) x (C - iS) per axis: Re X = Ch x Cw - Sh x Sw,
    Im X = -(Ch x Sw + Sh x Cw); the inverse uses (C + iS) and keeps the real part.
    """
    h, w = int(x1.shape[-2]), int(x1.shape[-1])
    key = (h, w, x1.device)
    cache = mats if mats is not None else {}
    if key not in cache:
        ch, sh = _dft_mats(h)
        cw, sw = _dft_mats(w)
        cache[key] = tuple(torch.from_numpy(m).to(x1.device) for m in (ch, sh, cw, sw))
    ch, sh, cw, sw = cache[key]
    a, b = x1.double(), x2.double()

    def fwd(x):
        xc, xs = x @ cw, x @ sw
        return ch @ xc - sh @ xs, -(ch @ xs + sh @ xc)

    re1, im1 = fwd(a)
    re2, im2 = fwd(b)
    den = re2 * re2 + im2 * im2 + eps
    p = (re2 * re1 + im2 * im1) / den  # Re(conj(X2) X1) / den
    q = (re2 * im1 - im2 * re1) / den  # Im(conj(X2) X1) / den
    out = (ch @ p - sh @ q) @ cw - (ch @ q + sh @ p) @ sw
    return out.to(x1.dtype)


class MatmulFFTOp(nn.Module):
    """An ``FFTOp`` computed with :func:`matmul_wiener_deconvolve`; shares the original's convolutions."""

    def __init__(self, op: FFTOp):
        super().__init__()
        self.conv1, self.conv2, self.out = op.conv1, op.conv2, op.out
        self.c1, self.eps, self.single = op.c1, op.eps, op._single
        self._mats: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = (x, x) if self.single else (x[:, : self.c1], x[:, self.c1 :])
        return self.out(matmul_wiener_deconvolve(self.conv1(a), self.conv2(b), self.eps, self._mats))


@contextmanager
def exportable_fft(model: nn.Module) -> Iterator[int]:
    """Swap every ``FFTOp`` of ``model`` for a :class:`MatmulFFTOp` (same weights); undo on exit.

    Yields the number of operators swapped.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FFTOp):
                setattr(parent, name, MatmulFFTOp(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class ExportWrapper(nn.Module):
    """``(y[, refs]) -> (restored, class_logits)``: the tuple form exporters need."""

    def __init__(self, model: nn.Module, with_refs: bool):
        super().__init__()
        self.model = model
        self.with_refs = with_refs

    def forward(self, y: torch.Tensor, refs: Optional[torch.Tensor] = None):
        out = self.model(y, refs=refs if self.with_refs else None)
        return out.restored, out.class_logits


def example_inputs(height: int, width: int, refs: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the export size: degraded-looking y in [0, 1] (and refs when ``refs`` > 0)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(batch, 3, height, width, generator=g)
    if refs <= 0:
        return (y,)
    return (y, torch.rand(batch, refs, 3, height, width, generator=g))


def check_deterministic(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Two forward passes on the same input must agree exactly: no random operations in forward."""
    with torch.no_grad():
        a = ExportWrapper(model, len(inputs) > 1)(*inputs)
        b = ExportWrapper(model, len(inputs) > 1)(*inputs)
    for x, y in zip(a, b):
        if not torch.equal(x, y):
            raise ExportError(
                "the network's forward is not deterministic in eval mode (random operations "
                f"inside forward?): two runs differ by {float((x - y).abs().max()):.3g}"
            )


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


#: largest export input side (the largest face side a space may have, nasfe.config.MAX_SIDE)
MAX_EXPORT_SIDE = 4096


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    height: int,
    width: int,
    refs: int = 0,
    opset: int = DEFAULT_OPSET,
    onnx: bool = True,
    torchscript: bool = True,
    atol: float = EXPORT_ATOL,
    check_batch: int = 2,
) -> dict[str, Any]:
    """Export ``model.onnx`` and/or ``model.ts``, check them against PyTorch, then write them to ``out_dir``.

    The reference is the unmodified PyTorch model (``torch.fft``) on seeded inputs of batch
    ``check_batch``. Both exports are checked in memory; the files (and ``export.json``) are
    written only when every difference is within ``atol``, so a failed export leaves no file.
    Returns a report (paths, max abs differences, seconds); raises :class:`ExportError` when a
    difference exceeds ``atol``.
    """
    if not (8 <= height <= MAX_EXPORT_SIDE and 8 <= width <= MAX_EXPORT_SIDE):
        raise ExportError(f"--height/--width must lie in [8, {MAX_EXPORT_SIDE}], got {height}x{width}")
    if not (math.isfinite(atol) and atol > 0):
        raise ExportError(f"--atol must be a positive number, got {atol}")
    if opset < 17:
        raise ExportError(f"--opset must be >= 17, got {opset}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    trace_in = example_inputs(height, width, refs, batch=1, seed=0)
    check_in = example_inputs(height, width, refs, batch=check_batch, seed=1)
    check_deterministic(model, check_in)
    with torch.no_grad():
        ref_restored, ref_logits = ExportWrapper(model, refs > 0)(*check_in)
    report: dict[str, Any] = {
        "height": height,
        "width": width,
        "refs": refs,
        "opset": opset,
        "atol": atol,
        "outputs": ["restored", "class_logits"],
        "inputs": ["y"] + (["refs"] if refs > 0 else []),
    }
    wrapper = ExportWrapper(model, refs > 0).eval()
    with exportable_fft(model) as n_fft, torch.no_grad(), warnings.catch_warnings():
        # shape checks in forward become constants of the fixed-size graph: expected, not news
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        report["fft_ops_swapped"] = n_fft
        # the swap itself must not change the numbers (checked in eager mode before exporting)
        swapped = wrapper(*check_in)
        report["matmul_fft_max_abs_diff"] = max(_max_diff(swapped[0], ref_restored), _max_diff(swapped[1], ref_logits))
        files: dict[Path, bytes] = {}  # written only once every check passed: a failed export leaves no file
        if onnx:
            data, part = _export_onnx(
                wrapper, trace_in, check_in, (ref_restored, ref_logits), out_dir / "model.onnx", opset
            )
            files[out_dir / "model.onnx"] = data
            report.update(part)
        if torchscript:
            data, part = _export_torchscript(
                wrapper, trace_in, check_in, (ref_restored, ref_logits), out_dir / "model.ts"
            )
            files[out_dir / "model.ts"] = data
            report.update(part)
    # fp32 rounding grows with the values: the tolerance is relative to outputs larger than 1 (an
    # unclamped restored image of a barely trained network can reach 10 or more)
    limit = atol * max(1.0, float(ref_restored.abs().max()), float(ref_logits.abs().max()))
    report["tolerance"] = limit
    bad = {k: v for k, v in report.items() if k.endswith("max_abs_diff") and not v <= limit}
    report["ok"] = not bad
    if bad:
        raise ExportError(
            f"{out_dir}: exported outputs differ from PyTorch's by more than {limit:.3g}: "
            + ", ".join(f"{k}={v:.3g}" for k, v in bad.items())
            + "; nothing written"
        )

    for path, data in files.items():
        atomic_write_bytes(path, data)
    atomic_write_json(out_dir / "export.json", report)
    return report


def _export_onnx(wrapper, trace_in, check_in, ref, path: Path, opset: int) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed; `pip install onnxruntime` or pass --no-onnx") from None
    names = ["y"] + (["refs"] if len(trace_in) > 1 else [])
    axes = {n: {0: "batch"} for n in names + ["restored", "class_logits"]}
    t0 = time.time()
    buf = io.BytesIO()  # in memory, then an atomic write: a full disk is one line, never a half file
    try:
        torch.onnx.export(
            wrapper,
            trace_in,
            buf,
            input_names=names,
            output_names=["restored", "class_logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    except Exception as exc:  # the exporter raises many types; the user needs one line
        raise ExportError(f"{path}: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    data = buf.getvalue()
    seconds = time.time() - t0
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])  # checked in memory, written after
    got = sess.run(None, {n: t.numpy() for n, t in zip(names, check_in)})
    return data, {
        "onnx": str(path),
        "onnx_seconds": round(seconds, 2),
        "onnx_bytes": len(data),
        "onnx_restored_max_abs_diff": _max_diff(got[0], ref[0]),
        "onnx_logits_max_abs_diff": _max_diff(got[1], ref[1]),
    }


def _export_torchscript(wrapper, trace_in, check_in, ref, path: Path) -> dict[str, Any]:
    t0 = time.time()
    buf = io.BytesIO()  # torch.jit.save aborts the process on a full disk when given a path
    try:
        traced = torch.jit.trace(wrapper, trace_in, check_trace=False)
        torch.jit.save(traced, buf)
    except Exception as exc:
        raise ExportError(
            f"{path}: TorchScript trace failed ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    data = buf.getvalue()
    seconds = time.time() - t0
    loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")  # checked in memory, written after
    with torch.no_grad():
        got = loaded(*check_in)
    return data, {
        "torchscript": str(path),
        "torchscript_seconds": round(seconds, 2),
        "torchscript_restored_max_abs_diff": _max_diff(got[0], ref[0]),
        "torchscript_logits_max_abs_diff": _max_diff(got[1], ref[1]),
    }


# ---- command ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Arguments of ``nasfe export``."""

    add_model_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder for model.onnx, model.ts and export.json")
    parser.add_argument("--height", type=int, default=None, help="input height (default: the space's data.height)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: the space's data.width)")
    parser.add_argument(
        "--refs",
        type=int,
        default=0,
        help="K > 0 adds a 'refs' input of K reference photos (default 0: restore without refs)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= 17, default {DEFAULT_OPSET})")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX file")
    parser.add_argument("--no-torchscript", action="store_true", help="skip the TorchScript file")
    parser.add_argument("--atol", type=float, default=EXPORT_ATOL, help="allowed max abs difference to PyTorch")


def main(args) -> int:
    """``nasfe export``: returns 0 when every exported file matches PyTorch within --atol."""

    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and not 8 <= value <= MAX_EXPORT_SIDE:
            raise CommandError(
                f"{flag} {value}: must lie in [8, {MAX_EXPORT_SIDE}] (or leave it out: the space's size)"
            )
    if not (math.isfinite(args.atol) and args.atol > 0):
        raise CommandError(f"--atol {args.atol}: must be a positive number")
    ensure_writable_dir(args.out)
    model, space, _ = load_from_args(args, "cpu")
    h = args.height if args.height is not None else space.data.height
    w = args.width if args.width is not None else space.data.width
    if args.refs < 0:
        raise CommandError(f"--refs must be >= 0, got {args.refs}")
    if args.refs > 0 and not space.model.use_identity:
        raise CommandError("--refs: this network does not use identity information (model.use_identity: false)")
    if args.no_onnx and args.no_torchscript:
        raise CommandError("--no-onnx and --no-torchscript together leave nothing to export")
    try:
        report = export_model(
            model,
            args.out,
            h,
            w,
            refs=args.refs,
            opset=args.opset,
            onnx=not args.no_onnx,
            torchscript=not args.no_torchscript,
            atol=args.atol,
        )
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    for k in ("onnx", "torchscript"):
        if k in report:
            print(
                f"{k}: {report[k]}  (max |diff| to PyTorch: restored "
                f"{report[f'{k}_restored_max_abs_diff']:.2e}, logits {report[f'{k}_logits_max_abs_diff']:.2e})"
            )
    print(
        f"input {h}x{w}, {report['fft_ops_swapped']} FFT operator(s) exported as DFT matrix products; "
        f"report: {Path(args.out) / 'export.json'}"
    )
    return 0

"""The batched image-formation model y = r * (k conv x) + n, in torch, on any device.

Order of operations (paper sections 3 and 4, after CBDNet and ELD), per sample:

1. blur: x_b = k conv x (per-sample kernel, FFT convolution with reflect padding), skipped when
   kernel_id = -1;
2. camera, only when the sample has noise or low light (blur-only samples stop at step 1):
   L = M(f^-1(x_b)) (irradiance through the inverse response curve, then RGGB Bayer mosaic);
   L = r * L (low light); L = L + sqrt(L sigma_s^2 + sigma_c^2) * eps (heteroscedastic Gaussian
   approximation of Poisson-Gaussian noise, eps ~ N(0, 1)); clip to [0, 1] (a sensor reads no
   negative light and saturates); Malvar-He-Cutler demosaic (as CBDNet's synthesis), clip;
   y = f(.) back through the response curve.

Under low light the paper's wording allows several orders of r and the noise; ``noise_model``
(``NOISE_MODELS``) picks one, 'after-r' (the above) by default; docs/DEGRADATION.md measures them.

Random numbers (parameters and the noise field) are drawn on a CPU ``torch.Generator`` and moved
to the images' device, so CPU and GPU give the same degradation for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from nasfe.config import NOISE_MODELS
from nasfe.degrade.camera import ResponseCurves, demosaic_subgrids, interp_tables, mosaic
from nasfe.degrade.kernels import KernelBank
from nasfe.registry import DEGRADATIONS

#: Readings of "multiply r to L ... finally add noise of variance L sigma_s^2 + sigma_c^2" under low light:
#: 'after-r' (default): L = r f^-1(x); noise variance r L sigma_s^2 + sigma_c^2 (noise of the light that arrives);
#: 'scene-variance': L = r f^-1(x); variance f^-1(x) sigma_s^2 + sigma_c^2 (from the irradiance before r);
#: 'before-r': noise added to the irradiance before r, then scaled by r (std proportional to r:
#:   sigma relative to the darkened signal), clip to [0, r];
#: 'display-r': Eq. 1 literally: r multiplies the sRGB image (y = r (k*x) + n), then the camera
#:   noise stage as for r = 1.


@dataclass
class DegradeParams:
    """Per-sample degradation parameters of a batch (all CPU tensors of length N).

    kernel_ids: int64, -1 = no blur; r: float, 1.0 = no low light; sigma_s, sigma_c: float,
    both 0 = no noise; crf_ids: int64, the response curve used (-1 when the camera stage is
    skipped); kernel_kinds: 'motion' | 'gaussian' | 'none' per sample (None when unknown);
    extra: the columns of registered degradations beyond these (name -> tensor of length N).
    """

    kernel_ids: torch.Tensor
    r: torch.Tensor
    sigma_s: torch.Tensor
    sigma_c: torch.Tensor
    crf_ids: torch.Tensor
    kernel_kinds: Optional[list[str]] = field(default=None)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.kernel_ids.shape[0])

    @classmethod
    def explicit(
        cls,
        kernel_ids: Sequence[int],
        r: Sequence[float],
        sigma_s: Sequence[float],
        sigma_c: Sequence[float],
        crf_ids: Sequence[int],
        bank: Optional[KernelBank] = None,
    ) -> "DegradeParams":
        """Parameters given one per sample (test-set grids). ``bank`` (optional) fills in kernel kinds."""
        cols = {"kernel_ids": kernel_ids, "r": r, "sigma_s": sigma_s, "sigma_c": sigma_c, "crf_ids": crf_ids}
        lens = {k: len(v) for k, v in cols.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"DegradeParams.explicit: all columns need the same length, got {lens}")
        p = cls(
            torch.as_tensor(list(kernel_ids), dtype=torch.int64),
            torch.as_tensor(list(r), dtype=torch.float32),
            torch.as_tensor(list(sigma_s), dtype=torch.float32),
            torch.as_tensor(list(sigma_c), dtype=torch.float32),
            torch.as_tensor(list(crf_ids), dtype=torch.int64),
        )
        p.validate(bank)
        if bank is not None:
            p.kernel_kinds = [bank.kinds[i] if i >= 0 else "none" for i in p.kernel_ids.tolist()]
        return p

    def validate(self, bank: Optional[KernelBank] = None, curves: Optional[ResponseCurves] = None) -> None:
        """Raise ValueError naming the field when a value is out of range."""
        if torch.any(self.r <= 0) or torch.any(self.r > 1):
            raise ValueError(f"DegradeParams.r must lie in (0, 1], got {self.r.tolist()}")
        if torch.any(self.sigma_s < 0) or torch.any(self.sigma_c < 0):
            raise ValueError("DegradeParams.sigma_s and sigma_c must be >= 0")
        if bank is not None and torch.any(self.kernel_ids >= len(bank)):
            raise ValueError(f"DegradeParams.kernel_ids: id >= bank size {len(bank)}")
        if torch.any(self.kernel_ids < -1):
            raise ValueError("DegradeParams.kernel_ids must be >= -1")
        if curves is not None and torch.any(self.crf_ids >= curves.count):
            raise ValueError(f"DegradeParams.crf_ids: id >= number of curves {curves.count}")

    def has_blur(self) -> torch.Tensor:
        return self.kernel_ids >= 0

    def has_noise(self) -> torch.Tensor:
        return (self.sigma_s > 0) | (self.sigma_c > 0)

    def has_lowlight(self) -> torch.Tensor:
        return self.r < 1.0

    def uses_camera(self) -> torch.Tensor:
        """Samples that go through the camera stage (noise or low light)."""
        return self.has_noise() | self.has_lowlight()

    def column(self, name: str) -> torch.Tensor:
        """The parameter column ``name``: a field above or a registered degradation's extra column."""
        return self.extra[name] if name in self.extra else getattr(self, name)

    def labels(self) -> torch.Tensor:
        """(N, K) float class labels, one column per registered degradation in registration order:
        c = (b, n, l) for the built-in blur, noise and low light; 1 where it is present."""
        return torch.stack([d.present(self) for d in DEGRADATIONS.values()], 1).float()

    def subset(self, rows) -> "DegradeParams":
        """The parameters of some samples: ``rows`` is a slice or a sequence of indices."""
        idx = list(range(len(self)))[rows] if isinstance(rows, slice) else [int(i) for i in rows]
        t = torch.as_tensor(idx, dtype=torch.int64)
        kinds = None if self.kernel_kinds is None else [self.kernel_kinds[i] for i in idx]
        return DegradeParams(
            self.kernel_ids[t],
            self.r[t],
            self.sigma_s[t],
            self.sigma_c[t],
            self.crf_ids[t],
            kinds,
            {k: v[t] for k, v in self.extra.items()},
        )

    def records(self) -> list[dict]:
        """One plain dict per sample: kernel_id, kernel_kind, r, sigma_s, sigma_c, crf_id, the extra
        columns, c."""
        c = self.labels().int().tolist()
        kinds: Sequence[Optional[str]] = self.kernel_kinds or [
            None if k >= 0 else "none" for k in self.kernel_ids.tolist()
        ]
        extra = (
            [dict(zip(self.extra, vals)) for vals in zip(*(v.tolist() for v in self.extra.values()))]
            if self.extra
            else [{}] * len(self)
        )
        return [
            {
                "kernel_id": int(k),
                "kernel_kind": kind,
                "r": float(r),
                "sigma_s": float(s),
                "sigma_c": float(n),
                "crf_id": int(f),
                **e,
                "c": ci,
            }
            for k, kind, r, s, n, f, e, ci in zip(
                self.kernel_ids.tolist(),
                kinds,
                self.r.tolist(),
                self.sigma_s.tolist(),
                self.sigma_c.tolist(),
                self.crf_ids.tolist(),
                extra,
                c,
            )
        ]


@dataclass
class DegradeContext:
    """What a stage needs besides the images and their parameters: the kernel bank, the response
    curves, the sensor noise field of these rows (N, 1, H, W) or None, the noise model, and a CPU
    generator for stages that draw at apply time (None when degrading with explicit parameters)."""

    bank: Optional[KernelBank]
    curves: Optional[ResponseCurves]
    noise: Optional[torch.Tensor] = None
    noise_model: str = "after-r"
    generator: Optional[torch.Generator] = None

    def rows(self, idx: torch.Tensor) -> "DegradeContext":
        """The context of the rows ``idx`` (int64 CPU indices) of this one."""
        return replace(self, noise=None if self.noise is None else self.noise[idx.to(self.noise.device)])

    def need_bank(self) -> KernelBank:
        """The kernel bank, for the blur stage."""
        if self.bank is None:
            raise ValueError("the blur stage needs a kernel bank; none was given")
        return self.bank

    def need_curves(self) -> ResponseCurves:
        """The response curves, for the camera stage."""
        if self.curves is None:
            raise ValueError("the camera stage needs response curves; none were given")
        return self.curves

    def need_noise(self) -> torch.Tensor:
        """The sensor noise field of these rows, for the camera stage."""
        if self.noise is None:
            raise ValueError("the camera stage needs the sensor noise field; none was given")
        return self.noise


@dataclass(frozen=True)
class Stage:
    """One step of the image-formation model, applied to the samples that need it.

    ``columns``: the parameter columns it reads, each with its neutral value (the value of a
    sample the stage leaves alone). ``sample(n, cfg, ctx, generator)`` draws every column for n
    samples, whatever is present (so the random stream does not depend on outcomes).
    ``apply(x, params, ctx, out=None)`` degrades the rows ``x`` (n, 3, H, W) given their params;
    ``in_range``: its output already lies in [0, 1] (then it may write into ``out``; otherwise the
    pipeline clamps). Stages run in the order their first degradation was registered.
    """

    name: str
    columns: dict[str, float]
    sample: Callable[..., dict[str, torch.Tensor]]
    apply: Callable[..., torch.Tensor]
    in_range: bool = False


@dataclass(frozen=True)
class Degradation:
    """A degradation: a class label of CN, present in a training sample with ``probability(cfg)``,
    realised by ``stage`` through the stage columns it owns (``columns``; neutral when absent).
    ``present(params)`` (default: any owned column differs from its neutral value) is its label."""

    name: str
    stage: Stage
    columns: tuple[str, ...]
    probability: Callable[..., float]
    present_fn: Optional[Callable[[DegradeParams], torch.Tensor]] = None

    def present(self, params: DegradeParams) -> torch.Tensor:
        """(N,) bool: the samples of ``params`` that have this degradation."""
        if self.present_fn is not None:
            return self.present_fn(params)
        out = torch.zeros(len(params), dtype=torch.bool)
        for c in self.columns:
            if c in params.extra or hasattr(params, c):  # parameters given without the column: absent
                out |= params.column(c) != self.stage.columns[c]
        return out


def register_degradation(
    name: str,
    stage: Stage,
    columns: Sequence[str],
    probability: Callable[..., float],
    present: Optional[Callable[[DegradeParams], torch.Tensor]] = None,
) -> Degradation:
    """Add a degradation (a class label, a column of ``DegradeParams.labels``, one more CN output).

    ``stage``: a new :class:`Stage` of its own, or the stage of a registered degradation (noise and
    low light share the camera); ``columns``: the stage columns it owns; ``probability(cfg)``: how
    often a training sample has it (``cfg``: the DegradeConfig). Columns that are not fields of
    :class:`DegradeParams` travel in ``DegradeParams.extra``.
    """
    missing = [c for c in columns if c not in stage.columns]
    if missing:
        raise ValueError(f"degradation {name!r}: column(s) {missing} are not columns of stage {stage.name!r}")
    return DEGRADATIONS.register(name, Degradation(name, stage, tuple(columns), probability, present))


def degradation_stages() -> list[Stage]:
    """The stages of the registered degradations, in the order they run."""
    stages: list[Stage] = []
    for d in DEGRADATIONS.values():
        if all(d.stage is not s for s in stages):
            stages.append(d.stage)
    return stages


def stage_rows(stage: Stage, params: DegradeParams) -> torch.Tensor:
    """(N,) bool: the samples that go through ``stage`` (any of its degradations present)."""
    rows = torch.zeros(len(params), dtype=torch.bool)
    for d in DEGRADATIONS.values():
        if d.stage is stage:
            rows |= d.present(params)
    return rows


def _uniform(n: int, lo_hi: Sequence[float], g: torch.Generator) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand(n, generator=g)


def sample_params(n: int, cfg, bank: KernelBank, curves: ResponseCurves, generator: torch.Generator) -> DegradeParams:
    """Draw training parameters for ``n`` samples from a :class:`~nasfe.config.DegradeConfig`.

    Each registered degradation is present independently with its probability (p_blur / p_noise /
    p_lowlight for the built-in ones); a sample that drew none gets one of them, chosen uniformly
    (every training input is degraded). Then each stage draws its columns (kernel ids uniform over
    the bank; r, sigma_s, sigma_c uniform over their ranges and the response curve uniform over
    ``curves``), and absent degradations get their neutral values. The number of draws does not
    depend on the outcomes, so the stream stays aligned.
    """
    g = generator
    degs = list(DEGRADATIONS.values())
    ctx = DegradeContext(bank, curves, generator=g)
    u = torch.rand(n, len(degs), generator=g)
    present = u < torch.tensor([float(d.probability(cfg)) for d in degs])
    forced = torch.randint(0, len(degs), (n,), generator=g)
    none = ~present.any(1)
    present[none, forced[none]] = True
    cols: dict[str, torch.Tensor] = {}
    for stage in degradation_stages():
        drawn = stage.sample(n, cfg, ctx, g)
        used = torch.zeros(n, dtype=torch.bool)
        owned: set[str] = set()
        for i, d in enumerate(degs):
            if d.stage is stage:
                used |= present[:, i]
                owned.update(d.columns)
                for c in d.columns:
                    drawn[c] = torch.where(present[:, i], drawn[c], torch.full_like(drawn[c], stage.columns[c]))
        for c in stage.columns:
            if c not in owned:  # a column of the stage itself (the response curve): neutral when unused
                drawn[c] = torch.where(used, drawn[c], torch.full_like(drawn[c], stage.columns[c]))
        cols.update(drawn)
    kernel_ids = cols.pop("kernel_ids")
    kinds = [bank.kinds[i] if i >= 0 else "none" for i in kernel_ids.tolist()]
    return DegradeParams(
        kernel_ids, cols.pop("r"), cols.pop("sigma_s"), cols.pop("sigma_c"), cols.pop("crf_ids"), kinds, cols
    )


def _fft_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 1


def blur(x: torch.Tensor, kernels: torch.Tensor, mode: str = "centred") -> torch.Tensor:
    """Convolve sample i of ``x`` (N, C, H, W) with ``kernels[i]`` (N, S, S), S odd; reflect padding.

    ``mode`` 'paper-compatible' (a bank built in that mode) blurs as DeblurGAN's ``blur_image``,
    the generator the paper cites: zero padding ('same' convolution) and the blurred image
    min-max rescaled to [0, 1] (over all its channels), which makes the kernel's scale irrelevant.

    True convolution (not correlation), done in the Fourier domain on the reflect-padded image,
    padded on to FFT-friendly sizes. The kernel spectrum comes straight from the small S x S kernel
    (no full-size zero kernel), with the kernel at the origin instead of centred: that only shifts the
    result by S//2, which the crop absorbs. The kept outputs read padded rows/columns
    [0, H + 2p) only, so what fills the rest up to the FFT size does not matter: the reflect
    padding simply goes on (one copy of the batch instead of a reflect pad plus a zero pad).
    Returns a view (not contiguous).
    """
    n, c, h, w = x.shape
    s = kernels.shape[-1]
    p = s // 2
    if p >= h or p >= w:
        raise ValueError(f"blur: image {h}x{w} too small for reflect padding of a {s}x{s} kernel")
    hp, wp = _fft_size(h + 2 * p), _fft_size(w + 2 * p)
    if mode == "paper-compatible":
        spec = torch.fft.rfft2(F.pad(x, (p, wp - w - p, p, hp - h - p)))  # zeros around the image
    elif hp - h - p < h and wp - w - p < w:
        spec = torch.fft.rfft2(F.pad(x, (p, wp - w - p, p, hp - h - p), mode="reflect"))
    else:  # tiny images: reflect cannot reach that far, zero-pad the rest (inside rfft2)
        spec = torch.fft.rfft2(F.pad(x, (p, p, p, p), mode="reflect"), s=(hp, wp))
    # The kernel's spectrum: only its S rows are non-zero, so the row transforms run on S rows
    # (not on hp) before the column transforms (same values as rfft2 with s=).
    k = torch.fft.rfft(kernels.to(x.device, x.dtype), n=wp, dim=-1)
    spec.mul_(torch.fft.fft(k, n=hp, dim=-2).unsqueeze(1))
    # Inverse: columns first, then the row transforms only on the h rows that are kept.
    z = torch.fft.ifft(spec, dim=-2)[..., 2 * p : 2 * p + h, :]
    y = torch.fft.irfft(z, n=wp, dim=-1)[..., 2 * p : 2 * p + w]
    if mode == "paper-compatible":
        flat = y.reshape(n, -1)
        lo, hi = flat.min(1)[0].view(-1, 1, 1, 1), flat.max(1)[0].view(-1, 1, 1, 1)
        y = (y - lo) / (hi - lo).clamp_min(1e-12)
    return y


def noise_terms(
    noise_model: str, r: torch.Tensor, sigma_s: torch.Tensor, sigma_c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-sample (a, b, top) such that the noisy mosaic is clip(L + sqrt(a L + b) eps, 0, top), with
    L the darkened irradiance r f^-1(x) ('display-r': f^-1(r x)); ``top`` None means 1."""
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"noise model must be one of {NOISE_MODELS}, got {noise_model!r}")
    a, b = sigma_s.square(), sigma_c.square()
    if noise_model == "scene-variance":  # (L / r) sigma_s^2: the variance of the undarkened scene
        return a / r, b, None
    if noise_model == "before-r":  # r (L0 + n(L0)) with L0 = L / r: variance r^2 (L0 a + b)
        return a * r, b * r.square(), r
    return a, b, None


def camera(
    x: torch.Tensor,
    r: torch.Tensor,
    sigma_s: torch.Tensor,
    sigma_c: torch.Tensor,
    crf_ids: torch.Tensor,
    curves: ResponseCurves,
    eps: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    noise_model: str = "after-r",
) -> torch.Tensor:
    """The camera stage: f^-1, mosaic, low light r, Poisson-Gaussian noise, clip, demosaic, f.

    ``r``, ``sigma_s``, ``sigma_c``, ``crf_ids`` are (N,); ``eps`` is a standard normal field (N, 1, H, W).
    Everything up to the demosaic runs on the one-channel mosaic; ``x`` may be any view. ``out``
    (N, 3, H, W), when given, receives the result (and is returned). ``noise_model``: one of
    ``NOISE_MODELS`` (where r acts and which variance the noise gets under low light).
    """
    dev, dt = x.device, x.dtype
    n, _, h, w = x.shape
    shape = (-1, 1, 1, 1)
    k = curves.forward.shape[1]
    var_s, var_c, top = noise_terms(noise_model, r.float(), sigma_s.float(), sigma_c.float())
    # The curve acts per pixel and the mosaic keeps one value per pixel, so f^-1 is applied after
    # the mosaic (one channel instead of three): M(f^-1(x)) = f^-1(M(x)). r is folded into the
    # f^-1 tables (r f^-1(v) is again a table lookup), so L = r M(f^-1(x)) costs one lookup.
    t = mosaic(x).clamp_(0.0, 1.0)
    if noise_model == "display-r":  # r darkens the sRGB image before the camera stage
        inv, inv_slope = curves.lookup_tables(crf_ids, inverse=True, device=dev)
        t.mul_(r.to(dev, dt).view(shape) * (k - 1))
    else:
        inv, inv_slope = curves.lookup_tables(crf_ids, inverse=True, scale=r, device=dev)
        t.mul_(k - 1)
    raw = interp_tables(t, inv, inv_slope)
    # Noise: L + sqrt(a L + b) eps, in place on the mosaic.
    std = raw * var_s.to(dev, dt).view(shape)
    std.add_(var_c.to(dev, dt).view(shape)).sqrt_().mul_(eps.to(dev, dt))
    raw.add_(std).clamp_(0.0, 1.0)
    if top is not None:
        raw = torch.minimum(raw, top.to(dev, dt).view(shape))
    # Demosaic straight into table units of f (the factor K-1 rides in the conv weights), clip (the
    # demosaic's negative lobes can leave [0, 1]), then f and one pixel_shuffle back to RGB: no
    # separate pass for scaling or clamping the RGB image.
    fwd, fwd_slope = curves.lookup_tables(crf_ids, device=dev)
    t = demosaic_subgrids(raw, scale=k - 1).clamp_(0.0, k - 1)
    if out is not None and h % 2 == 0 and w % 2 == 0 and out.is_contiguous():
        # Even sizes: shuffle the table coordinates instead of the result, so the lookup writes
        # straight into ``out`` (one copy less).
        return interp_tables(F.pixel_shuffle(t, 2), fwd, fwd_slope, out=out)
    y = F.pixel_shuffle(interp_tables(t, fwd, fwd_slope), 2)[..., :h, :w]
    return y if out is None else out.copy_(y)


#: On CPU a batch is degraded a few images at a time: every stage is a pass over memory, and
#: chunks of about this many pixels keep the intermediates in cache (measured: about 1.4x faster
#: than the whole batch of 40 at 176x144 on 2 cores; docs/BENCHMARKS.md). GPUs take the whole batch.
CPU_CHUNK_PIXELS = 256_000


def degrade(
    x: torch.Tensor,
    params: DegradeParams,
    bank: Optional[KernelBank],
    curves: ResponseCurves,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    chunk: Optional[int] = None,
    noise_model: str = "after-r",
) -> torch.Tensor:
    """Degrade a batch ``x`` (N, 3, H, W) in [0, 1] with per-sample ``params``; returns y, same shape, in [0, 1].

    ``noise``: the standard normal field eps (N, 1, H, W) of the Bayer sensor; when None it is
    drawn from ``generator`` (a CPU generator, float32; required then if any sample is noisy) and
    moved to x's device. Passing it explicitly makes a degradation reproducible per image.
    ``chunk``: images per pass (default: about ``CPU_CHUNK_PIXELS`` pixels on CPU, the whole batch
    on other devices); the result does not depend on it. ``noise_model``: one of ``NOISE_MODELS``
    (default 'after-r'; the others only differ where r < 1).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"degrade: expected x of shape (N, 3, H, W), got {tuple(x.shape)}")
    n, _, h, w = x.shape
    if len(params) != n:
        raise ValueError(f"degrade: {len(params)} parameter rows for a batch of {n}")
    if noise_model not in NOISE_MODELS:
        raise ValueError(f"degrade: noise_model must be one of {NOISE_MODELS}, got {noise_model!r}")
    params.validate(bank, curves)
    cam = params.uses_camera()
    if params.has_blur().any() and bank is None:
        raise ValueError("degrade: samples ask for blur but no kernel bank was given")
    if cam.any():
        if torch.any(params.crf_ids[cam] < 0):
            raise ValueError("degrade: samples with noise or low light need a response curve (crf_id >= 0)")
        if noise is None:
            if params.has_noise().any():
                if generator is None:
                    raise ValueError("degrade: a generator (or an explicit noise field) is needed for noisy samples")
                noise = torch.randn(n, 1, h, w, generator=generator, dtype=torch.float32)
            else:
                noise = torch.zeros(n, 1, h, w)  # low light only: the noise field is multiplied by 0
        if noise.shape != (n, 1, h, w):
            raise ValueError(f"degrade: noise must have shape {(n, 1, h, w)}, got {tuple(noise.shape)}")
    if chunk is None:
        chunk = max(1, CPU_CHUNK_PIXELS // (h * w)) if x.device.type == "cpu" else n
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for i in range(0, n, chunk):
        rows = slice(i, min(i + chunk, n))
        _degrade_rows(
            x[rows],
            params.subset(rows) if chunk < n else params,
            bank,
            curves,
            None if noise is None else noise[rows],
            out[rows],
            noise_model,
            generator,
        )
    return out


def _degrade_rows(
    x: torch.Tensor,
    params: DegradeParams,
    bank: Optional[KernelBank],
    curves: ResponseCurves,
    noise: Optional[torch.Tensor],
    out: torch.Tensor,
    noise_model: str = "after-r",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The body of :func:`degrade` on validated inputs (``noise`` given when any sample uses the
    camera), written into ``out`` (contiguous, x's shape): each stage in turn on its samples."""
    ctx = DegradeContext(bank, curves, noise, noise_model, generator)
    active = [(stage, rows) for stage in degradation_stages() if (rows := stage_rows(stage, params)).any()]
    # Whole-batch fast paths (every sample through a stage, as in the benchmark and in most
    # training batches) avoid index copies; mixed batches use index_put.
    y = x
    for i, (stage, rows) in enumerate(active):
        writes_out = i == len(active) - 1 and stage.in_range  # the last stage writes the result
        if bool(rows.all()):
            if writes_out:
                return stage.apply(y, params, ctx, out=out)
            y = stage.apply(y, params, ctx)
            continue
        idx = rows.nonzero().squeeze(1)
        di = idx.to(x.device)
        if writes_out:
            torch.clamp(y, 0.0, 1.0, out=out)  # rows it skips: an earlier stage's output may leave [0, 1] by rounding
            out[di] = stage.apply(y[di], params.subset(idx), ctx.rows(idx))
            return out
        y = y.clone()
        y[di] = stage.apply(y[di], params.subset(idx), ctx.rows(idx))
    torch.clamp(y, 0.0, 1.0, out=out)  # blur output may leave [0, 1] by float rounding
    return out


def _sample_blur(n: int, cfg, ctx: DegradeContext, g: torch.Generator) -> dict[str, torch.Tensor]:
    bank = ctx.need_bank()
    if len(bank) == 0 and cfg.p_blur > 0:
        raise ValueError("sample_params: the kernel bank is empty but p_blur > 0")
    return {"kernel_ids": torch.randint(0, max(len(bank), 1), (n,), generator=g)}


def _apply_blur(x: torch.Tensor, params: DegradeParams, ctx: DegradeContext, out=None) -> torch.Tensor:
    bank = ctx.need_bank()
    return blur(x, bank.kernels[params.kernel_ids], bank.mode)


def _sample_camera(n: int, cfg, ctx: DegradeContext, g: torch.Generator) -> dict[str, torch.Tensor]:
    cols = {"r": _uniform(n, cfg.r_range, g), "sigma_s": _uniform(n, cfg.sigma_s_range, g)}
    cols["sigma_c"] = _uniform(n, cfg.sigma_c_range, g)
    cols["crf_ids"] = torch.randint(0, ctx.need_curves().count, (n,), generator=g)
    return cols


def _apply_camera(x: torch.Tensor, params: DegradeParams, ctx: DegradeContext, out=None) -> torch.Tensor:
    return camera(
        x,
        params.r,
        params.sigma_s,
        params.sigma_c,
        params.crf_ids,
        ctx.need_curves(),
        ctx.need_noise(),
        out=out,
        noise_model=ctx.noise_model,
    )


#: The blur stage: x_b = k conv x with the sample's bank kernel.
BLUR_STAGE = Stage("blur", {"kernel_ids": -1}, _sample_blur, _apply_blur)
#: The camera stage: response curve, mosaic, low light r, sensor noise, demosaic (clipped to [0, 1]).
CAMERA_STAGE = Stage(
    "camera", {"r": 1.0, "sigma_s": 0.0, "sigma_c": 0.0, "crf_ids": -1}, _sample_camera, _apply_camera, in_range=True
)

register_degradation("blur", BLUR_STAGE, ["kernel_ids"], lambda cfg: cfg.p_blur, DegradeParams.has_blur)
register_degradation("noise", CAMERA_STAGE, ["sigma_s", "sigma_c"], lambda cfg: cfg.p_noise, DegradeParams.has_noise)
register_degradation("lowlight", CAMERA_STAGE, ["r"], lambda cfg: cfg.p_lowlight, DegradeParams.has_lowlight)


class Degrader:
    """The training entry point: ``y, params = Degrader(cfg)(x, generator)``.

    Loads (or builds and caches) the kernel bank and the response curves lazily, on first use.
    """

    def __init__(self, cfg, bank: Optional[KernelBank] = None, curves: Optional[ResponseCurves] = None):
        self.cfg = cfg
        self._bank = bank
        self._curves = curves

    @property
    def bank(self) -> KernelBank:
        if self._bank is None:
            self._bank = KernelBank.load_or_build(self.cfg)
        return self._bank

    @property
    def curves(self) -> ResponseCurves:
        if self._curves is None:
            self._curves = ResponseCurves.from_spec(self.cfg.crf)
        return self._curves

    def sample(self, n: int, generator: torch.Generator) -> DegradeParams:
        """Training parameters for ``n`` samples."""
        return sample_params(n, self.cfg, self.bank, self.curves, generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, DegradeParams]:
        params = self.sample(x.shape[0], generator)
        return degrade(x, params, self.bank, self.curves, generator, noise_model=self.cfg.noise_model), params

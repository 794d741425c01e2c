"""Procedural synthetic faces with identities: the built-in data that needs no download.

A face is drawn from implicit shapes in a face-centred coordinate frame (u right, v down, the face
half-height is 1): background, hair, neck and clothes, ears, a shaded face ellipse with a tapered
chin, eyebrows, eyes (white, iris, pupil), nose shading and nostrils, lips and mouth, and optional
glasses and beard. Shape and colour parameters are drawn per identity (face shape, skin tone, eye
placement and colour, nose, mouth, hair colour/style/length, accessories); each image of an
identity varies pose (shift, scale, in-plane tilt), lighting (direction, brightness, colour cast),
expression (smile, mouth opening, eye openness, gaze), background and a little sensor grain.

Everything is determined by ``seed``: identity ``i`` uses ``numpy.random.default_rng([seed, i, 0])``
and image ``j`` of it ``default_rng([seed, i, j, 1])``, so a face does not depend on how many other
faces are drawn. Rendering is vectorised NumPy over a batch (chunks of 32 images).
"""

from __future__ import annotations

import numpy as np

# Per-identity parameters: name -> (low, high) of a uniform draw; colours are drawn separately.
_ID_UNIFORM = {
    "face_a": (0.70, 0.86),  # half-width of the face ellipse
    "face_b": (0.98, 1.10),  # half-height
    "chin_taper": (0.10, 0.30),  # narrowing of the lower face
    "eye_x": (0.30, 0.38),
    "eye_y": (-0.20, -0.08),
    "eye_w": (0.11, 0.15),
    "eye_h": (0.050, 0.075),
    "iris_r": (0.045, 0.060),
    "brow_gap": (0.13, 0.19),
    "brow_arch": (0.01, 0.05),
    "brow_thick": (0.018, 0.035),
    "nose_len": (0.28, 0.42),  # below the eye line
    "nose_w": (0.07, 0.12),
    "mouth_y": (0.50, 0.62),
    "mouth_w": (0.20, 0.30),
    "lip_t": (0.025, 0.050),
    "hairline": (-0.80, -0.45),
    "hair_volume": (0.05, 0.25),
    "hair_len": (-0.2, 1.3),  # how far down the back hair reaches (v)
    "hair_wave": (0.0, 0.08),
    "hair_freq": (4.0, 12.0),
    "blush": (0.0, 0.10),
}


def identity_params(seed: int, n: int) -> dict[str, np.ndarray]:
    """Per-identity parameters of identities ``0..n-1``: dict of arrays with leading dim ``n``."""
    rows = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), i, 0])
        p = {k: rng.uniform(lo, hi) for k, (lo, hi) in _ID_UNIFORM.items()}
        # Skin: a brown-to-pale ramp with a little hue jitter.
        t = rng.uniform(0.0, 1.0)
        p["skin"] = np.clip(
            np.array([0.36, 0.22, 0.14]) * (1 - t) + np.array([0.96, 0.80, 0.70]) * t + rng.normal(0, 0.025, 3),
            0.05,
            1.0,
        )
        hair_palette = np.array(
            [
                [0.05, 0.04, 0.03],
                [0.22, 0.13, 0.07],
                [0.45, 0.30, 0.15],
                [0.80, 0.65, 0.40],
                [0.55, 0.20, 0.08],
                [0.60, 0.60, 0.60],
            ]
        )
        p["hair"] = np.clip(hair_palette[rng.integers(len(hair_palette))] + rng.normal(0, 0.03, 3), 0, 1)
        iris_palette = np.array([[0.30, 0.18, 0.08], [0.15, 0.35, 0.55], [0.25, 0.40, 0.20], [0.12, 0.08, 0.05]])
        p["iris"] = np.clip(iris_palette[rng.integers(len(iris_palette))] + rng.normal(0, 0.03, 3), 0, 1)
        p["lips"] = np.clip(p["skin"] * np.array([0.85, 0.55, 0.55]) + rng.normal(0, 0.03, 3), 0, 1)
        p["clothes"] = rng.uniform(0.1, 0.9, 3)
        p["glasses"] = float(rng.uniform() < 0.2)
        p["beard"] = float(rng.uniform() < 0.2)
        rows.append(p)
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in rows[0]} if rows else {}


def image_params(
    seed: int, id_params: dict[str, np.ndarray], ids: np.ndarray, imgs: np.ndarray
) -> dict[str, np.ndarray]:
    """Parameters of images (``ids[n]``, ``imgs[n]``): identity parameters gathered plus per-image
    variation (pose, lighting, expression, background)."""
    ids = np.asarray(ids, dtype=np.int64)
    imgs = np.asarray(imgs, dtype=np.int64)
    out = {k: v[ids] for k, v in id_params.items()}
    var = []
    for i, j in zip(ids.tolist(), imgs.tolist()):
        rng = np.random.default_rng([int(seed), i, j, 1])
        light = rng.normal(0, 1, 3) * np.array([0.6, 0.4, 0.0]) + np.array([0.0, -0.3, 1.0])
        var.append(
            {
                "dx": rng.uniform(-0.05, 0.05),
                "dy": rng.uniform(-0.04, 0.04),
                "scale": rng.uniform(0.92, 1.08),
                "tilt": rng.uniform(-0.12, 0.12),
                "light": light / np.linalg.norm(light),
                "bright": rng.uniform(0.8, 1.15),
                "cast": rng.normal(0, 0.03, 3),
                "smile": rng.uniform(-0.03, 0.09),
                "open": max(0.0, rng.uniform(-0.03, 0.06)),
                "eye_open": rng.uniform(0.55, 1.1),
                "gaze": rng.uniform(-0.03, 0.03, 2),
                "bg0": rng.uniform(0.1, 0.9, 3),
                "bg1": rng.uniform(0.1, 0.9, 3),
                "grain_seed": rng.integers(2**31),
            }
        )
    for k in var[0] if var else []:
        out[k] = np.array([v[k] for v in var])
    return out


def _soft(d: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """Coverage of a shape whose signed distance is ``d`` (negative inside), ~1 pixel ramp."""
    return np.clip(0.5 - d / aa, 0.0, 1.0)


def _ellipse(u, v, cu, cv, a, b):
    """Approximate signed distance to an axis-aligned ellipse (in face units)."""
    r = np.sqrt(((u - cu) / a) ** 2 + ((v - cv) / b) ** 2)
    return (r - 1.0) * np.minimum(a, b)


def _over(img: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Composite ``colour`` (N,1,1,3 or N,H,W,3) over ``img`` with coverage ``mask`` (N,H,W), in place.

    Only the rows that the mask touches are updated: most features cover a small band.
    """
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    if rows.size == 0:
        return img
    r0, r1 = rows[0], rows[-1] + 1
    colour = np.asarray(colour, dtype=np.float32)
    if colour.ndim == 4 and colour.shape[1] > 1:
        colour = colour[:, r0:r1]
    part = img[:, r0:r1]
    delta = colour - part
    delta *= mask[:, r0:r1, :, None]
    part += delta
    return img


def _render_chunk(p: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    n = len(p["face_a"])

    def c(name):  # a per-image scalar parameter shaped to broadcast over (N,H,W)
        return p[name].reshape(n, 1, 1).astype(np.float32)

    def col(name):  # a per-image colour shaped (N,1,1,3)
        return p[name].reshape(n, 1, 1, 3).astype(np.float32)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    s = 0.34 * height * c("scale")  # pixels per face unit
    cx = width / 2 + c("dx") * width
    cy = 0.50 * height + c("dy") * height
    ct, st = np.cos(c("tilt")), np.sin(c("tilt"))
    X, Y = xs[None] - cx, ys[None] - cy
    u = (X * ct + Y * st) / s
    v = (-X * st + Y * ct) / s
    aa = 1.5 / s  # one and a half pixels, in face units

    # Background: vertical gradient between two colours.
    g = (ys / max(height - 1, 1))[None, ..., None]
    img = (col("bg0") * (1 - g) + col("bg1") * g).astype(np.float32)

    fa, fb = c("face_a"), c("face_b")
    # Back hair: a larger ellipse, cut at the hair length.
    hv = c("hair_volume")
    back = _ellipse(u, v, 0.0, -0.12, fa + hv, fb + hv * 0.8)
    back = np.maximum(back, v - c("hair_len"))
    img = _over(img, col("hair") * 0.8, _soft(back, aa) * (c("hair_len") > -0.15))
    # Clothes and neck.
    img = _over(img, col("clothes"), _soft(_ellipse(u, v, 0.0, 2.35, 1.7, 0.95), aa))
    neck = np.maximum(np.abs(u) - 0.38 * fa, 0.55 - v)
    neck = np.maximum(neck, v - 1.55)
    img = _over(img, col("skin") * 0.78, _soft(neck, aa))
    # Ears.
    ears = np.minimum(_ellipse(u, v, -fa * 0.98, 0.0, 0.11, 0.19), _ellipse(u, v, fa * 0.98, 0.0, 0.11, 0.19))
    img = _over(img, col("skin") * 0.85, _soft(ears, aa))

    # Face: an egg shape (narrower towards the chin), Lambert-shaded as if it were a dome.
    a_eff = fa * (1.0 - c("chin_taper") * np.clip(v, 0.0, None) / fb)
    nu, nv = u / a_eff, v / fb
    face_d = (np.sqrt(nu**2 + nv**2) - 1.0) * np.minimum(a_eff, fb)
    face_m = _soft(face_d, aa)
    nz = np.sqrt(np.clip(1.0 - nu**2 - nv**2, 0.0, 1.0))
    light = p["light"].astype(np.float32)
    lam = nu * light[:, 0, None, None] + nv * light[:, 1, None, None] + nz * light[:, 2, None, None]
    shade = (0.62 + 0.45 * np.clip(lam, 0.0, 1.0))[..., None]
    skin = col("skin") * shade
    # Cheek blush.
    blush = np.exp(-(((np.abs(u) - 0.45) / 0.16) ** 2 + ((v - 0.22) / 0.12) ** 2))[..., None] * c("blush")[..., None]
    skin = skin + blush * np.array([0.5, -0.2, -0.2], dtype=np.float32)
    img = _over(img, skin, face_m)

    def band(lo, hi):
        """Rows that can hold face-frame heights lo..hi (per image, (N,1,1)) in every image, + margin."""
        slack = s * np.abs(st) * 1.3 + 2.0
        y0 = float((cy + s * ct * lo - slack).min())
        y1 = float((cy + s * ct * hi + slack).max())
        return slice(max(0, int(np.floor(y0))), min(height, int(np.ceil(y1)) + 1))

    # Beard: lower face around the mouth, hair-coloured, semi-opaque, higher at the sides.
    sl = band(c("mouth_y") - 0.5, fb + 0.05)
    u_, v_, img_ = u[:, sl], v[:, sl], img[:, sl]
    beard = np.maximum(face_d[:, sl], (c("mouth_y") - 0.16 - 0.12 * (u_ / fa) ** 2) - v_)
    _over(img_, col("hair") * 0.9, _soft(beard, aa) * 0.75 * c("beard"))

    # Fringe: hair inside the head above a wavy hairline.
    sl = band(-fb - 0.1, c("hairline") + c("hair_wave") + 0.05)
    u_, v_, img_ = u[:, sl], v[:, sl], img[:, sl]
    hl = c("hairline") + c("hair_wave") * np.sin(u_ * c("hair_freq"))
    fringe = np.maximum(face_d[:, sl] - 0.02, v_ - hl)
    _over(img_, col("hair"), _soft(fringe, aa))

    ex, ey = c("eye_x"), c("eye_y")
    ew, eh = c("eye_w"), c("eye_h") * c("eye_open")
    gaze_u = p["gaze"][:, 0].reshape(n, 1, 1).astype(np.float32)
    gaze_v = p["gaze"][:, 1].reshape(n, 1, 1).astype(np.float32) * 0.5
    sl = band(ey - c("brow_gap") - c("brow_arch") - c("brow_thick") - ew * 1.3, ey + ew * 1.3)
    u_, v_, img_, face_m_ = u[:, sl], v[:, sl], img[:, sl], face_m[:, sl]
    glass = np.array([0.08, 0.08, 0.1], dtype=np.float32)
    for side in (-1.0, 1.0):
        cu = side * ex
        # Eyebrow: an arch above the eye.
        du = (u_ - cu) / (ew * 1.25)
        brow_v = ey - c("brow_gap") - c("brow_arch") * (1 - du**2)
        across = np.abs(v_ - brow_v) - c("brow_thick")
        brow = np.where(np.abs(du) <= 1.0, across, (np.abs(du) - 1.0) * ew + np.maximum(across, 0.0))
        _over(img_, col("hair") * 0.7, _soft(brow, aa))
        # Eye white, iris, pupil (iris and pupil clipped to the white), then a dark upper lid.
        white_d = _ellipse(u_, v_, cu, ey, ew, np.maximum(eh, 1e-3))
        white = _soft(white_d, aa)
        _over(img_, np.array([0.93, 0.92, 0.90]), white)
        iris_d = _ellipse(u_, v_, cu + gaze_u, ey + gaze_v, c("iris_r"), c("iris_r"))
        _over(img_, col("iris"), _soft(iris_d, aa) * white)
        _over(img_, np.array([0.03, 0.03, 0.03]), _soft(iris_d + c("iris_r") * 0.55, aa) * white)
        lid = np.maximum(np.abs(white_d + 0.004) - 0.008, ey - v_)
        _over(img_, col("skin") * 0.35, _soft(lid, aa) * face_m_)
        # Glasses: a ring around each eye.
        ring = np.abs(_ellipse(u_, v_, cu, ey, ew * 1.6, ew * 1.2)) - 0.012
        _over(img_, glass, _soft(ring, aa) * c("glasses"))
    bridge = np.maximum(np.abs(u_) - (ex - ew * 1.6), np.abs(v_ - ey + 0.02) - 0.012)
    _over(img_, glass, _soft(bridge, aa) * c("glasses"))

    # Nose: the side away from the light is darker; then two nostrils.
    ny = ey + c("nose_len")
    sl = band(ey, ny + 0.05)
    u_, v_, img_ = u[:, sl], v[:, sl], img[:, sl]
    frac = np.clip((v_ - ey) / (ny - ey), 0.0, 1.0)
    half = c("nose_w") * (0.35 + 0.65 * frac)
    side_dark = np.where(light[:, 0, None, None] > 0, u_ < 0, u_ > 0)
    nose = np.maximum(np.abs(u_) - half, np.maximum(ey + 0.05 - v_, v_ - ny))
    img_ *= 1 - (_soft(nose, aa) * side_dark * 0.14)[..., None]
    nostrils = np.minimum(_ellipse(u_, v_, -0.055, ny, 0.03, 0.016), _ellipse(u_, v_, 0.055, ny, 0.03, 0.016))
    _over(img_, col("skin") * 0.3, _soft(nostrils, aa))

    # Mouth: a curved centre line; lips of given thickness around an opening.
    mw, my = c("mouth_w"), c("mouth_y")
    sl = band(my - 0.2, my + 0.15)
    u_, v_, img_ = u[:, sl], v[:, sl], img[:, sl]
    t = np.clip(1.0 - (u_ / mw) ** 2, 0.0, 1.0)
    vc = my - c("smile") * (u_ / mw) ** 2
    opening = c("open") * t
    lips = np.where(t > 0, np.abs(v_ - vc) - (c("lip_t") * np.sqrt(t) + opening / 2), 1.0)
    _over(img_, col("lips"), _soft(lips, aa))
    inside = np.where(t > 0, np.abs(v_ - vc) - np.maximum(opening / 2, 0.004), 1.0)
    _over(img_, np.array([0.15, 0.04, 0.05]), _soft(inside, aa))

    # Global light level and colour cast, then a little deterministic sensor grain.
    img *= c("bright")[..., None]
    img += col("cast")
    for k in range(n):
        img[k] += (
            np.random.default_rng(int(p["grain_seed"][k])).normal(0.0, 0.008, (height, width, 1)).astype(np.float32)
        )
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_faces(params: dict[str, np.ndarray], height: int, width: int, chunk: int = 32) -> np.ndarray:
    """Render faces from :func:`image_params` output: (N, height, width, 3) uint8 RGB."""
    n = len(params["face_a"])
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for start in range(0, n, chunk):
        part = {k: v[start : start + chunk] for k, v in params.items()}
        out[start : start + chunk] = _render_chunk(part, height, width)
    return out


def synthetic_faces(
    identities: int, images_per_identity: int, height: int = 176, width: int = 144, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """All faces of a synthetic set at once: (images (N,H,W,3) uint8, identity index (N,))."""
    ids = np.repeat(np.arange(identities), images_per_identity)
    imgs = np.tile(np.arange(images_per_identity), identities)
    params = image_params(seed, identity_params(seed, identities), ids, imgs)
    return render_faces(params, height, width), ids

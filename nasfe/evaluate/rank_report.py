"""``nasfe rank``'s numbers and files: Kendall's tau with a confidence interval, the searched
genotypes' percentile among random ones, and ``rank.json``, ``rank.md`` and ``rank.png``.

Plain Python (scipy and matplotlib); no Ray, no W&B.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence
import numpy as np
from scipy.stats import kendalltau
import matplotlib
import matplotlib.pyplot as plt
from nasfe.imageio import atomic_output
from nasfe.imageio import atomic_write_json, atomic_write_text

#: Test-set columns of a row: PSNR and SSIM on Test-BN and Test-BNL
TEST_KEYS = ("bn_psnr", "bn_ssim", "bnl_psnr", "bnl_ssim")


def kendall_tau(
    x: Sequence[float], y: Sequence[float], confidence: float = 0.95, boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Kendall's tau-b of ``x`` and ``y`` with a percentile-bootstrap confidence interval (pairs
    resampled with replacement, ``boot`` times, seeded) and scipy's two-sided p-value.

    Fewer than 3 pairs, or a constant side, give ``tau`` None: there is no ranking to compare.
    """

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    out: dict[str, Any] = {
        "tau": None,
        "ci_low": None,
        "ci_high": None,
        "p_value": None,
        "n": int(len(x)),
        "confidence": confidence,
    }
    if len(x) != len(y):
        raise ValueError(f"kendall_tau: {len(x)} scores against {len(y)} values")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    res = kendalltau(x, y)
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(boot):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            taus.append(kendalltau(x[idx], y[idx]).statistic)
    lo, hi = np.quantile(taus, [(1 - confidence) / 2, (1 + confidence) / 2]) if taus else (math.nan, math.nan)
    out.update({"tau": float(res.statistic), "p_value": float(res.pvalue), "ci_low": float(lo), "ci_high": float(hi)})
    return out


def percentile_among(value: float, others: Sequence[float]) -> Optional[float]:
    """Percentage of ``others`` below ``value`` (ties count half): 100 = above every one, 0 = below all."""
    if not others:
        return None
    below = sum(o < value for o in others) + 0.5 * sum(o == value for o in others)
    return 100.0 * below / len(others)


def _spread(values: Sequence[float]) -> dict[str, Optional[float]]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarize(
    rows: Sequence[dict[str, Any]], rules: Sequence[str] = ("alpha", "strength"), metric: str = "val_psnr"
) -> dict[str, Any]:
    """The study's numbers from its rows (each with ``kind``, ``metric``, test scores and
    ``score_<rule>``, the supernet's score averaged over the searches given).

    ``kendall_tau[rule]``: tau between the supernet score and ``metric`` over the rows the supernet
    scores (random and searched); ``kendall_tau_test_psnr[rule]``: the same against the mean of
    Test-BN and Test-BNL PSNR (``test_psnr``); ``searched_percentile``: the mean over searched rows of their
    percentile of ``metric`` among the random rows; ``groups``: mean and std of each column per
    kind, plus the best random row.
    """
    done = [r for r in rows if r.get(metric) is not None]
    randoms = [r[metric] for r in done if r["kind"] == "random"]

    def taus_against(column: str) -> dict[str, Any]:
        out = {}
        for rule in rules:
            pairs = [
                (r[f"score_{rule}"], r[column])
                for r in done
                if r["kind"] != "hand" and r.get(f"score_{rule}") is not None and r.get(column) is not None
            ]
            out[rule] = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])
        return out

    taus = taus_against(metric)
    for r in done:  # the mean test PSNR over Test-BN and Test-BNL: a second, larger sample than validation
        if r.get("bn_psnr") is not None and r.get("bnl_psnr") is not None:
            r["test_psnr"] = (r["bn_psnr"] + r["bnl_psnr"]) / 2
    taus_test = taus_against("test_psnr")
    pct = [percentile_among(r[metric], randoms) for r in done if r["kind"] == "searched"]
    pct = [p for p in pct if p is not None]
    for r in done:
        r["percentile_among_random"] = percentile_among(r[metric], randoms) if r["kind"] != "random" else None
    # the same percentile on each test set (the target is the top quarter on both)
    by_column = {}
    for col in ("bn_psnr", "bnl_psnr", "test_psnr"):
        ref = [r[col] for r in done if r["kind"] == "random" and r.get(col) is not None]
        vals = [percentile_among(r[col], ref) for r in done if r["kind"] == "searched" and r.get(col) is not None]
        vals = [v for v in vals if v is not None]
        by_column[col] = statistics.fmean(vals) if vals else None
    groups: dict[str, Any] = {}
    cols = (metric, *TEST_KEYS)
    for kind in ("random", "searched", "hand"):
        sel = [r for r in done if r["kind"] == kind]
        if sel:
            groups[kind] = {c: _spread([r.get(c) for r in sel]) for c in cols}
    if randoms:
        best = max((r for r in done if r["kind"] == "random"), key=lambda r: r[metric])
        groups["best_random"] = {c: best.get(c) for c in ("genotype_id", *cols)}
    quarter = sorted(randoms)[int(math.ceil(0.75 * len(randoms))) - 1] if randoms else None
    return {
        "kendall_tau": {k: v["tau"] for k, v in taus.items()},
        "kendall_tau_ci": taus,
        "kendall_tau_test_psnr": taus_test,
        "searched_percentile": statistics.fmean(pct) if pct else None,
        "searched_percentiles": pct,
        "searched_percentile_by_column": by_column,
        "random_top_quarter_threshold": quarter,
        "groups": groups,
        "metric": metric,
    }


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def render_markdown(summary: dict[str, Any], rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``rank.md``: tau per rule, the searched percentile, per-kind means and one row per genotype."""
    metric = summary["metric"]
    lines = [f"# Rank study: {meta.get('space', '?')}", ""]
    if meta.get("budget"):
        lines += [f"Retraining budget: {meta['budget']}", ""]
    lines += ["| rule | Kendall tau | 95% CI | p | pairs |", "|---|---:|---|---:|---:|"]
    for rule, t in summary["kendall_tau_ci"].items():
        ci = f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]" if t["tau"] is not None else "-"
        lines.append(f"| {rule} | {_fmt(t['tau'])} | {ci} | {_fmt(t['p_value'], 3)} | {t['n']} |")
    for rule, t in summary.get("kendall_tau_test_psnr", {}).items():
        ci = f"[{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]" if t["tau"] is not None else "-"
        lines.append(
            f"| {rule}, against mean test PSNR | {_fmt(t['tau'])} | {ci} | {_fmt(t['p_value'], 3)} | {t['n']} |"
        )
    lines += [
        "",
        f"Searched percentile among random ({metric}): {_fmt(summary['searched_percentile'], 1)} "
        f"(each: {', '.join(_fmt(p, 1) for p in summary['searched_percentiles']) or '-'}); on "
        + ", ".join(f"{k} {_fmt(v, 1)}" for k, v in summary.get("searched_percentile_by_column", {}).items()),
        "",
    ]
    lines += ["| kind | n | " + " | ".join((metric, *TEST_KEYS)) + " |", "|---|---:|" + "---:|" * (1 + len(TEST_KEYS))]
    for kind, g in summary["groups"].items():
        if kind == "best_random":
            lines.append(
                "| best random | 1 | "
                + " | ".join(_fmt(g.get(c), 3 if "ssim" in c else 2) for c in (metric, *TEST_KEYS))
                + " |"
            )
            continue
        n = g[metric]["n"]
        cells = [
            f"{_fmt(g[c]['mean'], 3 if 'ssim' in c else 2)} ± {_fmt(g[c]['std'], 3 if 'ssim' in c else 2)}"
            for c in (metric, *TEST_KEYS)
        ]
        lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| label | kind | genotype_id | path | score_alpha | score_strength | "
        + " | ".join((metric, *TEST_KEYS))
        + " |",
        "|---|---|---|---|---:|---:|" + "---:|" * (1 + len(TEST_KEYS)),
    ]
    for r in sorted(rows, key=lambda r: -(r.get(metric) if r.get(metric) is not None else -math.inf)):
        lines.append(
            f"| {r['label']} | {r['kind']} | {r.get('genotype_id') or '-'} | {r.get('path') or '-'} | "
            f"{_fmt(r.get('score_alpha'), 3)} | {_fmt(r.get('score_strength'), 1)} | "
            + " | ".join(_fmt(r.get(c), 3 if "ssim" in c else 2) for c in (metric, *TEST_KEYS))
            + " |"
        )
    return "\n".join(lines) + "\n"


def scatter_png(
    rows: Sequence[dict[str, Any]],
    path: Path,
    rules: Sequence[str] = ("alpha", "strength"),
    metric: str = "val_psnr",
    taus: Optional[dict] = None,
) -> Optional[Path]:
    """One panel per rule: supernet score (x) against stand-alone ``metric`` (y), by kind; the hand
    row (no supernet score) as a horizontal line. None when nothing is scored."""

    matplotlib.use("Agg")

    fig, axes = plt.subplots(1, len(rules), figsize=(5 * len(rules), 4), squeeze=False)
    style = {"random": ("tab:blue", "o"), "searched": ("tab:red", "*")}
    drawn = False
    for ax, rule in zip(axes[0], rules):
        for kind, (color, marker) in style.items():
            pts = [
                (r[f"score_{rule}"], r[metric])
                for r in rows
                if r["kind"] == kind and r.get(f"score_{rule}") is not None and r.get(metric) is not None
            ]
            if pts:
                drawn = True
                ax.scatter(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    c=color,
                    marker=marker,
                    s=120 if kind == "searched" else 30,
                    label=kind,
                )
        for r in rows:
            if r["kind"] == "hand" and r.get(metric) is not None:
                ax.axhline(r[metric], color="tab:green", ls="--", label=r["label"])
        tau = (taus or {}).get(rule)
        ax.set_title(f"{rule}" + (f": tau = {tau:.2f}" if tau is not None else ""))
        ax.set_xlabel(f"supernet score ({rule})")
        ax.set_ylabel(f"stand-alone {metric}")
        ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        return None
    fig.tight_layout()
    with atomic_output(Path(path)) as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def write_rank_report(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    meta: dict[str, Any],
    rules: Sequence[str] = ("alpha", "strength"),
    metric: str = "val_psnr",
) -> dict[str, Any]:
    """Write ``rank.json``, ``rank.md`` and ``rank.png`` in ``out``; returns what ``rank.json`` holds."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in rows]
    summary = summarize(rows, rules, metric)
    data = {**summary, **meta, "rows": rows}
    atomic_write_json(out / "rank.json", data)
    atomic_write_text(out / "rank.md", render_markdown(summary, rows, meta))
    scatter_png(rows, out / "rank.png", rules, metric, summary["kendall_tau"])
    return data


def rank_of(value: float, values: Sequence[float]) -> int:
    """1-based rank of ``value`` among ``values`` from the best (highest): 1 + how many are above it."""
    return 1 + sum(v > value for v in values)


def compare_budgets(
    short_rows: Sequence[dict[str, Any]],
    long_rows: Sequence[dict[str, Any]],
    metrics: Sequence[str] = ("val_psnr", "test_psnr"),
    key: str = "id",
    hand: str = "hand_bn",
) -> dict[str, Any]:
    """Does a short retraining budget rank like a longer one? For each metric: Kendall's tau-b
    (:func:`kendall_tau`) between the two budgets' scores of the rows present (and scored) in both,
    matched by ``key``, and the rank (1 = best) of the ``hand`` row among them at each budget.
    ``test_psnr`` is filled in as the mean of Test-BN and Test-BNL PSNR where a row lacks it."""

    def scored(rows):
        out = {}
        for r in rows:
            r = dict(r)
            if r.get("test_psnr") is None and r.get("bn_psnr") is not None and r.get("bnl_psnr") is not None:
                r["test_psnr"] = (r["bn_psnr"] + r["bnl_psnr"]) / 2
            out[r[key]] = r
        return out

    short, long_ = scored(short_rows), scored(long_rows)
    result: dict[str, Any] = {}
    for m in metrics:
        ids = [i for i in long_ if i in short and short[i].get(m) is not None and long_[i].get(m) is not None]
        xs, ys = [short[i][m] for i in ids], [long_[i][m] for i in ids]
        entry: dict[str, Any] = {"ids": ids, **kendall_tau(xs, ys)}
        if hand in ids:
            j = ids.index(hand)
            entry["hand_rank_short"] = rank_of(xs[j], xs)
            entry["hand_rank_long"] = rank_of(ys[j], ys)
        result[m] = entry
    return result

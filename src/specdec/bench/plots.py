"""PNG plots (matplotlib, Agg): speedup per category, speedup vs gamma with S over it,
acceptance by draft position."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from specdec import theory  # noqa: E402
from specdec.bench.metrics import OVERALL, Summary  # noqa: E402


def write_plots(summaries: list[Summary], out: Path) -> list[Path]:
    """All plots into `out`; returns their paths."""
    paths = []
    for temperature in sorted({s.temperature for s in summaries}):
        at = [s for s in summaries if s.temperature == temperature]
        paths.append(_by_category(at, out / f"speedup_by_category_T{temperature:g}.png"))
    paths.append(_vs_gamma(summaries, out / "speedup_vs_gamma.png"))
    paths.append(_by_position(summaries, out / "acceptance_by_position.png"))
    return paths


def _by_category(summaries: list[Summary], path: Path) -> Path:
    categories = sorted({s.category for s in summaries} - {OVERALL}) + [OVERALL]
    methods = list(dict.fromkeys(s.method for s in summaries))
    lookup = {(s.method, s.category): s.speedup or 0.0 for s in summaries}
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(categories)), 4.5))
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(categories))]
        ax.bar(xs, [lookup.get((method, c), 0.0) for c in categories], width, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories)
    ax.set_ylabel("speedup over plain decoding")
    ax.set_title(f"Speedup per category, temperature {summaries[0].temperature:g}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _vs_gamma(summaries: list[Summary], path: Path) -> Path:
    """Measured decode speedup at each fixed gamma; S(alpha, gamma, c, v) from pooled measures."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fixed = [s for s in summaries if s.category == OVERALL and isinstance(s.gamma, int)
             and s.family == "specdec" and s.predicted_speedup is not None]
    for key in sorted({(s.drafter, s.temperature) for s in fixed}, key=str):
        points = sorted((s for s in fixed if (s.drafter, s.temperature) == key),
                        key=lambda s: s.gamma)
        label = f"{key[0]} T={key[1]:g}"
        line = ax.plot([s.gamma for s in points], [s.decode_speedup for s in points], "o",
                       label=f"{label} measured")[0]
        alpha = min(0.999, sum(s.alpha for s in points) / len(points))
        c = sum(s.c for s in points) / len(points)
        v = sum(s.v for s in points) / len(points)
        gammas = list(range(1, max(12, max(s.gamma for s in points) + 2)))
        ax.plot(gammas, [theory.speedup(alpha, g, c, v) for g in gammas], "-",
                color=line.get_color(), alpha=0.6,
                label=f"{label} S(a={alpha:.2f}, c={c:.2f}, v={v:.2f})")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("gamma (draft length)")
    ax.set_ylabel("decode speedup over plain")
    ax.set_title("Measured speedup vs gamma, theory S(alpha, gamma, c, v) over it")
    if fixed:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _by_position(summaries: list[Summary], path: Path) -> Path:
    temperatures = sorted({s.temperature for s in summaries})
    fig, axes = plt.subplots(1, len(temperatures), figsize=(6 * len(temperatures), 4.2),
                             squeeze=False)
    for ax, temperature in zip(axes[0], temperatures, strict=True):
        for s in summaries:
            if s.temperature == temperature and s.category == OVERALL and \
                    s.acceptance_by_position:
                rates = s.acceptance_by_position
                ax.plot(range(1, len(rates) + 1), rates, "o-", label=s.method)
        ax.set_xlabel("draft position i")
        ax.set_ylabel("P(draft i accepted | drafted)")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Acceptance by draft position, temperature {temperature:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""The evaluation's reports: the markdown table with seed noise marked, the metric-against-NFE plot, and the
names both use (a sampler row's name, its metrics)."""

from __future__ import annotations

from pdist.evaluation import stats
from pdist.evaluation.score import METRICS
from pdist.runtime import files

LOWER_IS_BETTER = {"fd": True, "is": False, "precision": False, "recall": False, "accuracy": False}
LABELS = {
    "fd": "Frechet distance",
    "is": "Inception Score",
    "precision": "precision",
    "recall": "recall",
    "accuracy": "class accuracy",
}


def metrics_of(rows: list[dict]) -> list[str]:
    """The metrics every row (a score, or a summarized row) holds: METRICS, and accuracy where measured."""
    return [m for m in (*METRICS, "accuracy") if all(m in r for r in rows)]


def sampler_name(r: dict) -> str:
    return r["method"] if r.get("guidance") is None else f"{r['method']} w={r['guidance']:g}"


def brief(s: dict) -> str:
    return ", ".join(f"{m} {s[m]:.4g}" for m in metrics_of([s]))


def markdown(rows: list[dict], title: str) -> str:
    """The table; a cell within seed noise of its column's best is marked with ≈ (bootstrap 95%)."""
    metrics = metrics_of(rows)
    guided = any(r.get("guidance") is not None for r in rows)
    lines = [
        f"# {title}",
        "",
        "mean ± std [bootstrap 95% interval] over seeds; ≈: not resolved from the column's best at 95%."
        + (
            " A guided sampler (w: its guidance weight) calls the network NFE times on twice the batch (a\n"
            "guided-distillation student: on the batch, with w as an input)."
            if guided
            else ""
        ),
        "",
        "| sampler | steps | grid | NFE | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---|---:|---|---:|" + "---:|" * len(metrics),
    ]
    best = {}
    for m in metrics:
        sign = 1 if LOWER_IS_BETTER[m] else -1
        best[m] = min(rows, key=lambda r: sign * r[m]["mean"])
    for r in rows:
        cells = []
        for m in metrics:
            cell = stats.format_summary(r[m], 2 if m in ("fd", "is") else 3)
            if r is best[m]:
                cell = f"**{cell}**"
            elif r[m]["n"] > 1 and not stats.resolved(r[m]["values"], best[m][m]["values"]):
                cell += " ≈"
            cells.append(cell)
        lines.append(
            f"| {sampler_name(r)} | {r['steps']} | {r.get('grid', '-')} | {r['nfe']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    """eval.png: each metric against function evaluations, one line per sampler (a Figure of its own: no pyplot
    state and no backend switch, so a notebook's own plots are left as they are)."""
    from matplotlib.figure import Figure

    metrics = metrics_of(rows)
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    lines = dict.fromkeys((sampler_name(r), r.get("grid")) for r in rows)  # one line per sampler and grid
    several_grids = len({grid for _, grid in lines}) > 1
    for ax, m in zip(axes, metrics, strict=True):
        for method, grid in lines:
            rs = sorted((r for r in rows if (sampler_name(r), r.get("grid")) == (method, grid)), key=lambda r: r["nfe"])
            ax.errorbar(
                [r["nfe"] for r in rs],
                [r[m]["mean"] for r in rs],
                yerr=[r[m]["std"] for r in rs],
                marker="o",
                capsize=3,
                label=f"{method} ({grid})" if several_grids else method,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("function evaluations")
        ax.set_title(LABELS[m])
        if m == "fd":
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with files.atomic(path) as f:
        fig.savefig(f, format="png", dpi=110)

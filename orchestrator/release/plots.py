"""PNG figures for materialization metadata: written to files, embedded in markdown for the UI."""

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def embed(path: Path, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def layer_errors(block_mse: list[float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.semilogy(range(len(block_mse)), block_mse, marker="o", markersize=3)
    ax.set(xlabel="decoder block", ylabel="output MSE vs original", title="Quantization error per block")
    return _save(fig, path)


def perplexity_by_length(
    by_length: dict[str, dict[int, dict]],
    increases: dict[int, tuple[float, tuple[float, float] | None]],
    ceiling: float,
    path: Path,
) -> Path:
    """Left: each model's perplexity by context length. Right: the gated relative increase per
    length with its confidence interval, against the policy's ceiling."""
    fig, (models, gated) = plt.subplots(1, 2, figsize=(10, 3))
    for role, figures in by_length.items():
        lengths = sorted(figures)
        models.plot(lengths, [figures[n]["perplexity"] for n in lengths], marker="o", label=role)
    models.set(xscale="log", xlabel="context tokens", ylabel="perplexity of final tokens", title="Long context")
    models.legend()
    lengths = sorted(increases)
    estimates = [increases[n][0] for n in lengths]
    below = [e - (increases[n][1] or (e, e))[0] for n, e in zip(lengths, estimates, strict=True)]
    above = [(increases[n][1] or (e, e))[1] - e for n, e in zip(lengths, estimates, strict=True)]
    gated.errorbar(lengths, estimates, yerr=[below, above], marker="o", capsize=3, label="estimate, 95% interval")
    gated.axhline(ceiling, color="red", linestyle="--", label=f"ceiling {ceiling:g}")
    gated.set(xscale="log", xlabel="context tokens", ylabel="relative increase", title="Gated perplexity increase")
    gated.legend()
    return _save(fig, path)


def latency_percentiles(levels: dict, ceilings: dict[str, tuple[str, float]], path: Path) -> Path:
    """Latency percentiles per concurrency level; `ceilings`: figure -> (the percentile the SLA
    limits, its ceiling in seconds), drawn as a line."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, key in zip(axes, ("ttft_s", "itl_s", "e2e_s"), strict=True):
        for c, level in levels.items():
            ax.plot(["p50", "p90", "p99"], [level[key][p] for p in ("p50", "p90", "p99")], marker="o", label=f"c={c}")
        if key in ceilings:
            percentile, ceiling = ceilings[key]
            ax.axhline(ceiling, color="red", linestyle="--", label=f"SLA {percentile} ceiling {ceiling:g}")
        ax.set(title=key.removesuffix("_s").upper() + " (s)")
        ax.legend(fontsize="small")
    return _save(fig, path)

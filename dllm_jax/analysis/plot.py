"""The static trajectory plot (docs/analysis.md, "Plots").

Two axes conventions hold throughout: a generated position ``i`` is the heat-map cell centred
on ``i``; a denoising step ``t`` is the interval ``[t, t + 1)`` of the step axis, so a zone of
steps ``start .. end - 1`` is shaded over exactly ``[start, end)`` and a step that committed
nothing is a gap of width one. Both axes have integer ticks.
"""

from __future__ import annotations

import numpy as np

from dllm_jax.analysis.tokens import Decode, generated_ids, token_texts
from dllm_jax.analysis.zones import Zone, confusion_zones
from dllm_jax.errors import ConfigError

CURVES = (("entropy", "H_t (entropy)"), ("margin", "CM_t (margin)"), ("roec", "RoEC_t"))
ZONE_GID = "confusion-zone"  # the shaded spans carry this gid (tests find them by it)


def stairs(values_T: np.ndarray, valid_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x, y`` of a line holding ``values_T[t]`` over ``[t, t + 1)`` at each valid step,
    broken (NaN) across invalid steps."""
    xs, ys = [], []
    for t in np.flatnonzero(valid_T):
        if xs and xs[-1] != t:  # an invalid step before this one: break the line
            xs.append(np.nan)
            ys.append(np.nan)
        xs += [t, t + 1]
        ys += [values_T[t], values_T[t]]
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def trajectory_figure(trajectory, row: int = 0, *, tokens: np.ndarray | None = None,
                      decode: Decode | None = None, threshold: float = 1.0,
                      title: str | None = None):
    """The figure :func:`plot_trajectory` saves, and the zones of ``row``.

    Returns:
      ``(figure, zones)``: a ``matplotlib.figure.Figure`` (not registered with pyplot; axes:
      commit step, confidence, then one per curve of :data:`CURVES`) and the row's zones.
    """
    import matplotlib
    from matplotlib.colors import BoundaryNorm, Normalize
    from matplotlib.figure import Figure

    smap = np.asarray(trajectory.step_map)[row]
    g, num_steps = smap.shape[0], np.asarray(trajectory.entropy).shape[1]
    if decode is not None and tokens is None:
        raise ConfigError("plot_trajectory: decode needs tokens (the generated ids)")
    texts = None if tokens is None else token_texts(generated_ids(tokens, g)[row], decode)
    committed = smap >= 0
    conf = np.where(committed, np.asarray(trajectory.confidence, np.float64)[row], np.nan)
    valid = np.asarray(trajectory.valid, bool)[row]
    zones = confusion_zones(np.asarray(trajectory.roec)[row], np.asarray(trajectory.margin)[row],
                            threshold, valid)

    fig = Figure(figsize=(float(np.clip(0.3 * g + 2, 8, 30)), 8.5), layout="constrained")
    ax_step, ax_conf, *curve_axes = fig.subplots(2 + len(CURVES), 1,
                                                 height_ratios=(1, 1) + (1,) * len(CURVES))
    step_cmap = matplotlib.colormaps["viridis"].resampled(max(num_steps, 1))
    step_norm = BoundaryNorm(np.arange(-0.5, num_steps), step_cmap.N)
    im = ax_step.imshow(np.where(committed, smap, np.nan)[None], aspect="auto", cmap=step_cmap,
                        norm=step_norm)
    fig.colorbar(im, ax=ax_step, fraction=0.02, label="commit step",
                 ticks=_integer_ticks(0, num_steps - 1)).minorticks_off()  # none at t +- 0.5
    im = ax_conf.imshow(conf[None], aspect="auto", cmap="magma", norm=Normalize(0.0, 1.0))
    fig.colorbar(im, ax=ax_conf, fraction=0.02, label="confidence")
    for a, label in ((ax_step, "commit step"), (ax_conf, "confidence")):
        a.set_yticks([])
        a.set_ylabel(label)
        a.set_xticks(_integer_ticks(0, g - 1))
    ax_conf.set_xlabel("generated position")
    if texts is not None:
        _cell_texts(fig, ax_step, texts, smap, step_cmap, step_norm)

    for ax, (name, label) in zip(curve_axes, CURVES, strict=True):
        ax.plot(*stairs(np.asarray(getattr(trajectory, name), np.float64)[row], valid))
        for z in zones:
            ax.axvspan(z.start, z.end, color="red", alpha=0.15, gid=ZONE_GID)
        ax.set_xlim(0, num_steps)
        ax.set_xticks(_integer_ticks(0, num_steps))
        ax.set_ylabel(label)
    curve_axes[0].set_title(f"row {row}: {len(zones)} confusion zone(s) (z > {threshold}, "
                            f"shaded)")
    curve_axes[-1].set_xlabel("denoising step t, drawn over [t, t+1) "
                              "(gaps: steps that committed nothing)")
    if title:
        fig.suptitle(title)
    return fig, zones


def _integer_ticks(lo: int, hi: int, nbins: int = 10) -> list[int]:
    """The multiples of 1, 2 or 5 times a power of ten in ``[lo, hi]``, at most ``nbins`` + 1."""
    k = every = 1
    while (hi - lo) / every > nbins:
        every = (1, 2, 5)[k % 3] * 10 ** (k // 3)
        k += 1
    return list(range(lo + (-lo) % every, hi + 1, every))


def _cell_texts(fig, ax, texts: list[str], smap: np.ndarray, cmap, norm) -> None:
    """Writes each committed position's token on its cell, dark or light against the cell."""
    cell_pt = fig.get_figwidth() * 72 * 0.85 / max(len(texts), 1)
    size = float(np.clip(cell_pt * 0.45, 4, 9))
    for i, (text, step) in enumerate(zip(texts, smap, strict=True)):
        if step < 0:
            continue
        r, g, b, _ = cmap(norm(step))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        ax.text(i, 0, text if len(text) <= 8 else text[:7] + "…", ha="center", va="center",
                fontsize=size, rotation=0 if cell_pt >= 14 else 90, parse_math=False,
                color="white" if dark else "black", clip_on=True)


def plot_trajectory(trajectory, path: str, row: int = 0, *, tokens: np.ndarray | None = None,
                    decode: Decode | None = None, threshold: float = 1.0,
                    title: str | None = None) -> list[Zone]:
    """Writes a PNG of one row's trajectory and returns its confusion zones.

    Top: each generated position's commit step (colour; the committed token's text on the cell
    when ``tokens`` are given) and confidence. Bottom: ``H_t``, ``CM_t`` and ``RoEC_t`` with
    step ``t`` drawn over ``[t, t + 1)``, the confusion zones shaded over exactly their steps
    and the steps that committed nothing left as gaps.

    Args:
      trajectory: a :class:`dllm_jax.sampling.Trajectory`.
      path: the PNG to write.
      row: which batch row.
      tokens: ids ``[B, L]`` whose last ``G`` columns are the generated positions (the
        sampler's ``sequences`` as they are, or the completions).
      decode: ``tokenizer.decode`` (a list of ids to text) for the cell text; without it the
        ids are written.
      threshold: the zones' z-score threshold (:func:`confusion_zones`).
      title: a title over the figure.
    """
    fig, zones = trajectory_figure(trajectory, row, tokens=tokens, decode=decode,
                                   threshold=threshold, title=title)
    fig.savefig(path, dpi=100)
    return zones

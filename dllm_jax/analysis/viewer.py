"""The trajectory viewer: one self-contained HTML page (docs/analysis.md, "Viewer").

:func:`viewer_data` gathers what the page shows as plain JSON-ready values; :func:`write_viewer`
inlines it with the page's own CSS and script (``viewer_page.py``): no external URL, so the file
opens offline from disk. Token text reaches the page only as JSON data, written into the DOM
with ``textContent``, so no token can inject markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dllm_jax.analysis.tokens import Decode, token_texts
from dllm_jax.analysis.viewer_page import render
from dllm_jax.analysis.zones import confusion_zones
from dllm_jax.errors import ConfigError
from dllm_jax.sampling.record import IMHRecord, Trajectory

IMH_NOTE = ("IMH keeps the committed chain state of each block, shown here, and per block the "
            "acceptance rate (accepted moves / (K - 1)); its record does not keep the candidate "
            "blocks, so rejected candidates are not shown.")
TRAJECTORY_NOTE = ("A position shows its token from the step it was committed at, coloured by the "
                   "model's probability of it then. In the curves step t spans [t, t+1); red "
                   "bands: confusion zones; grey bands: steps that committed nothing; blue: "
                   "the current step (click a curve to move there).")
FINAL_NOTE = "No trajectory was recorded (generate(..., record=True) records one)."


def _floats(a: np.ndarray, valid: np.ndarray | None = None, digits: int = 4) -> list:
    """Rounded floats, ``None`` where not finite or not valid (JSON has no NaN)."""
    a = np.asarray(a, np.float64)
    ok = np.isfinite(a) if valid is None else np.isfinite(a) & valid
    return [round(float(x), digits) if k else None for x, k in zip(a, ok, strict=True)]


def _checked_rows(rows: Sequence[int] | None, b: int) -> list[int]:
    rows = list(range(b)) if rows is None else [int(r) for r in rows]
    if not rows or any(not 0 <= r < b for r in rows):
        raise ConfigError(f"viewer rows {rows} must be a non-empty list of rows in [0, {b})")
    return rows


def _check_shape(name: str, a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if a.shape != shape:
        raise ConfigError(f"viewer {name} has shape {a.shape}, expected {shape}")
    return a


def _trajectory_fields(traj: Trajectory, row: int, b: int, g: int, threshold: float) -> dict:
    step_map = _check_shape("trajectory.step_map", np.asarray(traj.step_map), (b, g))[row]
    valid = np.asarray(traj.valid, bool)[row]
    roec, margin = np.asarray(traj.roec)[row], np.asarray(traj.margin)[row]
    zones = confusion_zones(roec, margin, threshold, valid)
    return {"step": [int(s) for s in step_map],
            "conf": _floats(np.asarray(traj.confidence)[row], step_map >= 0),
            "valid": [bool(v) for v in valid],
            "curves": {"H": _floats(np.asarray(traj.entropy)[row], valid),
                       "CM": _floats(margin, valid), "RoEC": _floats(roec, valid)},
            "zones": [[z.start, z.end, round(z.peak, 3)] for z in zones]}


def _imh_fields(imh: IMHRecord, row: int, b: int, g: int) -> dict:
    acc = np.asarray(imh.acceptance, np.float64)
    if acc.ndim != 2 or acc.shape[0] != b or acc.shape[1] == 0 or g % acc.shape[1]:
        raise ConfigError(f"viewer imh.acceptance has shape {acc.shape}, expected [{b}, "
                          f"num_blocks] with num_blocks dividing {g} generated positions")
    return {"acceptance": _floats(acc[row], digits=3),
            "log_prob": _floats(np.asarray(imh.log_prob).reshape(b)[row:row + 1])[0],
            "block_length": g // acc.shape[1]}


def _alternatives(alternatives: tuple[np.ndarray, np.ndarray], row: int, b: int, g: int,
                  decode: Decode | None) -> list[list[list]]:
    ids, probs = (np.asarray(a) for a in alternatives)
    k = ids.shape[-1] if ids.ndim == 3 else 0
    _check_shape("alternatives ids", ids, (b, g, k))
    _check_shape("alternatives probs", probs, (b, g, k))
    texts = token_texts(ids[row].reshape(-1), decode)
    return [[[texts[i * k + j], round(float(probs[row, i, j]), 4)] for j in range(k)]
            for i in range(g)]


def viewer_data(trajectory: Trajectory | IMHRecord | None, sequences: np.ndarray,
                prompt_length: int, decode: Decode | None = None,
                rows: Sequence[int] | None = None, title: str | None = None,
                alternatives: tuple[np.ndarray, np.ndarray] | None = None,
                imh: IMHRecord | None = None, threshold: float = 1.0) -> dict:
    """What the page shows, as JSON-ready values (see :func:`write_viewer` for the args).

    ``kind`` is ``"trajectory"`` (a per-step record), ``"imh"`` (an :class:`IMHRecord`) or
    ``"final"`` (no record: the completions only). Each row holds the prompt's text, the
    generated ids and their text, and for a trajectory each position's commit step and
    confidence, the valid steps, the ``H`` / ``CM`` / ``RoEC`` curves (``None`` at invalid
    steps) and the confusion zones ``[start, end, peak]``; for IMH the per-block acceptance.
    """
    if isinstance(trajectory, IMHRecord):  # what generate() returns for IMH
        trajectory, imh = None, imh if imh is not None else trajectory
    if trajectory is not None and imh is not None:
        raise ConfigError("viewer: pass a Trajectory or an IMHRecord, not both")
    seqs = np.asarray(sequences)
    if seqs.ndim != 2 or not 0 <= prompt_length < seqs.shape[1]:
        raise ConfigError(f"viewer sequences have shape {seqs.shape}; prompt_length "
                          f"{prompt_length} must leave at least one generated position")
    b, g = seqs.shape[0], seqs.shape[1] - prompt_length
    kind = "trajectory" if trajectory is not None else "imh" if imh is not None else "final"
    out_rows = []
    for r in _checked_rows(rows, b):
        ids = seqs[r, prompt_length:]
        prompt = seqs[r, :prompt_length].tolist()
        row = {"row": r, "ids": [int(i) for i in ids], "tokens": token_texts(ids, decode),
               "prompt": decode(prompt) if decode else " ".join(map(str, prompt))}
        if trajectory is not None:
            row.update(_trajectory_fields(trajectory, r, b, g, threshold))
        if imh is not None:
            row.update(_imh_fields(imh, r, b, g))
        if alternatives is not None:
            row["alts"] = _alternatives(alternatives, r, b, g, decode)
        out_rows.append(row)
    num_steps = int(np.asarray(trajectory.entropy).shape[1]) if trajectory is not None else 0
    note = {"trajectory": TRAJECTORY_NOTE, "imh": IMH_NOTE, "final": FINAL_NOTE}[kind]
    return {"title": title or f"dllm-jax trajectory viewer ({kind})", "kind": kind,
            "num_steps": num_steps, "prompt_length": int(prompt_length), "gen_length": g,
            "threshold": threshold, "note": note, "rows": out_rows}


def write_viewer(path: str | Path, trajectory: Trajectory | IMHRecord | None,
                 sequences: np.ndarray, prompt_length: int, decode: Decode | None = None,
                 rows: Sequence[int] | None = None, title: str | None = None,
                 alternatives: tuple[np.ndarray, np.ndarray] | None = None,
                 imh: IMHRecord | None = None, threshold: float = 1.0) -> Path:
    """Writes the viewer page for some rows of one ``generate`` call and returns its path.

    The page shows each row's completion as it forms (a step slider and a play button; at step
    ``t`` a position shows its token when committed at a step ``<= t``, else a mask glyph),
    each token coloured by its confidence, the ``H_t``, ``CM_t``, ``RoEC_t`` curves with the
    confusion zones and the empty steps, and on hover a position's commit step and top
    alternatives. For IMH it shows the committed completion and each block's acceptance rate.

    Args:
      path: the ``.html`` file to write.
      trajectory: ``GenerateOutput.trajectory``: a :class:`Trajectory`, an
        :class:`IMHRecord` (read as ``imh``) or None (no record: completions only).
      sequences: ``GenerateOutput.sequences`` ``[B, P + G]``.
      prompt_length: ``P``.
      decode: ``tokenizer.decode`` (a list of ids to text); without it ids are shown.
      rows: the batch rows to show side by side (None: all).
      title: the page title.
      alternatives: ``(ids, probs)``, each ``[B, G, k]``: each position's top-k candidates
        when it was committed, listed on hover.
      imh: IMH's :class:`IMHRecord`.
      threshold: the confusion zones' z-score threshold.
    """
    data = viewer_data(trajectory, sequences, prompt_length, decode, rows, title,
                       alternatives, imh, threshold)
    path = Path(path)
    path.write_text(render(data), encoding="utf-8")
    return path

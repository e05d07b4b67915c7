"""Trajectory analysis on the host (docs/analysis.md).

``zones`` (step metrics, z-scores, confusion zones, their features and AUCs), ``plot`` (the
static PNG of one trajectory), ``viewer`` (a self-contained HTML page to watch completions
form), ``tokens`` (token text for both).
"""

from dllm_jax.analysis.plot import plot_trajectory, trajectory_figure
from dllm_jax.analysis.viewer import viewer_data, write_viewer
from dllm_jax.analysis.zones import (
    FEATURES,
    Zone,
    auc,
    confusion_zones,
    roec,
    step_metrics,
    zone_features,
    zone_report,
    zscore,
)

__all__ = ["FEATURES", "Zone", "auc", "confusion_zones", "plot_trajectory", "roec",
           "step_metrics", "trajectory_figure", "viewer_data", "write_viewer", "zone_features",
           "zone_report", "zscore"]

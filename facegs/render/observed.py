"""Which pixels of a novel view some capture view saw: the part of a render the fit can vouch for.

A fitted scene is constrained only where the capture views look. A sparse or frontal rig never sees
the chest below its frames' lower edge, the underside of the chin or the back of the head, yet a
render at pitch -40 or yaw 90 shows them: the Gaussians there hold whatever the optimiser left
(unconstrained depth, colour and class), and their labels are guesses. In the label-refinement
benchmark's user renders (clean labels) 8.6-11.2% of the truth foreground is such surface on the
frontal 8-view arc, 2.8-3.8% on nersemble and 0.3-0.5% on facescape; its labels are 66-67% right on
the arc, against 95% on the surface two or more views saw (docs/benchmarks.md, "What the capture
views saw").

:func:`observation_counts` measures it per pixel, from the scene alone (no ground truth): the
render's expected depth back-projects each covered pixel (``alpha >= alpha_min``) to a world point
``X``; a capture view *observes* ``X`` when ``X`` projects inside its image, in front of it, onto a
pixel the scene covers there (``alpha >= alpha_min``) whose expected depth equals ``X``'s camera z
to within ``depth_tol`` (relative): the surface the capture view saw there is ``X``'s, not
something in front of it (occlusion) nor nothing. The count of such views per pixel is returned:
0 = no capture view saw that surface (its label is the fit's guess), 1 = one view saw it (the label
is that view's; the depth is not triangulated), 2 or more = multi-view consensus.

Conventions: OpenCV cameras, world-to-camera [4, 4], pixel centres at +0.5 (pixel ``(x, y)`` is
the ray through ``(x + 0.5, y + 0.5)``), depth = camera z. The capture views are the reduced-size
renders :func:`facegs.headframe.visible.render_capture_views` already makes for the head frame
(nearest pixel; their ``K`` is scaled to their size). The relative tolerance is scale-free (any
world unit): 0.02 = 2 cm at 1 m, about a fifth of a head's depth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facegs.headframe.visible import ViewRender


def observation_counts(depth: np.ndarray, alpha: np.ndarray, K: np.ndarray, w2c: np.ndarray,
                       captures: Sequence[ViewRender], *, alpha_min: float = 0.5,
                       depth_tol: float = 0.02) -> np.ndarray:
    """Per pixel of a render, the number of ``captures`` that observed its surface (module docstring).

    ``depth`` [H, W] expected camera z of the render and ``alpha`` [H, W] its opacity; ``K`` [3, 3]
    and world-to-camera ``w2c`` [4, 4] its camera. Returns [H, W] uint8 counts (at most 255); pixels
    with ``alpha < alpha_min`` (nothing rendered) are 0.
    """
    depth = np.asarray(depth, np.float64)
    alpha = np.asarray(alpha)
    if depth.shape != alpha.shape or depth.ndim != 2:
        raise ValueError(f"depth and alpha must be the same [H, W], got {depth.shape} and {alpha.shape}")
    if not depth_tol > 0:
        raise ValueError(f"depth_tol must be > 0, got {depth_tol}")
    counts = np.zeros(depth.shape, np.int32)
    ys, xs = np.nonzero((alpha >= alpha_min) & (depth > 0) & np.isfinite(depth))
    if len(ys) == 0 or not captures:
        return counts.astype(np.uint8)
    K = np.asarray(K, np.float64)
    z = depth[ys, xs]
    cam = np.stack([(xs + 0.5 - K[0, 2]) / K[0, 0] * z, (ys + 0.5 - K[1, 2]) / K[1, 1] * z, z], axis=1)
    c2w = np.linalg.inv(np.asarray(w2c, np.float64))
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    n = np.zeros(len(world), np.int32)
    for cv in captures:
        q = world @ np.asarray(cv.w2c, np.float64)[:3, :3].T + np.asarray(cv.w2c, np.float64)[:3, 3]
        zq = q[:, 2]
        front = zq > 0
        safe = np.where(front, zq, 1.0)
        u = q[:, 0] / safe * cv.K[0, 0] + cv.K[0, 2]
        v = q[:, 1] / safe * cv.K[1, 1] + cv.K[1, 2]
        inside = front & (u >= 0) & (u < cv.width) & (v >= 0) & (v < cv.height)
        ui = np.clip(np.floor(u), 0, cv.width - 1).astype(np.int64)
        vi = np.clip(np.floor(v), 0, cv.height - 1).astype(np.int64)
        zc = cv.depth[vi, ui].astype(np.float64)
        seen = inside & (cv.alpha[vi, ui] >= alpha_min) & (np.abs(zc - zq) <= depth_tol * zq)
        n += seen
    counts[ys, xs] = np.minimum(n, 255)
    return counts.astype(np.uint8)


def unobserved_fraction(counts: np.ndarray, labels: np.ndarray) -> float | None:
    """Share of the labelled foreground (``labels > 0``) that no capture view observed (count 0);
    None without foreground."""
    fg = np.asarray(labels) > 0
    n = int(fg.sum())
    return round(float((fg & (np.asarray(counts) == 0)).sum()) / n, 4) if n else None

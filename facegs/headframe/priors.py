"""Head frames that do not depend on the labels: the capture rig's prior."""

from __future__ import annotations

import numpy as np

from facegs.core.cameras import optical_axes_focus
from facegs.headframe.frame import HeadFrame, HeadFrameError


def head_frame_from_cameras(world_to_cameras: np.ndarray) -> HeadFrame:
    """A rig prior for the head frame when the fitted scene shows too few face parts.

    ``world_to_cameras`` [V, 4, 4] (OpenCV). Origin: the point closest (least squares) to all
    optical axes; forward (+z): from there towards the mean camera centre (capture rigs surround
    the front of the face); up (+y): the cameras' mean image-up direction, orthogonalised; +x =
    up x forward (the subject's left). Only as good as the rig's centring on the face: yaw and
    pitch become rig-relative. ``diagnostics["source"] == "cameras"``.
    """
    T = np.asarray(world_to_cameras, dtype=np.float64)
    R = T[:, :3, :3]
    origin, _, centres, _ = optical_axes_focus(T)
    fwd = centres.mean(0) - origin
    if np.linalg.norm(fwd) < 1e-9:
        raise HeadFrameError("cameras surround the head evenly: no forward direction")
    fwd /= np.linalg.norm(fwd)
    up = -R[:, 1, :].mean(0)  # image up = camera -y
    up -= up.dot(fwd) * fwd
    if np.linalg.norm(up) < 1e-9:
        raise HeadFrameError("camera up directions are parallel to the forward direction")
    up /= np.linalg.norm(up)
    x = np.cross(up, fwd)
    M = np.eye(4)
    M[:3, 0], M[:3, 1], M[:3, 2], M[:3, 3] = x, up, fwd, origin
    return HeadFrame(world_from_head=M, diagnostics={"source": "cameras", "n_cameras": int(len(T))})

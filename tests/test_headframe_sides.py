"""facegs.headframe.sides: left/right logits made consistent with the head frame, Gaussian by Gaussian."""

import numpy as np
import torch

from facegs.core.labels import get_label_set
from facegs.headframe.sides import SideConfig, enforce_sides

LS = get_label_set("celebamask19")


def _frame(deg: float, origin) -> np.ndarray:
    a = np.radians(deg)  # a rotation about world y, then a shift: the frame is not the identity
    T = np.eye(4)
    T[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    T[:3, 3] = origin
    return T


def _params(head_x: list[float], classes: list[str], T: np.ndarray, runner_up: str | None = None):
    """One Gaussian per entry at head-frame (x, 0, 0.05), confident in its class (the pair's other
    class second when ``runner_up``), plus two opaque wide Gaussians at x = +-0.08 (the face's width)."""
    xs = list(head_x) + [0.08, -0.08]
    cls = list(classes) + ["skin", "skin"]
    head = np.stack([xs, np.zeros(len(xs)), np.full(len(xs), 0.05)], axis=1)
    world = head @ T[:3, :3].T + T[:3, 3]
    logits = torch.full((len(xs), LS.num_classes), -5.0)
    for i, c in enumerate(cls):
        logits[i, LS.index(c)] = 5.0
        if runner_up and c.startswith(("l_", "r_")):
            logits[i, LS.index(("r_" if c.startswith("l_") else "l_") + c[2:])] = 1.0
    return {"means": torch.as_tensor(world, dtype=torch.float32), "opacities": torch.full((len(xs),), 4.0),
            "logits": logits, "scales": torch.zeros(len(xs), 3)}


def test_wrong_side_parts_swap_and_right_side_parts_stay():
    T = _frame(35.0, [0.1, -0.2, 0.3])
    classes = ["r_eye", "l_eye", "l_brow", "r_brow", "l_ear", "r_ear", "nose", "r_eye"]
    xs = [0.03, 0.03, -0.03, -0.03, -0.07, 0.07, 0.03, 0.001]  # +x = the subject's left
    p = _params(xs, classes, T, runner_up="yes")
    out, stats = enforce_sides(p, T)
    got = [LS.classes[k] for k in out["logits"].argmax(1).tolist()]
    assert got[:8] == ["l_eye", "l_eye", "r_brow", "r_brow", "r_ear", "l_ear", "nose", "r_eye"]
    assert stats == {"sided": 7, "swapped": 4, "swapped_fraction": round(4 / 7, 4)}
    # a swap exchanges the two logits: the distribution keeps its shape
    i = 0
    assert out["logits"][i, LS.index("l_eye")] == 5.0 and out["logits"][i, LS.index("r_eye")] == 1.0
    assert out["means"] is p["means"] and torch.equal(p["logits"][0].argmax(), torch.tensor(LS.index("r_eye")))


def test_within_the_margin_and_when_disabled_nothing_changes():
    T = _frame(-20.0, [0.0, 0.0, 0.0])
    p = _params([0.004, -0.004], ["r_brow", "l_brow"], T)  # 0.004 < 0.03 x 0.16 face width
    out, stats = enforce_sides(p, T)
    assert torch.equal(out["logits"], p["logits"]) and stats["swapped"] == 0
    p = _params([0.05], ["r_eye"], T)
    out, stats = enforce_sides(p, T, SideConfig(enabled=False))
    assert out is p and stats["swapped"] == 0
    # a runner-up of the wrong side, not the argmax, is swapped too (it is not counted)
    p = _params([-0.05], ["skin"], T)
    p["logits"][0, LS.index("l_eye")] = 2.0
    out, stats = enforce_sides(p, T)
    assert out["logits"][0, LS.index("r_eye")] == 2.0 and out["logits"][0].argmax() == LS.index("skin")
    assert stats["swapped"] == 0 and stats["sided"] == 0

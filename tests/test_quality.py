"""Ground-truth-free quality terms (facegs.factory.quality) on renders whose answer is known."""

from __future__ import annotations

import numpy as np

from facegs.core.manifest import SubjectManifest, View
from facegs.factory.quality import face_parts, input_agreement
from facegs.headframe.visible import ViewRender
from facegs.label.views import ViewLabels

K_CLASSES, H, W = 19, 16, 16


def _subject(n: int) -> SubjectManifest:
    views = tuple(View(view_id=f"v{i}", image=f"images/v{i}.png", width=W, height=H, K=np.eye(3),
                       world_to_camera=np.eye(4)) for i in range(n))
    return SubjectManifest(subject_id="q", label_set="celebamask19", views=views)


def _render(probs: np.ndarray) -> ViewRender:
    return ViewRender(K=np.eye(3), w2c=np.eye(4), width=W, height=H, probs=probs.astype(np.float16),
                      alpha=np.ones((H, W), np.float32), depth=np.ones((H, W), np.float32))


def test_margin_ignores_uniform_label_noise_and_sees_ties():
    """A consensus that absorbed 50% uniform label noise (p = 0.5 one-hot + 0.5 / K) leads as clearly
    as a clean one: its margin stays near 1 while its mean top probability halves; two classes tied
    at 0.5 give a margin of 0."""
    truth = np.where(np.arange(W)[None, :] < W // 2, 1, 17).repeat(H, 0).astype(np.uint8)  # skin | hair
    onehot = np.eye(K_CLASSES)[truth]
    labels = {"v0": ViewLabels(truth, np.ones((H, W), np.float32))}
    clean = input_agreement(_subject(1), [_render(onehot)], labels)
    noisy = input_agreement(_subject(1), [_render(0.5 * onehot + 0.5 / K_CLASSES)], labels)
    tie = np.zeros((H, W, K_CLASSES))
    tie[..., 1] = tie[..., 17] = 0.5
    tied = input_agreement(_subject(1), [_render(tie)], labels)
    assert clean["consensus_margin"] > 0.99 and clean["consensus_confidence"] > 0.99
    assert noisy["consensus_confidence"] < 0.6 and noisy["consensus_margin"] > 0.9
    assert tied["consensus_margin"] < 0.01
    assert clean["input_iou"]["skin"] == 1.0 and clean["input_iou"]["hair"] == 1.0


def test_face_parts_counts_the_parts_every_face_shows():
    """Eyes count when glasses hide them; ears never count (hair hides them); a part no landmark
    was found for lowers the share by 1/6; nothing measured is None (the score then takes 0)."""
    every = ["l_eye", "r_eye", "l_brow", "r_brow", "nose", "mouth"]
    assert face_parts(every) == 1.0
    assert face_parts(["eye_g", "l_brow", "r_brow", "nose", "mouth"]) == 1.0
    assert face_parts(["l_ear", "r_ear", "nose", "mouth"]) == round(2 / 6, 4)
    assert face_parts(["l_eye", "l_brow", "nose", "mouth"]) == round(4 / 6, 4)
    assert face_parts([]) == 0.0 and face_parts(None) is None

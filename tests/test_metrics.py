import json

import numpy as np
import pytest
import torch

from facegs.core.labels import get_label_set
from facegs.evaluate.confusion import ConfusionMatrix, component_counts
from facegs.evaluate.metrics import PoseBinnedEvaluator, summary_to_markdown
from facegs.evaluate.plots import plot_f1_vs_yaw
from facegs.evaluate.report import save_evaluation

IGN = 255
# Hand-made 3-class example (rows GT, columns prediction):
#   GT 0: pred 0, 1, 0  -> [2, 1, 0]
#   GT 1: pred 1, 2     -> [0, 1, 1]
#   GT 2: pred 2, 2, 0  -> [1, 0, 2]
#   last pixel ignored
TARGET = np.array([0, 0, 0, 1, 1, 2, 2, 2, IGN])
PRED = np.array([0, 1, 0, 1, 2, 2, 2, 0, 1])
EXPECT = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])


def test_confusion_matrix_matches_hand_computation():
    cm = ConfusionMatrix(3).update(PRED.reshape(3, 3), TARGET.reshape(3, 3))
    assert np.array_equal(cm.matrix, EXPECT)
    # TP = [2, 1, 2], |GT| = [3, 2, 3], |Pred| = [3, 2, 3]
    np.testing.assert_allclose(cm.f1_per_class(), [4 / 6, 2 / 4, 4 / 6])
    np.testing.assert_allclose(cm.iou_per_class(), [2 / 4, 1 / 3, 2 / 4])
    assert cm.mean_f1() == pytest.approx((0.5 + 4 / 6) / 2)  # background (class 0) excluded
    assert cm.miou() == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)  # background included
    assert cm.pixel_accuracy() == pytest.approx(5 / 8)
    # merged region {1, 2}: TP = 1 + 1 + 0 + 2 = 4, |GT| = 5, |Pred| = 5
    assert cm.merged_f1([1, 2]) == pytest.approx(0.8)
    assert cm.group_f1([1, 2]) == pytest.approx((0.5 + 4 / 6) / 2)


def test_torch_input_and_merge_equal_numpy():
    a = ConfusionMatrix(3).update(torch.from_numpy(PRED[:5]), torch.from_numpy(TARGET[:5]))
    b = ConfusionMatrix(3).update(PRED[5:], TARGET[5:])
    assert np.array_equal(a.merge(b).matrix, EXPECT)


def test_absent_classes_and_invalid_predictions():
    # 4 classes; class 3 absent from both GT and prediction: excluded from means
    t = np.array([0, 1, 1, 2])
    p = np.array([0, 1, 1, 2])
    cm = ConfusionMatrix(4).update(p, t)
    f1 = cm.f1_per_class()
    assert np.isnan(f1[3]) and cm.mean_f1() == 1.0 and cm.miou() == 1.0
    # a prediction outside [0, K) on a valid pixel is an error for its GT class
    cm = ConfusionMatrix(4).update(np.array([0, 1, IGN, 2]), t)
    assert cm.invalid_pred.tolist() == [0, 1, 0, 0]
    assert cm.f1_per_class()[1] == pytest.approx(2 * 1 / (2 + 1))
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)


def test_background_exclusion_in_mean_f1():
    t = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 0, 0, 1])
    cm = ConfusionMatrix(2).update(p, t)
    assert cm.mean_f1() == pytest.approx(2 / 3)  # class 1 only: 2*1 / (2 + 1)
    cm_bg = ConfusionMatrix(2, background=None).update(p, t)
    assert cm_bg.mean_f1() == pytest.approx((2 / 3 + 8 / 9) / 2)


def test_confusion_matrix_json_round_trip():
    cm = ConfusionMatrix(3).update(np.array([0, 5, 2]), np.array([0, 1, 2]))
    cm2 = ConfusionMatrix.from_dict(json.loads(json.dumps(cm.to_dict())))
    assert np.array_equal(cm2.matrix, cm.matrix) and np.array_equal(cm2.invalid_pred, cm.invalid_pred)


def test_pose_bins():
    ev = PoseBinnedEvaluator("celebamask19")
    img = np.zeros((2, 2), np.uint8)
    for yaw, pitch in [(-70, 0), (10, 20), (90, -15), (30, -90), (120, 95), (75, None)]:
        ev.update(img, img, yaw=yaw, pitch=pitch)
    s = ev.summary()
    assert [b["label"] for b in s["yaw"]] == ["0-30", "30-60", "60-75", "75-90"]
    # 10; 30 -> 30-60; -70 -> 60-75; 75, 90 and 120 (beyond the profile) -> 75-90
    assert [b["n_images"] for b in s["yaw"]] == [1, 1, 1, 3]
    assert [b["n_images"] for b in s["pitch"]] == [1, 0, 2, 1, 0]  # -90, (-15, 0), 20
    assert s["n_out_of_range"] == {"yaw": 0, "pitch": 1}
    assert s["overall"]["n_images"] == 6
    ev2 = PoseBinnedEvaluator("celebamask19", yaw_bins=(0, 45, 90), pitch_bins=None)
    ev2.update(img, img, yaw=-45.0, pitch=10.0)
    assert [b["n_images"] for b in ev2.summary()["yaw"]] == [0, 1] and ev2.summary()["pitch"] == []


def test_cc_count_error_on_hand_made_example():
    gt = np.zeros((6, 8), np.uint8)
    gt[1:5, 1:4] = 1  # one class-1 blob; background one component
    pred = np.zeros_like(gt)
    pred[1:5, 1:3] = 1  # 8 px blob
    pred[1, 6] = 1  # 1 px speckle
    pred[4, 5:7] = 1  # 2 px blob
    assert component_counts(pred, 19).tolist()[:2] == [1, 3]
    ev = PoseBinnedEvaluator("celebamask19")
    ev.update(pred, gt, yaw=0, pitch=0)  # class 0: |1-1| = 0, class 1: |3-1| = 2
    assert ev.summary()["overall"]["cc_error"] == pytest.approx(1.0)
    assert ev.summary()["overall"]["cc_error_per_class"]["skin"] == pytest.approx(2.0)
    ev.update(gt, gt, yaw=50, pitch=0)  # two more counted pairs with error 0
    assert ev.summary()["overall"]["cc_error"] == pytest.approx(0.5)
    assert ev.summary()["yaw"][1]["cc_error"] == pytest.approx(0.0)
    ev_min = PoseBinnedEvaluator("celebamask19", min_area=2)
    ev_min.update(pred, gt, yaw=0, pitch=0)  # the 1 px speckle no longer counts: |2-1| = 1
    assert ev_min.summary()["overall"]["cc_error"] == pytest.approx(0.5)
    # ignored GT pixels are removed from the prediction too
    gt_ign = gt.copy()
    gt_ign[:, 4:] = IGN
    ev_ign = PoseBinnedEvaluator("celebamask19")
    ev_ign.update(pred, gt_ign, yaw=0, pitch=0)  # pred class 1 left: one blob (cols 1-2)
    assert ev_ign.summary()["overall"]["cc_error_per_class"]["skin"] == pytest.approx(0.0)


def _filled_evaluator() -> PoseBinnedEvaluator:
    ev = PoseBinnedEvaluator("celebamask19")
    ev.update(PRED[:8].reshape(2, 4), TARGET[:8].reshape(2, 4), yaw=-70.0, pitch=0.0)
    return ev


def test_summary_json_round_trip_and_markdown_numbers(tmp_path):
    ev = _filled_evaluator()
    s = ev.summary()
    # classes 0, 1, 2 are background, skin, l_brow: the hand-made example again
    assert s["overall"]["mean_f1"] == pytest.approx((0.5 + 4 / 6) / 2)
    assert s["yaw"][2]["mean_f1"] == pytest.approx((0.5 + 4 / 6) / 2) and s["yaw"][0]["mean_f1"] is None
    assert s["overall"]["f1_per_class"]["nose"] is None
    assert s["overall"]["group_f1"]["brows"] == pytest.approx(4 / 6)  # r_brow absent, l_brow 4/6
    assert json.loads(json.dumps(s, allow_nan=False)) == s
    ev2 = PoseBinnedEvaluator.from_state_dict(json.loads(json.dumps(ev.state_dict())))
    assert ev2.summary() == s
    md = ev.to_markdown("test")
    for number in ("58.33", "44.44", "62.50", "66.67", "60-75"):
        assert number in md
    assert md == summary_to_markdown(s, "test")
    paths = save_evaluation(ev, tmp_path / "report", name="base")
    assert json.loads(paths["json"].read_text())["summary"] == s
    assert PoseBinnedEvaluator.load(tmp_path / "report").summary() == s
    assert "58.33" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 1000
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_evaluators_equals_single_pass():
    a, b, both = (PoseBinnedEvaluator("celebamask19") for _ in range(3))
    rng = np.random.default_rng(0)
    maps = [(rng.integers(0, 4, (8, 8)), rng.integers(0, 4, (8, 8)), float(rng.uniform(-90, 90))) for _ in range(4)]
    for k, (p, t, yaw) in enumerate(maps):
        (a if k % 2 else b).update(p, t, yaw=yaw, pitch=0)
        both.update(p, t, yaw=yaw, pitch=0)
    assert a.merge(b).summary() == both.summary()


def test_plot_two_arms(tmp_path):
    base = _filled_evaluator().summary()
    ft = PoseBinnedEvaluator(get_label_set("celebamask19"))
    ft.update(TARGET[:8].reshape(2, 4), TARGET[:8].reshape(2, 4), yaw=10.0, pitch=0.0)
    ft.update(TARGET[:8].reshape(2, 4), TARGET[:8].reshape(2, 4), yaw=80.0, pitch=0.0)
    out = plot_f1_vs_yaw({"base": base, "fine-tuned": ft.summary()}, tmp_path / "cmp.png")
    assert out.stat().st_size > 1000

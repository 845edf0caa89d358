import numpy as np

from yoloforge.detections import Boxes, agreement, decode, iou_matrix


def _rows(boxes):
    """(cx, cy, w, h, objectness, class probabilities...) rows."""
    return np.array(boxes, dtype=np.float32)


def test_iou():
    a = np.array([[0, 0, 2, 2]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 7, 1.0, 0.0]])


def test_decode_thresholds_and_suppresses_per_class():
    rows = _rows(
        [
            [0.5, 0.5, 0.2, 0.2, 0.9, 0.9, 0.1],  # class 0, score 0.81
            [0.51, 0.5, 0.2, 0.2, 0.8, 0.9, 0.1],  # overlaps the first, same class: suppressed
            [0.51, 0.5, 0.2, 0.2, 0.8, 0.1, 0.9],  # same place, other class: kept
            [0.1, 0.1, 0.1, 0.1, 0.2, 0.9, 0.9],  # under the threshold (0.18)
        ]
    )
    boxes = decode(rows, score_threshold=0.25)
    assert boxes.classes.tolist() == [0, 1]
    np.testing.assert_allclose(boxes.scores, [0.81, 0.72], rtol=1e-6)
    np.testing.assert_allclose(boxes.xyxy[0], [0.4, 0.4, 0.6, 0.6], atol=1e-6)


def test_agreement_counts_same_class_matches():
    reference = Boxes(np.array([[0, 0, 1, 1], [2, 2, 3, 3]], float), np.array([0.9, 0.8]), np.array([1, 2]))
    shifted = Boxes(
        np.array([[0, 0, 1, 1], [2.8, 2.8, 3.8, 3.8]], float), np.array([0.9, 0.8]), np.array([1, 2])
    )
    wrong_class = Boxes(reference.xyxy, reference.scores, np.array([1, 3]))
    assert agreement([reference], [reference]) == {
        "reference_boxes": 2,
        "boxes": 2,
        "precision": 1.0,
        "recall": 1.0,
    }
    assert agreement([reference], [shifted])["recall"] == 0.5
    assert agreement([reference], [wrong_class])["precision"] == 0.5


def _per_class_nms(rows, score_threshold, iou_threshold):
    """The textbook definition: NMS within each class separately, then all kept boxes by score."""
    kept = []
    for cls in range(rows.shape[1] - 5):
        scores = rows[:, 4] * rows[:, 5 + cls]
        xyxy = np.concatenate([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2], axis=1)
        order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
        mine = []
        for i in order:
            if all(iou_matrix(xyxy[i : i + 1], xyxy[j : j + 1])[0, 0] <= iou_threshold for j in mine):
                mine.append(i)
        kept += [(scores[i], cls, *xyxy[i]) for i in mine]
    return sorted(kept, key=lambda k: -k[0])


def test_decode_is_per_class_nms_and_the_candidate_cap_keeps_the_top_boxes(monkeypatch):
    rng = np.random.default_rng(0)
    rows = np.concatenate(
        [rng.uniform(0.3, 0.7, (400, 2)), rng.uniform(0.05, 0.3, (400, 2)), rng.uniform(0, 1, (400, 5))],
        axis=1,
    ).astype(np.float32)
    expected = _per_class_nms(rows, 0.01, 0.5)
    boxes = decode(rows, 0.01, 0.5, max_boxes=1000)
    assert len(boxes) == len(expected) > 100
    np.testing.assert_allclose(boxes.scores, [k[0] for k in expected], rtol=1e-6)
    assert boxes.classes.tolist() == [k[1] for k in expected]
    np.testing.assert_allclose(boxes.xyxy, [k[2:] for k in expected], atol=1e-6)
    # With far more candidates than NMS considers, the highest-scoring kept boxes stay the same.
    monkeypatch.setattr("yoloforge.detections.MAX_NMS_CANDIDATES", 500)
    capped = decode(rows, 0.01, 0.5, max_boxes=30)
    np.testing.assert_allclose(capped.xyxy, boxes.xyxy[:30], atol=1e-6)

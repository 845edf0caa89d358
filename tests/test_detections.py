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

"""From the `detections` tensor to boxes: thresholding, class-aware NMS, and agreement scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Boxes:
    """Detections of one image: xyxy boxes normalized to the input, scores, class ids."""

    xyxy: np.ndarray  # [n, 4]
    scores: np.ndarray  # [n]
    classes: np.ndarray  # [n]

    def __len__(self) -> int:
        return len(self.scores)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes a [n, 4] and b [m, 4]."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


# NMS considers at most this many candidates, the highest-scoring: at COCO's confidence 0.001 an
# untrained or synthetic model has hundreds of thousands.
MAX_NMS_CANDIDATES = 10_000


def decode(
    detections: np.ndarray, score_threshold: float = 0.25, iou_threshold: float = 0.45, max_boxes: int = 300
) -> Boxes:
    """One image's rows [boxes, 5 + classes] -> boxes after class-aware NMS.

    A box's score for a class is objectness x class probability, as Darknet scores them; every
    class over the threshold gives a candidate, and a box suppresses only lower-scoring candidates
    of its own class. Candidates are taken in descending score, so NMS stops at `max_boxes`.
    """
    rows = np.asarray(detections, dtype=np.float32)
    scores = rows[:, 4:5] * rows[:, 5:]
    box_index, class_index = np.nonzero(scores > score_threshold)
    candidate_scores = scores[box_index, class_index]
    if len(candidate_scores) > MAX_NMS_CANDIDATES:
        top = np.argpartition(-candidate_scores, MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
        box_index, class_index, candidate_scores = box_index[top], class_index[top], candidate_scores[top]
    centre, size = rows[box_index, :2], rows[box_index, 2:4]
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    order = np.argsort(-candidate_scores, kind="stable")
    kept = []
    while order.size and len(kept) < max_boxes:
        best, rest = order[0], order[1:]
        kept.append(best)
        same_class = np.flatnonzero(class_index[rest] == class_index[best])
        overlaps = iou_matrix(xyxy[best : best + 1], xyxy[rest[same_class]])[0]
        suppressed = np.zeros(rest.size, dtype=bool)
        suppressed[same_class[overlaps > iou_threshold]] = True
        order = rest[~suppressed]
    kept = np.array(kept, dtype=np.int64)
    return Boxes(xyxy[kept].reshape(-1, 4), candidate_scores[kept], class_index[kept])


def match(reference: Boxes, candidate: Boxes, iou_threshold: float = 0.5) -> int:
    """How many candidate boxes match a distinct reference box of the same class (greedy by score)."""
    if not len(reference) or not len(candidate):
        return 0
    ious = iou_matrix(candidate.xyxy, reference.xyxy)
    ious[candidate.classes[:, None] != reference.classes[None, :]] = 0
    taken = np.zeros(len(reference), dtype=bool)
    matched = 0
    for row in np.argsort(-candidate.scores, kind="stable"):
        overlaps = np.where(taken, 0, ious[row])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold:
            taken[best] = True
            matched += 1
    return matched


def agreement(reference: list[Boxes], candidate: list[Boxes], iou_threshold: float = 0.5) -> dict[str, float]:
    """Precision and recall of `candidate` taking `reference`'s boxes as ground truth."""
    matched = sum(match(r, c, iou_threshold) for r, c in zip(reference, candidate, strict=True))
    reference_count = sum(len(r) for r in reference)
    candidate_count = sum(len(c) for c in candidate)
    return {
        "reference_boxes": reference_count,
        "boxes": candidate_count,
        "precision": matched / candidate_count if candidate_count else float(reference_count == 0),
        "recall": matched / reference_count if reference_count else float(candidate_count == 0),
    }


def to_source_pixels(
    boxes: Boxes, source_w: int, source_h: int, width: int, height: int, letterbox: bool
) -> Boxes:
    """Boxes normalized to a width x height input, the source image letterboxed or stretched
    into it (images.input_placement) -> pixels of the source image."""
    from yoloforge.images import input_placement

    new_w, new_h, left, top = input_placement(source_w, source_h, width, height, letterbox)
    input_to_source = np.array([source_w / new_w, source_h / new_h] * 2)
    xyxy = (
        boxes.xyxy.astype(np.float64) * [width, height, width, height] - [left, top, left, top]
    ) * input_to_source
    xyxy = np.clip(xyxy, 0, [source_w, source_h, source_w, source_h])
    return Boxes(xyxy.reshape(-1, 4), boxes.scores, boxes.classes)


def above(boxes: Boxes, score_threshold: float) -> Boxes:
    """The boxes scoring over `score_threshold`."""
    keep = boxes.scores > score_threshold
    return Boxes(boxes.xyxy[keep], boxes.scores[keep], boxes.classes[keep])


RECALL_POINTS = np.linspace(0, 1, 101)  # COCO's interpolation points


def _class_hits(reference: list[Boxes], candidate: list[Boxes], cls: int, iou_threshold: float):
    """Scores of `candidate`'s boxes of class `cls` and whether each matches a reference box (COCO
    matching: by descending score, the unmatched reference box of highest IoU)."""
    scores, hits = [], []
    for truth, found in zip(reference, candidate, strict=True):
        truth_xyxy = truth.xyxy[truth.classes == cls]
        mine = found.classes == cls
        order = np.argsort(-found.scores[mine], kind="stable")
        ious = iou_matrix(found.xyxy[mine][order], truth_xyxy)
        taken = np.zeros(len(truth_xyxy), dtype=bool)
        for overlaps in ious:
            overlaps = np.where(taken, -1.0, overlaps)
            best = int(np.argmax(overlaps)) if len(overlaps) else -1
            hit = best >= 0 and overlaps[best] >= iou_threshold
            if hit:
                taken[best] = True
            hits.append(hit)
        scores.extend(found.scores[mine][order])
    return np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool)


def mean_average_precision(
    reference: list[Boxes], candidate: list[Boxes], iou_threshold: float = 0.5
) -> float | None:
    """COCO-style mAP at one IoU threshold, `reference` boxes taken as ground truth.

    Classes the reference never detects are left out, as COCO leaves out categories without
    annotations; None when the reference has no boxes at all.
    """
    reference_classes = [r.classes for r in reference if len(r)]
    if not reference_classes:
        return None
    precisions = []
    for cls in np.unique(np.concatenate(reference_classes)):
        truth_count = sum(int((r.classes == cls).sum()) for r in reference)
        scores, hits = _class_hits(reference, candidate, int(cls), iou_threshold)
        if not hits.size:
            precisions.append(0.0)
            continue
        hits = hits[np.argsort(-scores, kind="stable")]
        true_positives = np.cumsum(hits)
        recall = true_positives / truth_count
        precision = true_positives / np.arange(1, len(hits) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        reached = np.searchsorted(recall, RECALL_POINTS, side="left")
        interpolated = np.where(reached < len(hits), envelope[np.minimum(reached, len(hits) - 1)], 0.0)
        precisions.append(float(interpolated.mean()))
    return float(np.mean(precisions))

"""Accuracy of an engine: its detections on the evaluation images, scored against COCO annotations
where the image set has them, and always against a reference implementation's detections.

Every engine runs the same end-to-end path (letterbox, or stretch where the model's metadata says
letter_box=0; engine; decode with class-aware NMS), and boxes are mapped back to each image's own
pixels. Two decodes per image: COCO's (confidence 0.001, NMS IoU 0.65) for mAP, and the
deployment NMS (IoU 0.45) for agreement with the reference, whose boxes over the deployment
threshold (0.25) are the ground truth.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends import BuildRequest, Runner, get_backend, reference_engines
from yoloforge.detections import Boxes, above, agreement, decode, mean_average_precision, to_source_pixels
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, write_json
from yoloforge.images import LETTER_BOX_KEY, image_paths, letterboxes, load_rgb, resize_to_input

log = logging.getLogger(__name__)

MAP_SCORE_THRESHOLD = 0.001
MAP_IOU_THRESHOLD = 0.65
MAP_MAX_BOXES = 100  # COCO scores at most 100 boxes per image
DEPLOY_SCORE_THRESHOLD = 0.25
DEPLOY_IOU_THRESHOLD = 0.45
# The reference implementations, in order of preference (each engine's facts); each must run FP32 here.
REFERENCE_ENGINES = reference_engines()
ANNOTATIONS_FILE = "annotations.json"  # written by datasets.fetch_coco_subset

# Darknet's 80 classes (models/coco.names order) -> COCO's category ids (1-90 with ten unused).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
# fmt: off
CLASS_NAMES = (
    "person", "bicycle", "car", "motorbike", "aeroplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "sofa", "pottedplant", "bed", "diningtable",
    "toilet", "tvmonitor", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
# fmt: on


@dataclass
class ImageSetDetections:
    """One engine's detections on an image set, in each image's pixels."""

    files: list[str]
    sizes: list[tuple[int, int]]  # (width, height) of each source image
    for_map: list[Boxes]  # COCO's decode
    for_agreement: list[Boxes]  # deployment NMS, every box over MAP_SCORE_THRESHOLD
    non_finite: int  # NaN or Inf values in the engine's raw outputs

    def deployed(self) -> list[Boxes]:
        return [above(boxes, DEPLOY_SCORE_THRESHOLD) for boxes in self.for_agreement]


def evaluation_images(directory: str | os.PathLike, count: int) -> list[Path]:
    """The first `count` images of the set (all of them when it has fewer)."""
    return image_paths(directory)[:count]


def detect(runner: Runner, paths: list[Path], width: int, height: int, batch: int) -> ImageSetDetections:
    """Run every image through `runner` in batches of `batch` (the last one padded by repeating),
    each image letterboxed or stretched as the runner's model was trained."""
    from rich.progress import Progress

    result = ImageSetDetections([p.name for p in paths], [], [], [], 0)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"detect {len(paths)} images", total=len(paths))
        for start in range(0, len(paths), batch):
            sources = [load_rgb(path) for path in paths[start : start + batch]]
            inputs = [resize_to_input(image, width, height, runner.letterbox) for image in sources]
            inputs += inputs[-1:] * (batch - len(inputs))
            outputs = np.asarray(runner.infer(np.stack(inputs)), dtype=np.float32)[: len(sources)]
            for image, rows in zip(sources, outputs, strict=True):
                finite = np.isfinite(rows)
                result.non_finite += int((~finite).sum())
                rows = np.where(finite, rows, 0)
                source_h, source_w = image.shape[:2]
                result.sizes.append((source_w, source_h))
                for target, iou, max_boxes in (
                    (result.for_map, MAP_IOU_THRESHOLD, MAP_MAX_BOXES),
                    (result.for_agreement, DEPLOY_IOU_THRESHOLD, 300),
                ):
                    boxes = decode(rows, MAP_SCORE_THRESHOLD, iou, max_boxes)
                    target.append(
                        to_source_pixels(boxes, source_w, source_h, width, height, runner.letterbox)
                    )
            progress.advance(task, len(sources))
    runner.synchronize()
    return result


def rows_agreement_map50(reference: list[np.ndarray]) -> Callable[[list[np.ndarray]], float | None]:
    """A scorer of raw rows [boxes, 5 + classes] per image against `reference`'s, another engine's
    on the same inputs, as score_engine scores them: agreement mAP@0.5 with the reference's
    deployed boxes as the truth, the candidate's ranked down to MAP_SCORE_THRESHOLD; None where
    the reference finds nothing. The reference is decoded once, for every candidate scored."""
    truth = [
        above(decode(rows, MAP_SCORE_THRESHOLD, DEPLOY_IOU_THRESHOLD), DEPLOY_SCORE_THRESHOLD)
        for rows in reference
    ]

    def score(candidate: list[np.ndarray]) -> float | None:
        ranked = [decode(rows, MAP_SCORE_THRESHOLD, DEPLOY_IOU_THRESHOLD) for rows in candidate]
        return mean_average_precision(truth, ranked)

    return score


def _boxes_to_json(boxes: Boxes) -> list[list[float]]:
    return [
        [*np.round(xyxy, 2).tolist(), round(float(score), 5), int(cls)]
        for xyxy, score, cls in zip(boxes.xyxy, boxes.scores, boxes.classes, strict=True)
    ]


def _boxes_from_json(rows: list[list[float]]) -> Boxes:
    array = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return Boxes(array[:, :4], array[:, 4], array[:, 5].astype(np.int64))


def coco_image_ids(images_dir: str | os.PathLike, files: list[str]) -> list[int]:
    """COCO image ids by file name where the set has annotations, else 1, 2, ... in order."""
    annotations = Path(images_dir) / ANNOTATIONS_FILE
    if not annotations.exists():
        return list(range(1, len(files) + 1))
    ids = {image["file_name"]: image["id"] for image in _read_json(annotations)["images"]}
    missing = [name for name in files if name not in ids]
    if missing:
        raise YoloforgeError(f"images missing from the annotations: {', '.join(missing[:3])}", annotations)
    return [ids[name] for name in files]


def coco_results(detections: ImageSetDetections, image_ids: list[int]) -> list[dict[str, Any]]:
    """COCO's results format: one record per box, bbox as [x, y, width, height] in pixels."""
    records = []
    for image_id, boxes in zip(image_ids, detections.for_map, strict=True):
        for (x0, y0, x1, y1), score, cls in zip(boxes.xyxy, boxes.scores, boxes.classes, strict=True):
            records.append(
                {
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS[int(cls)],
                    "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "score": round(float(score), 5),
                }
            )
    return records


def coco_map(
    annotations: str | os.PathLike, results: list[dict[str, Any]], image_ids: list[int]
) -> tuple[float, float]:
    """(mAP@0.5:0.95, mAP@0.5) of `results` on `image_ids` through pycocotools."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise YoloforgeError(
            "COCO annotations need pycocotools: pip install 'yoloforge[coco]'", annotations
        ) from None
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(os.fspath(annotations))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def write_coco_results(path: str | os.PathLike, results: list[dict[str, Any]]) -> None:
    """Compact JSON: 500 images give tens of thousands of records."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(results, separators=(",", ":")) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise YoloforgeError(f"unreadable JSON ({error.__class__.__name__})", path) from None


def _coco_scores(
    images_dir: Path, detections: ImageSetDetections
) -> tuple[list[dict], float | None, float | None]:
    image_ids = coco_image_ids(images_dir, detections.files)
    results = coco_results(detections, image_ids)
    annotations = images_dir / ANNOTATIONS_FILE
    if not annotations.exists():
        return results, None, None
    return results, *coco_map(annotations, results, image_ids)


def built_reference(request: BuildRequest) -> tuple[str, Runner]:
    """The first reference implementation that runs the model of `request` in FP32 here, built
    into request.output: its name and the loaded engine."""
    reasons = []
    for engine in REFERENCE_ENGINES:
        backend = get_backend(engine)
        reason = backend.unavailable_reason("fp32") or backend.build(request).get("unavailable")
        if reason is None:
            return engine, backend.load(request.output)
        reasons.append(f"{engine}: {reason}")
        log.info("reference: not %s (%s)", engine, reason)
    raise YoloforgeError(f"no reference implementation runs here ({'; '.join(reasons)})")


def reference_detections(
    onnx: Path, cfg: Path, weights: Path, images_dir: Path, count: int, output: Path
) -> dict[str, Any]:
    """The reference's detections on the first `count` images, and its COCO mAP where annotated."""
    from yoloforge.backends.base import onnx_metadata
    from yoloforge.backends.opencv_darknet import cfg_letter_box
    from yoloforge.darknet.cfg import read_cfg_text

    metadata = onnx_metadata(onnx)
    width, height = int(metadata["width"]), int(metadata["height"])
    letterbox = letterboxes(metadata, onnx)
    if LETTER_BOX_KEY in metadata and cfg_letter_box(read_cfg_text(cfg)) != letterbox:
        raise YoloforgeError(
            f"the ONNX file says {LETTER_BOX_KEY}={metadata[LETTER_BOX_KEY]}, its cfg {cfg} the other;"
            " convert the cfg again",
            onnx,
        )
    with tempfile.TemporaryDirectory() as scratch:
        request = BuildRequest(
            onnx=onnx,
            precision="fp32",
            batch=1,
            output=Path(scratch) / "reference.engine",
            cfg=cfg,
            weights=weights,
        )
        engine, runner = built_reference(request)
        detections = detect(runner, evaluation_images(images_dir, count), width, height, 1)
    _, map50_95, map50 = _coco_scores(images_dir, detections)
    record = {
        "reference": f"{engine} fp32",
        "width": width,
        "height": height,
        LETTER_BOX_KEY: letterbox,
        "images": [
            {"file": name, "width": size[0], "height": size[1], "boxes": _boxes_to_json(boxes)}
            for name, size, boxes in zip(
                detections.files, detections.sizes, detections.deployed(), strict=True
            )
        ],
        "non_finite_outputs": detections.non_finite,
        "coco_map50_95": map50_95,
        "coco_map50": map50,
    }
    write_json(output, record)
    return record


def accuracy_gate(result: dict[str, Any], reference: dict[str, Any], max_map_drop: float) -> str:
    """'pass', or 'fail: <reason>' when the engine's outputs or scores fall outside the gate.

    The gated mAP is COCO mAP@0.5:0.95 against the reference's where the images are annotated,
    else the agreement mAP@0.5, where the reference scores 1 against itself.
    """
    reasons = []
    if result["non_finite_outputs"]:
        reasons.append(f"{result['non_finite_outputs']} non-finite output values")
    if result["coco_map50_95"] is not None and reference["coco_map50_95"] is not None:
        drop = reference["coco_map50_95"] - result["coco_map50_95"]
        label = "COCO mAP@0.5:0.95"
    elif result["agreement_map50"] is not None:
        drop = 1.0 - result["agreement_map50"]
        label = "agreement mAP@0.5"
    else:
        drop, label = 0.0, "no mAP"
    if drop > max_map_drop:
        reasons.append(f"{label} drops {drop:.3f} (> {max_map_drop})")
    return f"fail: {'; '.join(reasons)}" if reasons else "pass"


def score_engine(
    runner: Runner,
    *,
    model: str,
    engine: str,
    precision: str,
    batch: int,
    width: int,
    height: int,
    images_dir: Path,
    reference: dict[str, Any],
    max_map_drop: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], ImageSetDetections]:
    """The accuracy record of one engine, its COCO results, and its detections."""
    from yoloforge.datasets import image_set_source

    files = [image["file"] for image in reference["images"]]
    if (reference["width"], reference["height"]) != (width, height):
        raise YoloforgeError(
            f"reference was made at {reference['width']}x{reference['height']},"
            f" the engine runs at {width}x{height}"
        )
    # References written before the key existed letterboxed, as every engine then did.
    if reference.get(LETTER_BOX_KEY, True) != runner.letterbox:
        fitted = {True: "letterboxed", False: "stretched"}
        raise YoloforgeError(
            f"reference {fitted[reference.get(LETTER_BOX_KEY, True)]} the images, the engine's model"
            f" has them {fitted[runner.letterbox]}; make the reference again from the same ONNX file"
        )
    paths = [images_dir / name for name in files]
    detections = detect(runner, paths, width, height, batch)
    results, map50_95, map50 = _coco_scores(images_dir, detections)
    truth = [_boxes_from_json(image["boxes"]) for image in reference["images"]]
    agreed = agreement(truth, detections.deployed())
    record = {
        "model": model,
        "width": width,
        "height": height,
        "engine": engine,
        "precision": precision,
        "batch": batch,
        "images": len(files),
        "images_source": image_set_source(images_dir),
        "reference": reference["reference"],
        # What the agreement figures rest on: a handful of boxes says little whatever the score.
        "reference_boxes": sum(len(boxes) for boxes in truth),
        "coco_map50_95": map50_95,
        "coco_map50": map50,
        "agreement_precision": agreed["precision"],
        "agreement_recall": agreed["recall"],
        "agreement_map50": mean_average_precision(truth, detections.for_agreement),
        "non_finite_outputs": detections.non_finite,
    }
    record["accuracy_gate"] = accuracy_gate(record, reference, max_map_drop)
    return record, results, detections


def draw_side_by_side(
    image: np.ndarray, reference: Boxes, candidate: Boxes, labels: tuple[str, str], output: Path
) -> None:
    """The reference's boxes (left) and the engine's (right) on the same image, as a JPEG."""
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    canvas = Image.new("RGB", (2 * width, height + 20), "white")
    for offset, boxes, label in ((0, reference, labels[0]), (width, candidate, labels[1])):
        canvas.paste(Image.fromarray(image), (offset, 20))
        draw = ImageDraw.Draw(canvas)
        draw.text((offset + 4, 4), f"{label}: {len(boxes)} boxes", fill="black")
        for (x0, y0, x1, y1), score, cls in zip(boxes.xyxy, boxes.scores, boxes.classes, strict=True):
            box = (offset + x0, 20 + y0, offset + x1, 20 + y1)
            draw.rectangle(box, outline="red", width=2)
            draw.text((box[0] + 2, box[1] + 2), f"{CLASS_NAMES[int(cls)]} {score:.2f}", fill="yellow")
    with atomic_output(output) as tmp:
        canvas.save(tmp, format="JPEG", quality=85)


def draw_examples(
    detections: ImageSetDetections,
    reference: dict[str, Any],
    images_dir: Path,
    label: str,
    count: int,
    output_dir: Path,
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    deployed = detections.deployed()
    for index, image in enumerate(reference["images"][:count]):
        draw_side_by_side(
            load_rgb(images_dir / image["file"]),
            _boxes_from_json(image["boxes"]),
            deployed[index],
            (reference["reference"], label),
            output_dir / f"{Path(image['file']).stem}.jpg",
        )

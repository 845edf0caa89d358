"""Accuracy scoring: real yolov3-tiny weights on real photos, through every FP32 CPU engine."""

import json

import numpy as np
import pytest

from tests.conftest import ACCURACY_KEYS, MODELS, run_cli
from yoloforge.accuracy import (
    CLASS_NAMES,
    COCO_CATEGORY_IDS,
    coco_map,
    coco_results,
    detect,
    reference_detections,
    score_engine,
)
from yoloforge.backends import BuildRequest, Runner, get_backend
from yoloforge.backends.opencv_darknet import cfg_letter_box
from yoloforge.darknet.convert import convert
from yoloforge.datasets import write_substitute_set
from yoloforge.detections import Boxes, agreement, mean_average_precision, to_source_pixels
from yoloforge.errors import YoloforgeError
from yoloforge.images import (
    BUNDLED_PHOTOS,
    generated_scene,
    image_paths,
    letterboxes,
    load_rgb,
    resize_to_input,
)

SIZE = 320
# What the reference (yolov3-tiny, official weights, at 320) finds over 0.25 on the bundled photos.
EXPECTED = {
    "astronaut": {"person"},
    "chelsea": {"cat"},
    "coffee": {"cup"},
    "motorcycle": {"motorbike"},
    "camera": {"person"},
}


def test_class_names_and_coco_ids():
    names = [line for line in (MODELS / "coco.names").read_text().splitlines() if line]
    assert list(CLASS_NAMES) == names
    assert len(set(COCO_CATEGORY_IDS)) == 80 and COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert COCO_CATEGORY_IDS[names.index("stop sign")] == 13  # COCO skips 12
    assert COCO_CATEGORY_IDS[names.index("toothbrush")] == 90


def darknet_source_boxes(
    xyxy: np.ndarray, source_w: int, source_h: int, width: int, height: int, letterbox: bool
) -> np.ndarray:
    """Darknet's correct_yolo_boxes (src/yolo_layer.c) in numpy: boxes normalized to the network
    input -> pixels of the source image, for letter_box 1 and 0."""
    new_w, new_h = width, height
    if letterbox and width / source_w < height / source_h:
        new_h = source_h * width // source_w
    elif letterbox:
        new_w = source_w * height // source_h
    x = (xyxy[:, [0, 2]] - (width - new_w) / 2 / width) / (new_w / width) * source_w
    y = (xyxy[:, [1, 3]] - (height - new_h) / 2 / height) / (new_h / height) * source_h
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


SIZES = [((640, 480), (416, 416)), ((300, 500), (320, 256)), ((500, 300), (128, 160))]


@pytest.mark.parametrize("letterbox", [True, False], ids=["letterbox", "stretch"])
@pytest.mark.parametrize(("source", "target"), SIZES)
def test_boxes_map_back_as_darknet_maps_them(source, target, letterbox):
    (source_w, source_h), (width, height) = source, target
    normalized = np.array([[0.3, 0.25, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0], [0.45, 0.1, 0.55, 0.2]])
    boxes = Boxes(normalized, np.ones(3), np.zeros(3, int))
    back = to_source_pixels(boxes, source_w, source_h, width, height, letterbox).xyxy
    expected = np.clip(
        darknet_source_boxes(normalized, source_w, source_h, width, height, letterbox), 0, None
    )
    expected = np.minimum(expected, [source_w, source_h, source_w, source_h])
    # Darknet truncates the letterboxed size and centres it by half pixels; the pipeline rounds
    # both to whole input pixels: up to 1.5 input pixels apart, in source pixels.
    tolerance = 1.5 * max(source_w / width, source_h / height) if letterbox else 1e-6
    np.testing.assert_allclose(back, expected, atol=tolerance)


@pytest.mark.parametrize("letterbox", [True, False], ids=["letterbox", "stretch"])
@pytest.mark.parametrize(("source", "target"), SIZES)
def test_boxes_map_back_to_where_the_pixels_were(source, target, letterbox):
    """A white rectangle on black, fitted to the input: the box around its pixels there, mapped
    back, is the rectangle."""
    (source_w, source_h), (width, height) = source, target
    image = np.zeros((source_h, source_w, 3), dtype=np.uint8)
    rectangle = np.array([0.2 * source_w, 0.3 * source_h, 0.7 * source_w, 0.8 * source_h]).round()
    x0, y0, x1, y1 = rectangle.astype(int)
    image[y0:y1, x0:x1] = 255
    fitted = resize_to_input(image, width, height, letterbox)[0]
    rows, cols = np.nonzero(fitted > 0.75)  # above the mid-gray padding
    found = np.array([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=float)
    boxes = Boxes(found / [width, height, width, height], np.ones(1), np.zeros(1, int))
    back = to_source_pixels(boxes, source_w, source_h, width, height, letterbox).xyxy[0]
    # The resize blurs an edge over about a pixel of the input.
    np.testing.assert_allclose(back, rectangle, atol=1.5 * max(source_w / width, source_h / height))


def test_stretched_and_letterboxed_inputs_differ_where_the_aspect_does():
    image = generated_scene(3, 300, 500)
    letterboxed = resize_to_input(image, 320, 256, letterbox=True)
    stretched = resize_to_input(image, 320, 256, letterbox=False)
    assert letterboxed.shape == stretched.shape == (3, 256, 320)
    assert (letterboxed[:, :, :10] == 0.5).all()  # padding beside a tall image
    assert not (stretched[:, :, :10] == 0.5).all()


@pytest.mark.parametrize(
    ("metadata", "expected"), [({}, True), ({"letter_box": "1"}, True), ({"letter_box": "0"}, False)]
)
def test_letter_box_is_read_from_the_metadata(metadata, expected):
    assert letterboxes({"width": "416", **metadata}) is expected


def test_a_letter_box_other_than_0_or_1_is_refused(tmp_path):
    with pytest.raises(YoloforgeError, match=r"model\.onnx: letter_box is '2'"):
        letterboxes({"letter_box": "2"}, tmp_path / "model.onnx")


@pytest.mark.parametrize(
    ("net", "expected"),
    [
        ("", False),  # Darknet's default
        ("letter_box=1", True),
        ("letter_box = 1 # as trained", True),
        ("letter_box=0", False),
        ("#letter_box=1", False),
    ],
)
def test_cfg_letter_box_is_read_as_darknet_reads_it(net, expected):
    cfg = f"[net]\nwidth=416\n{net}\n\n[convolutional]\nletter_box=1\n"
    assert cfg_letter_box(cfg) is expected


def test_mean_average_precision():
    truth = [Boxes(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.ones(2), np.array([0, 1]))]
    assert mean_average_precision(truth, truth) == 1.0
    shifted = [Boxes(truth[0].xyxy + [6, 0, 6, 0], truth[0].scores, truth[0].classes)]
    assert mean_average_precision(truth, shifted) == 0.0
    # A confident false positive ranked before the true box halves class 0's precision.
    extra = [
        Boxes(
            np.concatenate([truth[0].xyxy, [[50, 50, 60, 60]]]), np.array([0.5, 1, 0.9]), np.array([0, 1, 0])
        )
    ]
    assert mean_average_precision(truth, extra) == pytest.approx((0.5 + 1) / 2)
    assert mean_average_precision([Boxes(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))], truth) is None


@pytest.fixture(scope="module")
def tiny(tiny_weights, tmp_path_factory):
    """yolov3-tiny at 320 as ONNX, 8 evaluation images (6 real photos), the reference's detections."""
    folder = tmp_path_factory.mktemp("accuracy")
    onnx = folder / "tiny.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, onnx, (SIZE, SIZE))
    images = folder / "images"
    write_substitute_set(images, 8, calibration=False)
    reference = reference_detections(
        onnx, MODELS / "yolov3-tiny.cfg", tiny_weights, images, 8, folder / "r.json"
    )
    return onnx, images, reference


def _load(engine, onnx, tiny_weights, output, batch=1):
    request = BuildRequest(
        onnx=onnx,
        precision="fp32",
        batch=batch,
        output=output,
        cfg=MODELS / "yolov3-tiny.cfg",
        weights=tiny_weights,
    )
    get_backend(engine).build(request)
    return get_backend(engine).load(output)


def _score(runner, tiny, engine="test", batch=1, max_map_drop=0.01):
    _, images, reference = tiny
    record, _, _ = score_engine(
        runner,
        model="yolov3-tiny",
        engine=engine,
        precision="fp32",
        batch=batch,
        width=SIZE,
        height=SIZE,
        images_dir=images,
        reference=reference,
        max_map_drop=max_map_drop,
    )
    return record


def test_reference_finds_the_obvious_objects(fitted):
    # Letterboxed: stretched to 320x320, as yolov3-tiny's cfg says (Darknet's default), the cat of
    # chelsea (451x300) scores under 0.25.
    _, _, reference = fitted["1"]
    assert reference["reference"] == "opencv-darknet fp32"
    found = {
        image["file"].split("-", 1)[1].removesuffix(".jpg"): {
            CLASS_NAMES[int(box[5])] for box in image["boxes"]
        }
        for image in reference["images"]
    }
    print({name: sorted(classes) for name, classes in found.items()})
    assert set(found) == {*BUNDLED_PHOTOS, "mosaic-6", "mosaic-7"}
    for photo, classes in EXPECTED.items():
        assert classes <= found[photo], photo
    # The mosaics of those photos hold objects too, as generated scenes would not.
    assert found["mosaic-6"] and found["mosaic-7"]
    # Boxes are in the photo's own pixels: inside it, and the cup covers much of coffee (400x600).
    coffee = next(image for image in reference["images"] if image["file"].endswith("coffee.jpg"))
    assert (coffee["width"], coffee["height"]) == (600, 400)
    x0, y0, x1, y1 = coffee["boxes"][0][:4]
    assert 0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 400 and (x1 - x0) * (y1 - y0) > 0.2 * 600 * 400


@pytest.mark.parametrize(("engine", "batch"), [("onnxruntime", 3), ("openvino", 1), ("torch-eager", 1)])
def test_fp32_engines_agree_with_the_reference(engine, batch, tiny, tiny_weights, tmp_path):
    onnx = tiny[0]
    record = _score(_load(engine, onnx, tiny_weights, tmp_path / "e.engine", batch), tiny, engine, batch)
    print(f"{engine}: {record}")
    assert record["images"] == 8 and record["non_finite_outputs"] == 0
    assert record["agreement_precision"] >= 0.99 and record["agreement_recall"] >= 0.99
    assert record["agreement_map50"] >= 0.99
    assert record["coco_map50_95"] is None and record["accuracy_gate"] == "pass"


@pytest.fixture(scope="module")
def fitted(tiny, tiny_weights, tmp_path_factory):
    """letter_box "1" and "0" -> yolov3-tiny's ONNX file and cfg saying so, and the reference's
    detections with them (whatever the converter wrote: the metadata's key is replaced)."""
    import onnx as onnx_library

    onnx, images, _ = tiny
    folder = tmp_path_factory.mktemp("fitted")
    made = {}
    for letter_box in ("1", "0"):
        model = onnx_library.load(onnx)
        kept = [prop for prop in model.metadata_props if prop.key != "letter_box"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        model.metadata_props.add(key="letter_box", value=letter_box)
        path = folder / f"tiny-{letter_box}.onnx"
        onnx_library.save(model, path)
        cfg = folder / f"tiny-{letter_box}.cfg"
        # Darknet reads an option's first occurrence in its section.
        cfg.write_text(
            (MODELS / "yolov3-tiny.cfg").read_text().replace("[net]", f"[net]\nletter_box={letter_box}", 1)
        )
        reference = reference_detections(path, cfg, tiny_weights, images, 8, folder / f"r-{letter_box}.json")
        made[letter_box] = path, cfg, reference
    return made


def test_a_stretching_model_is_stretched_end_to_end(tiny, fitted, tiny_weights, tmp_path):
    _, images, _ = tiny
    stretched_onnx, _, reference = fitted["0"]
    assert reference["letter_box"] is False and reference["reference"] == "opencv-darknet fp32"
    assert fitted["1"][2]["letter_box"] is True
    for engine in ("onnxruntime", "torch-eager"):
        runner = _load(engine, stretched_onnx, tiny_weights, tmp_path / f"{engine}.engine")
        assert runner.letterbox is False
        # The timing's end-to-end stages (the torch engines' own, on their device) stretch too.
        photo = load_rgb(image_paths(images)[1])
        stretched = resize_to_input(photo, SIZE, SIZE, letterbox=False)
        prepared = np.asarray(runner.preprocess([photo], SIZE, SIZE), dtype=np.float32)[0]
        assert np.abs(prepared - stretched).max() <= 2 / 255 + 1e-6
        record = _score(runner, (stretched_onnx, images, reference), engine)
        assert record["agreement_map50"] >= 0.99 and record["accuracy_gate"] == "pass"
    # Stretched or letterboxed, the real model finds the same objects in the same places of each
    # photo: the boxes came back to the source pixels either way.
    letterboxed = fitted["1"][2]
    truth = [_boxes_of(image) for image in letterboxed["images"]]
    agreed = agreement(truth, [_boxes_of(image) for image in reference["images"]])
    assert agreed["precision"] >= 0.8 and agreed["recall"] >= 0.5, agreed
    # And the stretch did change what the model saw.
    assert [image["boxes"] for image in reference["images"]] != [
        image["boxes"] for image in letterboxed["images"]
    ]


def _boxes_of(image) -> Boxes:
    return Boxes(*_pixels(image))


def test_reference_and_engine_must_fit_images_alike(tiny, fitted, tiny_weights, tmp_path):
    _, images, _ = tiny
    stretched_onnx, _, _ = fitted["0"]
    letterboxed_onnx, letterboxing_cfg, letterboxed_reference = fitted["1"]
    stretching = _load("onnxruntime", stretched_onnx, tiny_weights, tmp_path / "e.engine")
    with pytest.raises(
        YoloforgeError, match="reference letterboxed the images, the engine's model has them stretched"
    ):
        _score(stretching, (letterboxed_onnx, images, letterboxed_reference))
    with pytest.raises(YoloforgeError, match=r"tiny-0\.onnx: the ONNX file says letter_box=0, its cfg"):
        reference_detections(stretched_onnx, letterboxing_cfg, tiny_weights, images, 1, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


class CorruptedRunner(Runner):
    """A working engine whose outputs are damaged: boxes shifted, or some values NaN."""

    def __init__(self, runner: Runner, damage: str) -> None:
        self.runner, self.damage = runner, damage
        self.letterbox = runner.letterbox

    def infer(self, images: np.ndarray) -> np.ndarray:
        detections = np.array(self.runner.infer(images))
        if self.damage == "shift":
            detections[..., 0] += 0.08  # box centres move 8% of the input width
        else:
            detections[:, ::50, :] = np.nan
        return detections


@pytest.mark.parametrize("damage", ["shift", "nan"])
def test_corrupted_engine_is_flagged(damage, tiny, tiny_weights, tmp_path):
    runner = _load("onnxruntime", tiny[0], tiny_weights, tmp_path / "e.engine")
    record = _score(CorruptedRunner(runner, damage), tiny)
    print(f"{damage}: {record}")
    assert record["accuracy_gate"].startswith("fail: ")
    if damage == "nan":
        assert record["non_finite_outputs"] > 0 and "non-finite" in record["accuracy_gate"]
    else:
        assert record["non_finite_outputs"] == 0 and "agreement mAP@0.5 drops" in record["accuracy_gate"]
        assert record["agreement_map50"] < 0.9


def _write_annotations(images, reference):
    """COCO annotations for the test: the reference's own confident boxes, as COCO writes them."""
    records, annotations = [], []
    for image_id, image in enumerate(reference["images"], start=1):
        records.append(
            {"id": image_id, "file_name": image["file"], "width": image["width"], "height": image["height"]}
        )
        for x0, y0, x1, y1, _, cls in image["boxes"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS[int(cls)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i, "name": name} for i, name in zip(COCO_CATEGORY_IDS, CLASS_NAMES, strict=True)]
    path = images / "annotations.json"
    path.write_text(json.dumps({"images": records, "annotations": annotations, "categories": categories}))
    return path


def test_coco_map_on_annotated_images(tiny, tiny_weights, tmp_path):
    onnx, images, reference = tiny
    annotated = tmp_path / "images"
    annotated.mkdir()
    for path in image_paths(images):
        (annotated / path.name).write_bytes(path.read_bytes())
    annotations = _write_annotations(annotated, reference)
    runner = _load("onnxruntime", onnx, tiny_weights, tmp_path / "e.engine")
    detections = detect(runner, image_paths(annotated), SIZE, SIZE, 1)
    ids = list(range(1, 9))
    results = coco_results(detections, ids)
    map50_95, map50 = coco_map(annotations, results, ids)
    print(f"mAP@0.5:0.95 {map50_95:.4f}, mAP@0.5 {map50:.4f}")
    assert map50 > 0.9 and 0.5 < map50_95 <= map50
    # pycocotools and our own AP agree, on the same boxes and the same ground truth.
    truth = [Boxes(*_pixels(image)) for image in reference["images"]]
    assert mean_average_precision(truth, detections.for_map) == pytest.approx(map50, abs=1e-9)
    shifted = [{**r, "bbox": [r["bbox"][0] + 0.5 * r["bbox"][2], *r["bbox"][1:]]} for r in results]
    shifted_map50_95, shifted_map50 = coco_map(annotations, shifted, ids)
    assert shifted_map50_95 < map50_95 - 0.2 and shifted_map50 < map50

    # The reference and the engines then carry COCO mAP, and the gate compares it.
    annotated_reference = reference_detections(
        onnx, MODELS / "yolov3-tiny.cfg", tiny_weights, annotated, 8, tmp_path / "r.json"
    )
    assert annotated_reference["coco_map50"] > 0.9
    record = _score(runner, (onnx, annotated, annotated_reference))
    assert record["coco_map50_95"] == pytest.approx(annotated_reference["coco_map50_95"], abs=0.005)
    assert record["accuracy_gate"] == "pass"
    shifted_record = _score(CorruptedRunner(runner, "shift"), (onnx, annotated, annotated_reference))
    assert "COCO mAP@0.5:0.95 drops" in shifted_record["accuracy_gate"]


def _pixels(image):
    rows = np.asarray(image["boxes"], dtype=np.float64).reshape(-1, 6)
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(int)


def test_accuracy_command_writes_the_table_keys_and_refuses_a_bad_reference(tiny, tiny_weights, tmp_path):
    onnx, images, reference = tiny
    _load("onnxruntime", onnx, tiny_weights, tmp_path / "e.engine")
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    common = ["accuracy", "--engine", "onnxruntime", "--engine-file", str(tmp_path / "e.engine")]
    common += [
        "--model",
        "yolov3-tiny",
        "--images",
        str(images),
        "--coco-output",
        str(tmp_path / "e.coco.json"),
    ]
    result = run_cli(
        *common,
        "--reference",
        str(tmp_path / "reference.json"),
        "--draw-dir",
        str(tmp_path / "drawn"),
        "--draw",
        "2",
        "--output",
        str(tmp_path / "e.json"),
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "e.json").read_text())
    assert set(record) == ACCURACY_KEYS and record["accuracy_gate"] == "pass"
    assert record["reference_boxes"] == sum(len(image["boxes"]) for image in reference["images"]) > 0
    coco = json.loads((tmp_path / "e.coco.json").read_text())
    assert coco and set(coco[0]) == {"image_id", "category_id", "bbox", "score"}
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [
        "0000-astronaut.jpg",
        "0001-chelsea.jpg",
    ]

    (tmp_path / "broken.json").write_text("{")
    result = run_cli(
        *common, "--reference", str(tmp_path / "broken.json"), "--output", str(tmp_path / "x.json")
    )
    assert result.returncode == 2
    assert "broken.json: unreadable reference detections" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.json").exists()


def test_reference_falls_back_to_onnxruntime_without_opencv_darknet(
    tiny, tiny_weights, tmp_path, monkeypatch
):
    from yoloforge.backends.opencv_darknet import OpenCvDarknetBackend

    onnx, images, opencv_reference = tiny
    monkeypatch.setattr(OpenCvDarknetBackend, "unavailable_reason", lambda self, precision="fp32": "OpenCV 5")
    reference = reference_detections(
        onnx, MODELS / "yolov3-tiny.cfg", tiny_weights, images, 8, tmp_path / "r.json"
    )
    assert reference["reference"] == "onnxruntime fp32"
    assert [len(image["boxes"]) for image in reference["images"]] == [
        len(image["boxes"]) for image in opencv_reference["images"]
    ]

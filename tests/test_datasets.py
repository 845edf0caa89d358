"""COCO subsets from a loopback server with a COCO-format fixture, and the offline substitutes."""

import io
import json
import re
import zipfile

import pytest
from PIL import Image

from tests.http_server import FaultyServer
from yoloforge.datasets import write_image_set
from yoloforge.errors import YoloforgeError
from yoloforge.images import _bundled_photo

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _jpeg(name: str) -> tuple[bytes, int, int]:
    pixels = _bundled_photo(name)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue(), pixels.shape[1], pixels.shape[0]


@pytest.fixture
def coco():
    """val2017 with ids 30, 10, 20, 40 (out of order on purpose) and a train2017 image list."""
    with FaultyServer() as server:
        val_images, annotations = [], []
        for image_id, name in zip([30, 10, 20, 40], PHOTOS, strict=True):
            data, width, height = _jpeg(name)
            file_name = f"{image_id:012d}.jpg"
            server.files[f"/val2017/{file_name}"] = data
            val_images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            annotations.append(
                {"id": image_id * 10, "image_id": image_id, "category_id": 1, "bbox": [1, 2, 3, 4]}
            )
        train_images = []
        for image_id, name in zip([7, 5], ["rocket", "coffee"], strict=True):
            data, width, height = _jpeg(name)
            server.files[f"/train2017/{image_id:012d}.jpg"] = data
            train_images.append(
                {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": width, "height": height}
            )
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as bundle:
            instances = {
                "images": val_images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "person"}],
            }
            bundle.writestr("annotations/instances_val2017.json", json.dumps(instances))
            bundle.writestr("annotations/captions_train2017.json", json.dumps({"images": train_images}))
        server.files["/annotations/annotations_trainval2017.zip"] = buffer.getvalue()
        server.val_images = val_images
        yield server


def _image_set(server, tmp_path, split, count, strict=False, directory="images"):
    return write_image_set(
        tmp_path / directory,
        count,
        split,
        [f"{server.url}/annotations/annotations_trainval2017.zip"],
        [server.url],
        tmp_path / "cache",
        strict,
    )


def test_first_images_by_id_with_their_annotations(coco, tmp_path):
    manifest = _image_set(coco, tmp_path, "val2017", 3)
    assert manifest["source"] == "coco-val2017"
    assert [image["file"] for image in manifest["images"]] == [f"{i:012d}.jpg" for i in (10, 20, 30)]
    subset = json.loads((tmp_path / "images" / "annotations.json").read_text())
    assert sorted(a["image_id"] for a in subset["annotations"]) == [10, 20, 30]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        [f"{i:012d}.jpg" for i in (10, 20, 30)] + ["annotations.json", "manifest.json"]
    )


def test_calibration_comes_from_train2017(coco, tmp_path):
    manifest = _image_set(coco, tmp_path, "train2017", 2, directory="calibration")
    assert manifest["source"] == "coco-train2017"
    assert [image["file"] for image in manifest["images"]] == ["000000000005.jpg", "000000000007.jpg"]


def test_image_whose_size_disagrees_with_its_annotation_falls_back(coco, tmp_path):
    coco.files["/val2017/000000000020.jpg"] = _jpeg("camera")[0]
    manifest = _image_set(coco, tmp_path, "val2017", 3)
    assert manifest["source"] == "substitute"
    assert "annotations say" in manifest["reason"]
    with pytest.raises(YoloforgeError, match="strict mode allows no substitute.*annotations say"):
        _image_set(coco, tmp_path, "val2017", 3, strict=True, directory="strict")


IMAGE = {"id": 1, "file_name": "1.jpg", "width": 4, "height": 4}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (json.dumps({"pictures": []}), "no 'images' list"),
        (b"\x89PNG\r\n\x1a\n\x00\xff", "not JSON"),
        ("{truncated", "not JSON"),
        (json.dumps([IMAGE]), "the top level is a JSON list"),
        (json.dumps({"images": [IMAGE], "categories": []}), "no 'annotations' list"),
        (
            json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}),
            "an image record lacks one of",
        ),
        (
            json.dumps({"images": [IMAGE], "annotations": [{"id": 3}], "categories": []}),
            "an annotation has no image_id",
        ),
        (
            json.dumps(
                {"images": [{**IMAGE, "file_name": "../../x.jpg"}], "annotations": [], "categories": []}
            ),
            "image file_name .* is not a plain file name",
        ),
    ],
)
def test_annotations_that_are_not_coco(coco, tmp_path, content, problem):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("annotations/instances_val2017.json", content)
    coco.files["/annotations/annotations_trainval2017.zip"] = buffer.getvalue()
    with pytest.raises(YoloforgeError, match=f"instances_val2017.json: not COCO annotations: {problem}"):
        _image_set(coco, tmp_path, "val2017", 2, strict=True)
    # Without strict mode the run goes on with substitutes, and says why.
    manifest = _image_set(coco, tmp_path, "val2017", 2, directory="lenient")
    assert manifest["source"] == "substitute" and re.search(problem, manifest["reason"])
    assert not (tmp_path / "x.jpg").exists()


def test_offline_substitutes_say_so(tmp_path):
    evaluation = write_image_set(tmp_path / "eval", 8, "val2017", [], [], tmp_path / "cache")
    calibration = write_image_set(tmp_path / "calib", 3, "train2017", [], [], tmp_path / "cache")
    assert evaluation["source"] == calibration["source"] == "substitute"
    sources = [image["source"] for image in evaluation["images"]]
    assert sources[0] == "scikit-image bundled photo 'astronaut'" and sources[-1].startswith(
        "mosaic of scikit-image bundled photos"
    )
    # Calibration never reuses an evaluated image.
    assert not {i["source"] for i in calibration["images"]} & set(sources)
    assert len(list((tmp_path / "eval").glob("*.jpg"))) == 8

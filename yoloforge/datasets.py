"""The image sets a run uses: COCO subsets when reachable, honest substitutes when not.

Evaluation images are the first N of COCO val2017 by image id, with their annotations; INT8
calibration images come from train2017, never from the evaluated images. Offline, both sets are
made of scikit-image's bundled photos and generated scenes, and their manifest says so.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from yoloforge.errors import YoloforgeError
from yoloforge.fetch import download, fetch
from yoloforge.files import atomic_directory, atomic_output, write_json
from yoloforge.images import BUNDLED_PHOTOS, _bundled_photo, generated_scene, load_rgb, photo_mosaic

log = logging.getLogger(__name__)

ANNOTATION_MEMBERS = {
    "val2017": "annotations/instances_val2017.json",
    # Image lists only: the smallest train2017 file in the same archive that lists every image.
    "train2017": "annotations/captions_train2017.json",
}
DOWNLOAD_WORKERS = 8


def _write_jpeg(path: Path, pixels) -> None:
    # JPEG, as COCO's images are, so that decoding costs in the end-to-end timing what it would.
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=95)


def write_substitute_set(output_dir: Path, count: int, calibration: bool) -> list[dict[str, str]]:
    """Evaluation: the bundled real photos, then mosaics of them; calibration: generated scenes,
    never an evaluated image. Returns manifest records."""
    records = []
    for index in range(count):
        if calibration:
            seed = index
            name, pixels, source = (
                f"generated-{seed}",
                generated_scene(seed),
                f"generated scene (seed {seed})",
            )
        elif index < len(BUNDLED_PHOTOS):
            name, pixels = BUNDLED_PHOTOS[index], _bundled_photo(BUNDLED_PHOTOS[index])
            source = f"scikit-image bundled photo '{name}'"
        else:
            name, pixels = f"mosaic-{index}", photo_mosaic(index)
            source = f"mosaic of scikit-image bundled photos (seed {index})"
        filename = f"{index:04d}-{name}.jpg"
        _write_jpeg(output_dir / filename, pixels)
        records.append({"file": filename, "source": source})
    return records


def _fetch_coco_image(record: dict[str, Any], bases: list[str], output_dir: Path, split: str) -> None:
    """Download one image, trying each base URL in turn; it must decode at its annotated size."""
    path = output_dir / record["file_name"]
    failures = []
    for base in bases:
        try:
            download(f"{base.rstrip('/')}/{split}/{record['file_name']}", path, None, retries=2)
        except YoloforgeError as error:
            failures.append(error.problem)
            continue
        height, width = load_rgb(path).shape[:2]
        if (width, height) != (record["width"], record["height"]):
            path.unlink()
            raise YoloforgeError(
                f"decoded as {width}x{height}, annotations say {record['width']}x{record['height']}", path
            )
        return
    raise YoloforgeError(f"every image source failed: {'; '.join(failures)}", path)


COCO_IMAGE_FIELDS = {"id": int, "file_name": str, "width": int, "height": int}


def read_coco_annotations(path: Path, split: str) -> dict[str, Any]:
    """A COCO annotations file, checked for every field this module reads."""

    def fail(problem: str) -> YoloforgeError:
        return YoloforgeError(f"not COCO annotations: {problem}", path)

    try:
        annotations = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise fail(f"not JSON ({error.__class__.__name__})") from None
    if not isinstance(annotations, dict):
        raise fail(f"the top level is a JSON {type(annotations).__name__}, not an object")
    needed = ["images", "annotations", "categories"] if split == "val2017" else ["images"]
    for key in needed:
        if not isinstance(annotations.get(key), list):
            raise fail(f"no {key!r} list")
    for image in annotations["images"]:
        if not isinstance(image, dict) or any(
            not isinstance(image.get(key), kind) for key, kind in COCO_IMAGE_FIELDS.items()
        ):
            raise fail(f"an image record lacks one of {', '.join(COCO_IMAGE_FIELDS)}: {str(image)[:80]}")
        if Path(image["file_name"]).name != image["file_name"] or image["file_name"] in ("", ".", ".."):
            raise fail(f"image file_name {image['file_name']!r} is not a plain file name")
    if split == "val2017" and any(
        not isinstance(a, dict) or "image_id" not in a for a in annotations["annotations"]
    ):
        raise fail("an annotation has no image_id")
    return annotations


def fetch_coco_subset(
    split: str,
    count: int,
    output_dir: Path,
    annotation_sources: list[str],
    image_bases: list[str],
    cache_dir: Path,
) -> dict[str, Any]:
    """The first `count` images of `split` by id, checked; val2017 also gets its annotations."""
    from rich.progress import Progress

    member = ANNOTATION_MEMBERS[split]
    annotations_path = cache_dir / f"{split}-{os.path.basename(member)}"
    if not annotations_path.exists():
        fetch([f"{source}#{member}" for source in annotation_sources], annotations_path, None, cache_dir)
    annotations = read_coco_annotations(annotations_path, split)
    images = sorted(annotations["images"], key=lambda image: image["id"])[:count]
    with Progress(transient=True) as progress, ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
        task = progress.add_task(f"COCO {split}", total=len(images))
        futures = [pool.submit(_fetch_coco_image, image, image_bases, output_dir, split) for image in images]
        for future in futures:
            future.result()
            progress.advance(task)
    if split == "val2017":
        ids = {image["id"] for image in images}
        subset = {
            "images": images,
            "annotations": [a for a in annotations["annotations"] if a["image_id"] in ids],
            "categories": annotations["categories"],
        }
        write_json(output_dir / "annotations.json", subset)
    return {
        "source": f"coco-{split}",
        "annotations": str(annotation_sources[0]),
        "images": [
            {"file": image["file_name"], "source": f"coco {split} id {image['id']}"} for image in images
        ],
    }


def write_image_set(
    output_dir: str | os.PathLike,
    count: int,
    split: str,
    annotation_sources: list[str],
    image_bases: list[str],
    cache_dir: str | os.PathLike,
    strict: bool = False,
) -> dict[str, Any]:
    """Make `output_dir` hold `count` images and a manifest.json saying where they came from.

    The folder is filled under a temporary name and renamed into place whole, replacing any
    previous one: a killed run never leaves a partial image set under the final name.
    """
    if count <= 0:
        raise YoloforgeError(f"image count must be positive, got {count}", output_dir)
    with atomic_directory(output_dir) as partial:
        return _fill_image_set(partial, count, split, annotation_sources, image_bases, cache_dir, strict)


def _fill_image_set(
    output_dir: Path,
    count: int,
    split: str,
    annotation_sources: list[str],
    image_bases: list[str],
    cache_dir: str | os.PathLike,
    strict: bool,
) -> dict[str, Any]:
    reason = "no COCO sources configured"
    if annotation_sources and image_bases:
        try:
            manifest = fetch_coco_subset(
                split, count, output_dir, annotation_sources, image_bases, Path(cache_dir)
            )
            write_json(output_dir / "manifest.json", manifest)
            return manifest
        except YoloforgeError as error:
            reason = str(error)
    if strict:
        raise YoloforgeError(
            f"COCO {split} unavailable and strict mode allows no substitute: {reason}", output_dir
        )
    log.warning("COCO %s unavailable (%s): writing substitute images", split, reason)
    for stale in output_dir.iterdir():
        stale.unlink()
    manifest = {
        "source": "substitute",
        "reason": reason,
        "images": write_substitute_set(output_dir, count, calibration=split != "val2017"),
    }
    write_json(output_dir / "manifest.json", manifest)
    return manifest


def image_set_source(directory: str | os.PathLike) -> str:
    """What an image set is made of, from its manifest ('unknown' for a user's own folder)."""
    manifest = Path(directory) / "manifest.json"
    if not manifest.exists():
        return "unknown"
    try:
        return json.loads(manifest.read_text())["source"]
    except (json.JSONDecodeError, KeyError) as error:
        raise YoloforgeError(f"unreadable image manifest ({error.__class__.__name__})", manifest) from None

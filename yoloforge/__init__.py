"""yoloforge: Darknet YOLO -> ONNX -> inference engines, timed and checked for accuracy."""

__version__ = "0.1.0"

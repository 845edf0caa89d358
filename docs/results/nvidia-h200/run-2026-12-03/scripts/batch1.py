"""yolov3-416, batch 1, model scope: the run's engines timed side by side in one process (three
rounds, alternating), their device time per replay (CUDA events), and where it goes (profiler);
then, time allowing, a cudnn-fused engine built with compile=true, timed the same way.
usage: python3 batch1.py SECONDS"""
import glob, subprocess, sys, time
import numpy as np, torch
from yoloforge.backends import get_backend
from yoloforge.timing import TimingBudget, measure

deadline = time.time() + float(sys.argv[1])
ROW = "yolov3-416-{precision}-b1.engine"
ENGINES = {"torch-eager fp32": ("torch-eager", "fp32"), "torch-aoti fp16": ("torch-aoti", "fp16"),
           "cudnn-fused fp16": ("cudnn-fused", "fp16")}
x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32)


def engine_file(engine, precision):
    found = glob.glob(f"results/engines/local/*/{engine}/" + ROW.format(precision=precision))
    return found[0] if found else None


runners = {}
for label, (engine, precision) in ENGINES.items():
    path = engine_file(engine, precision)
    if path is None:
        print(f"{label}: no engine file", flush=True)
        continue
    runner = get_backend(engine).load(path)
    runner.run(runner.prepare(x)); runner.synchronize()
    runners[label] = runner


def compare(runners):
    outputs = {label: r.run(r.prepare(x)).float().clone() for label, r in runners.items()}
    base = outputs["torch-eager fp32"]
    for label, out in outputs.items():
        print(f"{label}: max |diff| to eager fp32 {float((out - base).abs().nan_to_num().max()):.4f}", flush=True)
    medians = {label: [] for label in runners}
    for _ in range(3):
        for label, r in runners.items():
            medians[label].append(round(float(np.median(measure(r, [x], TimingBudget(0.3, 1.0, 5)))), 4))
    eager = np.median(medians["torch-eager fp32"])
    for label, m in medians.items():
        print(f"{label}: median per round {m} ms; {eager / np.median(m):.2f}x torch-eager fp32", flush=True)
    for label, r in runners.items():
        if label == "torch-eager fp32":
            continue
        p = r.prepare(x)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        gpu = []
        for _ in range(200):
            start.record(); r.run(p); end.record(); end.synchronize()
            gpu.append(start.elapsed_time(end))
        print(f"{label}: device time per replay, median {np.median(gpu):.4f} ms", flush=True)


def profile(label, runner):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    p = runner.prepare(x)
    with torch.inference_mode():
        for _ in range(3):
            runner.model(p)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                runner.model(p)
            torch.cuda.synchronize()
    total, count = 0.0, 0
    for e in prof.key_averages():
        if e.device_time_total <= 0 or e.key.startswith(("Memcpy", "Memset", "cuda", "Activity")):
            continue
        total += e.device_time_total / 10 / 1000
        count += e.count / 10
    print(f"{label}: kernels per call {count:.0f}, kernel time per call {total:.4f} ms", flush=True)
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=10, max_name_column_width=70), flush=True)


compare(runners)
for label in ("torch-aoti fp16", "cudnn-fused fp16"):
    if label in runners:
        profile(label, runners[label])

onnx = "results/onnx/yolov3-416.onnx"
if time.time() < deadline - 150 and "cudnn-fused fp16" in runners:
    begin = time.time()
    done = subprocess.run([sys.executable, "-m", "yoloforge", "build", "--engine", "cudnn-fused", "--onnx", onnx,
                           "--precision", "fp16", "--batch", "1", "--option", "compile=true",
                           "--output", "/tmp/compiled.engine"], capture_output=True, text=True)
    print(f"cudnn-fused fp16 compile=true: build exit {done.returncode} after {time.time() - begin:.0f} s;",
          done.stderr.strip().splitlines()[-1:] if done.stderr else "", flush=True)
    if done.returncode == 0 and time.time() < deadline - 60:
        begin = time.time()
        compiled = get_backend("cudnn-fused").load("/tmp/compiled.engine")
        compiled.run(compiled.prepare(x)); compiled.synchronize()
        print(f"compile=true loaded and captured in {time.time() - begin:.0f} s", flush=True)
        compare({**runners, "cudnn-fused fp16 compile=true": compiled})
else:
    print("no time left for the compile=true engine", flush=True)

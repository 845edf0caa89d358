#!/bin/bash
# The first GPU run (docs/results/nvidia-h100-80gb-hbm3/, commit 74b8571), job by job: the
# `yoloforge` commands the workflow's rules run, for a GPU machine where Snakemake is not installed. Resumable: a step
# whose output exists is skipped, so a run cut short is finished by running it again.
#   bash docs/results/run-gpu.sh WORKDIR
# WORKDIR ends up with benchmark.{csv,parquet,md}, report.html, device/, accuracy/, and the
# engines' sidecars. Needs the real yolov3-tiny weights at resources/weights/ (snakemake
# resources/weights/yolov3-tiny.weights fetches them).
set -uo pipefail
W=${1:?usage: run-gpu.sh WORKDIR}
TARGET=${TARGET:-gpu}
JOBS=${JOBS:-5}  # engine builds at once: AOTInductor compiles on the CPU
mkdir -p "$W"/{device,onnx,engines,bench,unavailable,accuracy,reference,logs}
Y="python3 -m yoloforge"
step() { # step OUTPUT LOG COMMAND...: run unless OUTPUT exists; log the outcome
  local output=$1 log=$2; shift 2
  [ -e "$output" ] && return 0
  local start=$SECONDS
  "$@" > "$W/logs/$log.log" 2>&1
  local rc=$?
  echo "$(date +%T) $log rc=$rc $((SECONDS - start))s" | tee -a "$W/logs/steps.txt"
  return $rc
}
export -f step; export W Y TARGET

step "$W/images" images $Y images --eval-dir "$W/images" --calibration-dir "$W/calibration" \
  --eval-count 64 --calibration-count 8
step "$W/device/$TARGET.json" device $Y device --engine tensorrt --engine onnxruntime --engine openvino \
  --engine torch-eager --engine torch-aoti --engine opencv-darknet \
  --precision fp32 --precision fp16 --precision bf16 --output "$W/device/$TARGET.json"
step "$W/yolov3.weights" synth-weights $Y synth-weights --cfg models/yolov3.cfg --output "$W/yolov3.weights"
step "$W/onnx/yolov3-tiny-416.onnx" convert-tiny $Y convert --cfg models/yolov3-tiny.cfg \
  --weights resources/weights/yolov3-tiny.weights --size 416 --output "$W/onnx/yolov3-tiny-416.onnx" &
for size in 416 608; do
  step "$W/onnx/yolov3-$size.onnx" convert-$size $Y convert --cfg models/yolov3.cfg \
    --weights "$W/yolov3.weights" --size $size --output "$W/onnx/yolov3-$size.onnx" &
done
wait

# Rows: model-size engine precision batch. The first rows are the ones the comparison is about.
ROWS="
yolov3-416 torch-eager fp32 1
yolov3-416 torch-aoti fp16 1
yolov3-608 torch-aoti fp16 32
yolov3-416 torch-aoti fp16 32
yolov3-tiny-416 torch-aoti fp16 1
yolov3-tiny-416 torch-eager fp32 1
yolov3-608 torch-eager fp32 1
yolov3-416 torch-eager fp16 1
yolov3-608 torch-eager fp16 1
yolov3-tiny-416 torch-eager fp16 1
yolov3-416 torch-aoti bf16 1
yolov3-608 torch-aoti fp16 1
yolov3-608 torch-aoti bf16 1
yolov3-tiny-416 torch-aoti bf16 1
yolov3-416 torch-eager fp32 32
yolov3-608 torch-eager fp32 32
yolov3-416 torch-eager fp16 32
yolov3-608 torch-eager fp16 32
yolov3-416 onnxruntime fp32 1
yolov3-tiny-416 onnxruntime fp32 1
"
build() {
  local model=$1 engine=$2 precision=$3 batch=$4 name="$1-$3-b$4"
  step "$W/engines/$engine/$name.engine" "build-$engine-$name" $Y build --engine "$engine" \
    --onnx "$W/onnx/$model.onnx" --precision "$precision" --batch "$batch" \
    --check-images "$W/images" --calibration "$W/calibration" \
    --option max_autotune=false --output "$W/engines/$engine/$name.engine"
}
export -f build
echo "$ROWS" | grep . | xargs -P "$JOBS" -L 1 bash -c 'build "$@"' _

for engine_precision in tensorrt:fp16 openvino:fp32 opencv-darknet:fp32; do
  engine=${engine_precision%:*}; precision=${engine_precision#*:}
  for model in yolov3-416 yolov3-608 yolov3-tiny-416; do
    step "$W/unavailable/$engine-$model.json" "unavailable-$engine-$model" $Y unavailable \
      --device "$W/device/$TARGET.json" --model "${model%-*}" --size "${model##*-}" --engine $engine \
      --precision $precision --batch 1 --target "$TARGET" --output "$W/unavailable/$engine-$model.json"
  done
done

# Timing: one job at a time, so no two share the GPU.
echo "$ROWS" | grep . | while read -r model engine precision batch; do
  name="$model-$precision-b$batch"
  [ -e "$W/engines/$engine/$name.engine" ] || continue
  step "$W/bench/$engine-$name.json" "bench-$engine-$name" $Y bench --engine "$engine" \
    --engine-file "$W/engines/$engine/$name.engine" --onnx "$W/onnx/$model.onnx" \
    --model "${model%-*}" --images "$W/images" --batch "$batch" --warmup-seconds 1 --seconds 3 \
    --min-iterations 10 --rounds 1 --target "$TARGET" --output "$W/bench/$engine-$name.json"
done

# Accuracy of the real-weights model (64 images), each engine at batch 1.
step "$W/reference/yolov3-tiny-416.json" reference-tiny $Y reference --onnx "$W/onnx/yolov3-tiny-416.onnx" \
  --cfg models/yolov3-tiny.cfg --weights resources/weights/yolov3-tiny.weights --images "$W/images" \
  --count 64 --output "$W/reference/yolov3-tiny-416.json"
for engine_file in "$W"/engines/*/yolov3-tiny-416-*-b1.engine; do
  engine=$(basename "$(dirname "$engine_file")"); name=$(basename "$engine_file" .engine)
  step "$W/accuracy/$engine-$name.json" "accuracy-$engine-$name" $Y accuracy --engine "$engine" \
    --engine-file "$engine_file" --model yolov3-tiny --images "$W/images" \
    --reference "$W/reference/yolov3-tiny-416.json" --max-map-drop 0.01 --draw 0 --target "$TARGET" \
    --output "$W/accuracy/$engine-$name.json" --coco-output "$W/accuracy/$engine-$name.coco.json"
done

rm -f "$W/benchmark.csv" "$W/report.html"
step "$W/benchmark.csv" table $Y table --output "$W/benchmark.csv" --parquet "$W/benchmark.parquet" \
  --markdown "$W/benchmark.md" --checkout . --device "$W/device/$TARGET.json" \
  --accuracy "$W"/accuracy/*-b1.json -- "$W"/bench/*.json "$W"/unavailable/*.json
step "$W/report.html" report $Y report --table "$W/benchmark.parquet" --output "$W/report.html" \
  "$W"/bench/*.parquet

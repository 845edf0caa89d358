# usage (repository root, GPU machine): bash explore.sh
# The cudnn-fused engine's GPU tests, then yolov3-416 fp16 at batch 1 built as torch-aoti and as
# cudnn-fused and timed against torch-eager fp32 in one process (batch1.py).
export PYTHONUNBUFFERED=1
here=docs/results/nvidia-h200/run-2026-12-03/scripts
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
mkdir -p /tmp/q $OUT/explore
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader
python3 -c "import torch, cudnn; print('torch', torch.__version__, 'cudnn-frontend', cudnn.__version__, 'cudnn', cudnn.backend_version_string())" 2>&1 | tail -1
python3 -m yoloforge synth-weights --cfg models/yolov3.cfg --output /tmp/q/yolov3.weights > /tmp/q/w.log 2>&1 || { cat /tmp/q/w.log; exit 1; }
python3 -m yoloforge convert --cfg models/yolov3.cfg --weights /tmp/q/yolov3.weights --size 416 --output /tmp/q/yolov3-416.onnx > /tmp/q/c.log 2>&1 || { tail -3 /tmp/q/c.log; exit 1; }
echo "converted after $SECONDS s"
B="build --onnx /tmp/q/yolov3-416.onnx --batch 1"
python3 -m yoloforge $B --engine torch-aoti --precision fp16 --option max_autotune=false --output /tmp/q/aoti.engine > /tmp/q/build-aoti.log 2>&1 &
python3 -m yoloforge $B --engine torch-eager --precision fp32 --output /tmp/q/eager.engine > /tmp/q/build-eager.log 2>&1 &
echo "== GPU tests of cudnn-fused"
timeout 240 python3 -m pytest -n 0 -p no:cacheprovider -q --durations=6 tests/test_cudnn_fused.py > /tmp/q/gpu-tests.txt 2>&1
tail -25 /tmp/q/gpu-tests.txt; echo "tests done after $SECONDS s"
timeout 200 python3 -m yoloforge $B --engine cudnn-fused --precision fp16 --output /tmp/q/fused.engine > /tmp/q/build-fused.log 2>&1
echo "cudnn-fused built after $SECONDS s (exit $?)"; tail -4 /tmp/q/build-fused.log | cut -c1-400
wait; echo "all built after $SECONDS s"; tail -n1 /tmp/q/build-aoti.log | cut -c1-300
python3 -c "import zipfile; open('/tmp/q/fused-plans.json','wb').write(zipfile.ZipFile('/tmp/q/fused.engine').read('plans.json'))"
cp /tmp/q/*.log /tmp/q/*.txt /tmp/q/fused-plans.json /tmp/q/*.engine.json $OUT/explore/ 2>/dev/null
timeout 240 python3 $here/batch1.py /tmp/q/eager.engine /tmp/q/aoti.engine /tmp/q/fused.engine > /tmp/q/batch1.txt 2>&1
grep -v -i warn /tmp/q/batch1.txt | cut -c1-250 | head -120; cp /tmp/q/batch1.txt $OUT/explore/
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader
echo "done after $SECONDS s"

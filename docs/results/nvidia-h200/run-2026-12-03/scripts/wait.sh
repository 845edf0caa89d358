# usage: wait.sh SECONDS: wait for the background run; when it is done, run the same command
# again (it must find nothing to do), time the batch-1 engines side by side, and pack everything.
limit=$1; start=$SECONDS
here=docs/results/nvidia-h200/run-2026-12-03/scripts
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
while [ ! -f /tmp/run/rc1 ] && [ $((SECONDS-start)) -lt $((limit-60)) ]; do
  sleep 15
  echo "$(date -u +%T) $(grep -E 'steps \(' /tmp/run/run1.log | tail -1)"
done
if [ -f /tmp/run/rc1 ] && [ ! -f /tmp/run/rc2 ]; then
  echo "run1 rc=$(cat /tmp/run/rc1), finished $(date -u +%FT%TZ)"; date -u +%FT%TZ > /tmp/run/finished
  bash $here/snakemake.sh /tmp/run/run2.log /tmp/run/rc2
  echo "run2 rc=$(cat /tmp/run/rc2)"; tail -3 /tmp/run/run2.log
fi
if [ -f /tmp/run/rc2 ] && [ ! -f /tmp/run/batch1.txt ] && [ $((SECONDS-start)) -lt $((limit-150)) ]; then
  timeout $((limit-60-(SECONDS-start))) python3 $here/batch1.py results/engines/local/*/torch-eager/yolov3-416-fp32-b1.engine results/engines/local/*/torch-aoti/yolov3-416-fp16-b1.engine results/engines/local/*/cudnn-fused/yolov3-416-fp16-b1.engine > /tmp/run/batch1.txt 2>&1
  grep -v -i warn /tmp/run/batch1.txt | tail -40
fi
grep -E "Error|error:|Traceback" /tmp/run/run1.log | head -10
mkdir -p logs/run; cp /tmp/run/* logs/run/
mkdir -p results/cudnn-plans
python3 -c "
import glob, os, zipfile
for engine in glob.glob('results/engines/*/*/cudnn-fused/*.engine'):
    with zipfile.ZipFile(engine) as archive, open('results/cudnn-plans/' + os.path.basename(engine)[:-7] + '.json', 'wb') as out:
        out.write(archive.read('plans.json'))"
find results/engines -name '*.json' > /tmp/sidecars
tar czf $OUT/results.tgz results/bench results/accuracy results/device results/unavailable results/reference \
  results/cudnn-plans results/benchmark.csv results/benchmark.md results/benchmark.parquet results/report.html \
  logs -T /tmp/sidecars 2>&1 | tail -2
ls -la $OUT
[ -f results/benchmark.parquet ] && python3 -c "
import pandas as pd; t = pd.read_parquet('results/benchmark.parquet')
cols = ['model','width','engine','precision','batch','scope','median_ms','images_per_second','speedup','achieved_tflops','fraction_of_ceiling','build_seconds','agreement_map50']
print(t[t['median_ms'].notna()][cols].to_string(max_colwidth=12))" 2>&1 | cut -c1-200

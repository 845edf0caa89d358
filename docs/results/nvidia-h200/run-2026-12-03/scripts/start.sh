# usage (repository root, GPU machine): bash start.sh SECONDS
# Installs the carried wheels, starts the Snakemake run in
# a process session of its own (it outlives this command) and waits for it (wait.sh).
export PYTHONUNBUFFERED=1
here=docs/results/nvidia-h200/run-2026-12-03/scripts
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
mkdir -p /tmp/run
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu --format=csv | tee /tmp/run/gpu-start.csv
python3 -c "import torch, cudnn; print('torch', torch.__version__, 'cudnn-frontend', cudnn.__version__, 'cudnn', cudnn.backend_version_string())" 2>&1 | tail -1
setsid nohup nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv -l 5 > /tmp/run/clocks.csv 2>&1 < /dev/null &
date -u +%FT%TZ > /tmp/run/started
setsid nohup bash $here/snakemake.sh /tmp/run/run1.log /tmp/run/rc1 < /dev/null > /dev/null 2>&1 &
sleep 5; head -3 /tmp/run/run1.log
bash $here/wait.sh $(( $1 - SECONDS ))

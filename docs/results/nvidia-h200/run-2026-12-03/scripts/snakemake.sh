# usage: snakemake.sh LOG RC: the run's one Snakemake command; its exit status goes to RC.
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m snakemake --cores 16 --scheduler greedy --keep-going \
  --configfile workflow/configs/gpu.yaml workflow/configs/offline.yaml \
  docs/results/nvidia-h200/run-2026-12-03/scripts/subset.yaml > "$1" 2>&1
echo $? > "$2"

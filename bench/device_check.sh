#!/usr/bin/env bash
# One pass over every CUDA path and GPU benchmark, for a GPU machine with a time limit (each step has its
# own timeout, so a slow step cannot starve the others). Results go to $OUT (default ./device-out):
#   all.log (everything printed), speed.md, train.json, demo_report.md, hotspots.txt.
#   OUT=/tmp/gpu bash bench/device_check.sh
# Needs cryoseg's dependencies importable (PYTHONPATH or an install); CUDA is used when present.
set -u
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
log=$OUT/all.log
step() {  # step <seconds> <title> <command...>
  local t=$1 title=$2; shift 2
  echo -e "\n===== $title (limit ${t}s) =====" | tee -a "$log"
  local s=$(date +%s.%N)
  timeout "$t" "$@" 2>&1 | tee -a "$log"
  echo "===== $title: exit ${PIPESTATUS[0]}, $(python3 -c "print(round($(date +%s.%N)-$s,1))") s wall" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
python3 -c "import torch, cryoseg; from cryoseg.core import describe_machine; print(torch.__version__, describe_machine())" 2>&1 | tee -a "$log"
step 80  "GPU tests (tests/test_gpu.py)" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
step 130 "training: time to target + throughput (bench/train.py)" \
  python3 bench/train.py --devices cuda --max-epochs 40 --steps 5 --json "$OUT/train.json"
step 90  "end-to-end speed 4096² (bench/speed.py)" \
  python3 bench/speed.py --devices cuda --repeat 3 --out "$OUT/speed.md"
step 120 "demo on the GPU (cryoseg demo)" \
  python3 -c "import sys; from cryoseg.cli.main import main; sys.argv[0] = 'cryoseg'; sys.exit(main())" demo --out /tmp/cryoseg-demo --force
cp /tmp/cryoseg-demo/report.md "$OUT/demo_report.md" 2>/dev/null
step 70  "dense CRF, pydensecrf2 vs torch CUDA (bench/crf.py)" \
  python3 bench/crf.py --sizes 1024 4096 --threads 1 --skip torch-cpu tiled
step 40  "simulation (bench/simulate.py)" python3 bench/simulate.py --devices cuda --repeat 3
step 90  "where the time goes (bench/hotspots.py)" \
  bash -c "python3 bench/hotspots.py --top 10 --stages simulate predict crf 2>&1 | grep -v '^---\|USDT' > '$OUT/hotspots.txt'; tail -c 400 '$OUT/hotspots.txt'"

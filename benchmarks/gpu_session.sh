#!/usr/bin/env bash
# One device session's checks, in order of importance, each step under its own time limit
# so a slow one cannot starve the rest. Run from the repository root on a machine with a
# CUDA GPU (torch CUDA build, triton, numba, pytest-xdist):
#
#     bash benchmarks/gpu_session.sh [OUT_DIR]
#
# Logs go to OUT_DIR/all.log (default: $OUT, else benchmarks/results/gpu-session); the CSVs
# of gpu_validate.py, normkit bench and crossover.py beside it.
source "$(dirname "$0")/_gpu_session.sh" "$@"
step 150 validate python3 benchmarks/gpu_validate.py --skip-bench --out "$out"
step 120 pytest python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_triton_kernels.py tests/test_native.py
step 100 model python3 -m normkit bench --device cuda --layers overhead,model --repeats 10 --out "$out"
step 50 fused-check python3 benchmarks/gpu_fused_check.py
step 50 fused-bench python3 -m normkit bench --device cuda --layers add_rms_norm,add_layer_norm,modulated_layer_norm --repeats 20 --out "$out"
step 50 crossover-in python3 benchmarks/crossover.py --device cuda --families instance_norm --min-log2 16 --max-log2 24 --repeats 5 --out "$out"
echo "=== done $(date -u +%H:%M:%S)" | tee -a "$log"

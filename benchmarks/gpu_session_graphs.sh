#!/usr/bin/env bash
# The second H200 session's checks (2026-11-28, after the fused ops' native path and
# gpu_graphs_check.py were added), each step under its own time limit:
#
#     bash benchmarks/gpu_session_graphs.sh [OUT_DIR]
#
# 1. tests/test_native.py on CUDA (the fused ops' native path is new there);
# 2. the fused-op bench (its normkit-auto rows take that path at the bench shapes);
# 3. the fused ops' crossover on CUDA, 64 Ki to 64 Mi elements (CUDA_THRESHOLDS);
# 4. whole-step CUDA graph capture, replay and timing (auto, then NORMKIT_BACKEND=triton).
source "$(dirname "$0")/_gpu_session.sh" "$@"
step 110 pytest python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_native.py
step 60 fused-bench python3 -m normkit bench --device cuda --layers add_rms_norm,add_layer_norm,modulated_layer_norm --repeats 20 --out "$out"
step 110 crossover-fused python3 benchmarks/crossover.py --device cuda --families add_rms_norm,add_layer_norm,modulated_layer_norm --min-log2 16 --max-log2 26 --repeats 5 --out "$out"
step 80 graphs python3 benchmarks/gpu_graphs_check.py --out "$out"
step 70 graphs-triton env NORMKIT_BACKEND=triton python3 benchmarks/gpu_graphs_check.py --repeats 30 --out "$out"
echo "=== done $(date -u +%H:%M:%S)" | tee -a "$log"

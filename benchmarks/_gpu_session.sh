# What the device-session scripts share (sourced, not run): the output folder from the
# first argument (else $OUT, else benchmarks/results/gpu-session), the log, the `step`
# runner and the version header.
#
#     source "$(dirname "$0")/_gpu_session.sh" "$@"
set -u
case "${1:-}" in
    -h | --help)  # the calling script's header comment
        sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" | sed '/^source /d'
        exit 0 ;;
    -*)
        echo "$(basename "$0"): unknown option $1; usage: bash $0 [OUT_DIR]" >&2
        exit 2 ;;
esac
out="${1:-${OUT:-benchmarks/results/gpu-session}}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
log="$out/all.log"
step() {  # step SECONDS NAME COMMAND...
    local limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S)): $*" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 40
    echo "=== $name rc=${PIPESTATUS[0]}" | tee -a "$log"
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
python3 -c "import sys, torch, triton, numba, numpy; print(sys.version.split()[0], torch.__version__, triton.__version__, numba.__version__, numpy.__version__)" | tee -a "$log"

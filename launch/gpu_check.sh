#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): lax vs host, parity and speed against pyautoattack on
# this machine's GPU, about 8 minutes on one H100; results in gpu_check/results.json.
#   launch/gpu_check.sh
#   launch/gpu_check.sh --parts=C --out=/tmp/speed
HPM_EXTRAS="${HPM_EXTRAS:-test,torch,cuda12}" . "$(dirname "$0")/_env.sh"
cd "$ROOT"
exec python benchmarks/gpu_check.py "$@"

#!/usr/bin/env bash
# The checks issue 14 asks for whenever a GPU is at hand, in three parts that each fit one device
# call of 10 minutes (PART=1, 2 or 3; all by default), most wanted first.
# Part 1: the equivalence tests on the device, then the serving benchmark there, c64 and c8 (with
# where its time to first token goes).
# Part 2: c64 again with prefill chunks run in forwards of their own (--no-ride-prefill) and with
# newcomers gathered for up to 8 steps (--admit-within-steps 8; riding admits at every step by
# default) for the A/Bs, and a ride against the two forwards it replaces.
# Part 3: a long prompt's effect on running streams by prefill chunk and on short prompts queued
# with it, decode steps on the growing KV cache against DynamicCache, sampling 64 rows against
# transformers' warpers (alone, and through the scheduler on a GPT-2-sized vocabulary), the prefix
# cache on a shared system prompt (requests arriving apart and in a burst), then (with the
# previous thread-per-stream server unpacked in bench/.baseline and carried along) the serving
# process's CPU per request and tokens/s against it; without it, a model-less sync gRPC server's
# CPU per call against grpc.aio's.
#   [PART=1|2|3] bench/device_check.sh [DEVICE] [OUT_DIR]      # defaults: every part, cuda, here
# $PYTHON (default python3) must import the project's dependencies (e.g. PYTHON=.venv/bin/python).
set -u
device="${1:-cuda}"
out="$(realpath "${2:-.}")"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
part="${PART:-all}"
"$python" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')" | tee "$out/env.txt"
# [LOG=NAME] bench SECONDS NAME [ARGS…]: bench/NAME.py on the device within SECONDS, its output in
# $out/NAME.log ($LOG.log with LOG)
bench() {
    local seconds="$1" name="$2"
    shift 2
    timeout "$seconds" "$python" "bench/$name.py" --device "$device" "$@" >"$out/${LOG:-$name}.log" 2>&1
    echo "bench/$name.py $* on $device: exit $?"
}
wanted() { [ "$part" = all ] || [ "$part" = "$1" ]; }
if wanted 1; then
SCALPEL_TEST_DEVICE="$device" timeout 150 "$python" -m pytest -q -p no:cacheprovider -rA \
    tests/test_batched_rows.py tests/test_engine_process.py tests/test_scheduler.py tests/test_growing_cache.py \
    >"$out/tests.log" 2>&1
echo "equivalence tests on $device: exit $?"
grep -E "passed|failed" "$out/tests.log" | tail -3
bench 420 serving --rounds 2 --concurrency 64 8
grep -E "ratio|per_message|ttft|queue_wait|speedup" "$out/serving.log"
fi
if wanted 2; then
# c64 again without prefill chunks riding in decode steps (service/engine/ragged.py), and riding with
# newcomers gathered for up to 8 decode steps (more tokens per forward, later first tokens; a tie
# in tokens/s on the CPU box), for the A/Bs
LOG=serving-apart bench 240 serving --rounds 2 --concurrency 64 --no-ride-prefill
grep -E "ratio|speedup|ttft_p" "$out/serving-apart.log"
LOG=serving-gather8 bench 240 serving --rounds 2 --concurrency 64 --admit-within-steps 8
grep -E "ratio|speedup|ttft_p" "$out/serving-gather8.log"
bench 90 ragged_step --rounds 3 && cat "$out/ragged_step.log"
fi
wanted 3 || exit 0
bench 90 chunked_prefill --rounds 2
grep -E "chunk|together" "$out/chunked_prefill.log"
bench 60 kv_cache --rounds 3 && cat "$out/kv_cache.log"
bench 60 sampling --rounds 2 && cat "$out/sampling.log"
bench 90 sampled_batch --rounds 2 && cat "$out/sampled_batch.log"
bench 90 prefix_cache --rounds 2 && cat "$out/prefix_cache.log"
if [ -d bench/.baseline/service ]; then  # the thread-per-stream server: git archive 9381b8b | tar -x -C bench/.baseline
    bench 150 request_cpu --baseline bench/.baseline --tokens 32 --threads 64 --seconds 6 --rounds 4
    cat "$out/request_cpu.log"
else
    timeout 60 "$python" bench/grpc_ceiling.py --servers >"$out/grpc_servers.log" 2>&1
    echo "bench/grpc_ceiling.py --servers: exit $?"
    cat "$out/grpc_servers.log"
fi

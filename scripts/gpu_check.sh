#!/usr/bin/env bash
# Checks lightning_ehf on a machine with NVIDIA GPUs, from the repository root (about 5 minutes):
#   1. the GPU test cases of the suite (every core test parametrised over devices runs on cuda too);
#   2. a short run on one GPU, twice: identical metrics (CUBLAS_WORKSPACE_CONFIG is set);
#   3. SIGTERM during a run on one GPU: exit 75, then --resume ends with the uninterrupted run's metrics
#      (this exercises the CUDA random state stored in checkpoints);
#   4. with two or more GPUs: the same run with DDP on all of them, and SIGTERM + resume under DDP;
#   5. measurements, written to $OUT/gpu_check.json: training steps/s of the same run on the CPU and on one GPU
#      in 32-true and in bf16-mixed, and the test NLL of each (logged, and re-evaluated in float64 by ehf eval).
#   5. the compiled training step (trainer.compile: torch.compile, CUDA graphs): a short run with it, and
#      `ehf bench --only compile`: steps/s eager against captured, and the compile time (printed).
# Prints one line per check and exits 1 if any failed. PYTHON: the interpreter with lightning_ehf installed
# (default .venv/bin/python); OUT: where runs and logs go (default a new temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d -t ehf-gpu-check-XXXXXX)}
export CUBLAS_WORKSPACE_CONFIG=:4096:8 WANDB_MODE=disabled WANDB_SILENT=true
mkdir -p "$OUT"
failed=0
check() {  # check NAME COMMAND...: run, report, remember failures
    local name=$1; shift
    if "$@" >"$OUT/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name (log: $OUT/$name.log)"; failed=1; fi
}

"$PY" - <<'PY' || { echo "FAIL no CUDA device visible to torch"; exit 1; }
import torch
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
PY
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

SHORT=(trainer.max_steps=200 trainer.val_check_interval=50 data.n_val=512 data.n_test=512 eval.iw_samples=64
       plots.enabled=false logger.wandb.mode=disabled progress.mode=lines progress.every_n_steps=10)
GPU1=(trainer.accelerator=gpu trainer.devices=1)
DDP=(trainer.accelerator=gpu "trainer.devices=$NGPU" trainer.strategy=ddp trainer.ddp_timeout_s=120)

same_metrics() {  # same_metrics RUN_A RUN_B: metrics.json equal except wall time, metrics.csv identical
    "$PY" - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(f"{d}/metrics.json")) for d in sys.argv[1:3])
diff = {k: (a[k], b.get(k)) for k in a if k != "wall_time_s" and a[k] != b.get(k)}
assert not diff, diff
assert open(f"{sys.argv[1]}/metrics.csv").read() == open(f"{sys.argv[2]}/metrics.csv").read(), "metrics.csv differ"
print("identical:", {k: a[k] for k in ("steps", "test/nll") if k in a})
PY
}

sigterm_resume() {  # sigterm_resume NAME OVERRIDES...: SIGTERM at step 80, exit 75, resume == uninterrupted
    local name=$1; shift
    local a="$OUT/$name-A" b="$OUT/$name-B"
    "$PY" -m lightning_ehf train "${SHORT[@]}" "$@" "run.dir=$a" || return 1
    "$PY" -m lightning_ehf train "${SHORT[@]}" "$@" "run.dir=$b" >"$OUT/$name-B.out" 2>&1 &
    local pid=$!
    until grep -q "^step 80/" "$OUT/$name-B.out" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "run B ended before step 80"; return 1; }
        sleep 0.2
    done
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    [ "$rc" -eq 75 ] || { echo "exit code $rc, expected 75"; return 1; }
    grep "preempted" "$OUT/$name-B.out"
    "$PY" -m lightning_ehf train --resume "$b" || return 1
    same_metrics "$a" "$b"
}

deterministic() {  # the same run twice on one GPU: identical metrics
    "$PY" -m lightning_ehf train "${SHORT[@]}" "${GPU1[@]}" "run.dir=$OUT/det-1" || return 1
    "$PY" -m lightning_ehf train "${SHORT[@]}" "${GPU1[@]}" "run.dir=$OUT/det-2" || return 1
    same_metrics "$OUT/det-1" "$OUT/det-2"
}

check pytest-cuda "$PY" -m pytest -q tests/core -k cuda -p no:cacheprovider
check one-gpu-deterministic deterministic
check one-gpu-sigterm-resume sigterm_resume gpu1 "${GPU1[@]}"
if [ "$NGPU" -ge 2 ]; then
    check ddp-all-gpus "$PY" -m lightning_ehf train "${SHORT[@]}" "${DDP[@]}" "run.dir=$OUT/ddp"
    check ddp-sigterm-resume sigterm_resume ddp "${DDP[@]}"
else
    echo "SKIP ddp (one GPU)"
fi
measure() {  # the same run on CPU (32-true) and one GPU (32-true, bf16-mixed): steps/s and test NLL -> JSON
    local name
    for name in cpu-32-true gpu-32-true gpu-bf16-mixed; do
        local acc=gpu prec=${name#*-}
        [ "${name%%-*}" = cpu ] && acc=cpu
        "$PY" -m lightning_ehf train "${SHORT[@]}" trainer.accelerator=$acc trainer.devices=1 "trainer.precision=$prec" \
            "run.dir=$OUT/measure-$name" || return 1
        "$PY" -m lightning_ehf eval --ckpt "$OUT/measure-$name" --split test --iw 64 --json "$OUT/measure-$name/eval.json" \
            || return 1
    done
    "$PY" - "$OUT" <<'PY'
import json, sys, torch
out = sys.argv[1]
runs = {}
for name in ("cpu-32-true", "gpu-32-true", "gpu-bf16-mixed"):
    m = json.load(open(f"{out}/measure-{name}/metrics.json"))
    e = json.load(open(f"{out}/measure-{name}/eval.json"))
    # val/elapsed_s: training seconds (validations excluded) when the last validation (the last step) started
    runs[name] = {"steps": m["steps"], "training_s": m["val/elapsed_s"], "steps_per_s": m["steps"] / m["val/elapsed_s"],
                  "test_nll_logged": m["test/nll"], "test_nll_eval_float64": e["nll"], "eval_stderr": e["nll_stderr"]}
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "command": "bash scripts/gpu_check.sh",
       "runs": runs,
       "gpu_vs_cpu_steps_per_s": runs["gpu-32-true"]["steps_per_s"] / runs["cpu-32-true"]["steps_per_s"],
       "bf16_vs_32_steps_per_s": runs["gpu-bf16-mixed"]["steps_per_s"] / runs["gpu-32-true"]["steps_per_s"],
       "bf16_minus_32_test_nll_eval": runs["gpu-bf16-mixed"]["test_nll_eval_float64"]
                                      - runs["gpu-32-true"]["test_nll_eval_float64"],
       "bf16_logged_minus_eval": runs["gpu-bf16-mixed"]["test_nll_logged"] - runs["gpu-bf16-mixed"]["test_nll_eval_float64"]}
json.dump(res, open(f"{out}/gpu_check.json", "w"), indent=2)
print(json.dumps(res, indent=2))
PY
}
check measure-precision-and-speed measure
echo "measurements: $OUT/gpu_check.json"

check one-gpu-compiled-run "$PY" -m lightning_ehf train "${SHORT[@]}" "${GPU1[@]}" trainer.compile=true "run.dir=$OUT/compiled"
check compiled-step-bench "$PY" -m lightning_ehf bench --quick --only compile --out "$OUT/bench-compile"
grep -h "Compiled training step" "$OUT/bench-compile/bench.md" 2>/dev/null || true
echo "logs and runs: $OUT"
exit "$failed"

#!/usr/bin/env bash
# The accelerator measurements of docs/benchmarks.md ("bfloat16 on an accelerator"), in order of importance, each
# phase under its own time limit so that a short lease still brings back the first tables.
#
#   OUT=/tmp/out bash bench/accelerator.sh            # every phase
#   OUT=/tmp/out PHASES="step torch" bash bench/accelerator.sh
#
# Phases (their limits add up to 22 minutes; a lease of 15 minutes of device time in all takes PHASES="step torch"
# or "sampling fid" per call):
#   step      the CIFAR-10 teacher step and distillation update, bfloat16 and float32, batch 128 (MFU, memory)
#   torch     the PyTorch mirror, bfloat16 autocast, eager and torch.compile (skipped where torch is missing)
#   sampling  images/s of the CIFAR-10 network at 256, 8, 4, 2, 1 DDIM steps, batches 1024 and 2048, both dtypes
#   fid       a 50,000-sample FID pass at 8 steps in bfloat16, sampling plus Inception
#   fit       the largest per-device batch: CIFAR-10 bfloat16 in the device's memory, ImageNet 64 in 80 GiB with
#             and without remat
#   ot        DPM-OT's assignment at 50,000 targets of dimension 3,072 (issue 20): seconds per solver step, memory
# Each phase writes OUT/<phase>.md (its table) and OUT/<phase>.log; OUT/environment.txt records the stack, the
# device and the XLA flags. PEAK_TFLOPS (default 989, the H100's and H200's dense bfloat16 peak) sets MFU.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the tables}
PHASES=${PHASES:-"step torch sampling fid fit ot"}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/../jax_cache}

{
  date -u
  python -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  python -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  echo "XLA_FLAGS=${XLA_FLAGS:-}"
} > "$OUT/environment.txt" 2>&1

phase() {  # phase NAME SECONDS COMMAND...: the command's markdown rows into OUT/NAME.md, everything into the log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  local began=$SECONDS
  timeout "$limit" "$@" >> "$OUT/$name.log" 2>&1
  local status=$?
  grep -E '^\||^(device|cifar10|imagenet64|torch|overhead|noise)' "$OUT/$name.log" > "$OUT/$name.md"
  echo "== $name: status $status after $((SECONDS - began))s" | tee -a "$OUT/$name.log"
}

for p in $PHASES; do
  case $p in
    step)
      phase step 240 python bench/train_step.py --setups=cifar10 --kinds=teacher,distill \
        --variants=bfloat16,float32 --steps=20 --peak-tflops="$PEAK_TFLOPS" ;;
    torch)
      if python -c "import torch" 2>/dev/null; then
        phase torch 60 python bench/torch_unet.py --steps=20 --dtype=bfloat16
        phase torch_compile 180 python bench/torch_unet.py --steps=20 --dtype=bfloat16 --compile
      else
        echo "torch: not installed here, skipped" | tee "$OUT/torch.md"
      fi ;;
    sampling)
      phase sampling 180 python bench/sampling_throughput.py --setup=cifar10 --steps=256,8,4,2,1 \
        --batches=1024,2048 --dtypes=bfloat16,float32 --json="$OUT/sampling.json" --plot="$OUT/sampling.png" ;;
    fid)
      phase fid 120 python bench/fid_pass.py --setup=cifar10 --samples=50000 --steps=8 --dtype=bfloat16 \
        --sample-batch=2048 --inception-batch=500 ;;
    fit)
      phase fit_cifar10 150 python bench/train_step.py --setups=cifar10 --variants=bfloat16 --batch-size=fit \
        --fit-from=128 --steps=5 --peak-tflops="$PEAK_TFLOPS"
      phase fit_imagenet64 240 python bench/train_step.py --setups=imagenet64 --variants=bfloat16,bfloat16+remat \
        --batch-size=fit --memory-gib=80 --fit-from=32 --steps=5 --peak-tflops="$PEAK_TFLOPS" ;;
    ot)
      phase ot 120 python bench/ot_scale.py --num-targets=50000 --dim=3072 --batch=50000 ;;
    *)
      echo "Unknown phase $p; choose from: step torch sampling fid fit ot." >&2
      exit 2 ;;
  esac
done

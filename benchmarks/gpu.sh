#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one short run (about 7-8 minutes on an H200).
#
#     bash benchmarks/gpu.sh OUTDIR        # OUTDIR gets one .txt (and .json) per benchmark
#
# Expects egl and the `bench` extra importable (pip install -e '.[bench]'). Each stage has its
# own time limit, so one stuck stage does not cost the others.
set -u
out=${1:-results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit \
  --format=csv 2>&1 | tee "$out/gpu.txt"
$py -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)" \
  | tee -a "$out/gpu.txt"
stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "=== $name"
  timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  echo "exit $?" >> "$out/$name.txt"
  tail -n 60 "$out/$name.txt"
}
stage kernel 200 $py benchmarks/kernel.py --sweep --stages --compile-dtypes bfloat16 --json "$out/kernel.json"
stage train_step 70 $py benchmarks/train_step.py --device cuda --precision bf16 --batch 256 --size 224 \
  --inline-memory --json "$out/train_step.json"
stage train_step_cl 70 $py benchmarks/train_step.py --device cuda --precision bf16 --batch 256 --size 224 \
  --inline-memory --channels-last --json "$out/train_step_cl.json"
stage profile_clf_align 40 $py benchmarks/profile_step.py --recipe clf+align --device cuda --precision bf16 \
  --batch 256 --size 224 --channels-last --rows 20
stage saliency 100 $py benchmarks/saliency.py --settings 32x224,256x224,64x64 --inline-memory --repeats 6 \
  --json "$out/saliency.json"
stage train_step_r50 50 $py benchmarks/train_step.py --arch resnet50 --device cuda --precision bf16 --batch 128 \
  --size 224 --inline-memory --channels-last --only clf+align,align,mixup --json "$out/train_step_r50.json"
stage metrics 30 $py benchmarks/metrics.py --batch 256 --size 224
stage train_step_fbn 60 $py benchmarks/train_step.py --device cuda --precision bf16 --batch 256 --size 224 \
  --inline-memory --channels-last --only erm-fbn,align-fbn,align-fbn-2pass --json "$out/train_step_fbn.json"
stage profile_align 40 $py benchmarks/profile_step.py --recipe align --device cuda --precision bf16 \
  --batch 256 --size 224 --channels-last --rows 25
stage train_step_fp16 60 $py benchmarks/train_step.py --device cuda --precision fp16 --batch 256 --size 224 \
  --inline-memory --channels-last --only clf+align,align --json "$out/train_step_fp16.json"

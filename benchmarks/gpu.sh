#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one short run (about 8 minutes on an H200; stage limits sum to about 16).
#
#     bash benchmarks/gpu.sh OUTDIR        # OUTDIR gets one .txt (and .json) per benchmark
#
# Expects egl, its dependencies and the `bench` extra importable (pip install -e '.[bench]'; on an
# image that has torch, timm and Triton, wheels of egl, kornia, kornia_rs, captum, grad-cam, ttach
# and torchcam installed with --no-deps suffice). Each stage has its
# own time limit, so one stuck stage does not cost the others. With SNAPSHOT=FILE.tgz set, OUTDIR is
# packed into it after every stage (what a run cut short still brings back). Stages run in order of
# what they decide (device correctness, saliency with its CUDA-graph replays, the kernel defaults,
# the training step first); SKIP="name name" leaves
# stages out (e.g. SKIP="train_step_fbn train_step_fp16" when device time is short).
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
  case " ${SKIP:-} " in *" $name "*) echo "=== $name skipped"; return;; esac
  echo "=== $name"
  timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  echo "exit $?" >> "$out/$name.txt"
  tail -n 40 "$out/$name.txt"
  grep -H "Triton kernels failed" "$out/$name.txt"
  if [ -n "${SNAPSHOT:-}" ]; then tar czf "$SNAPSHOT" -C "$(dirname "$out")" "$(basename "$out")"; fi
}
gpu="--device cuda --precision bf16"
stage gpu_checks 90 $py benchmarks/gpu_checks.py --json "$out/gpu_checks.json"
# the learned masker's kernels: the defaults (BatchNorm's multiply-add and backward as Triton kernels)
# against PyTorch's paths, and the bias add + ReLU in one pass (egl.maskers._bias_relu, off by default
# until timed here); then the same operations one by one, and where a whole ALIGN step's time goes
stage train_step_masker 60 $py benchmarks/train_step.py $gpu --batch 256 --size 224 --inline-memory --channels-last \
  --only clf+align,align,align-biasrelu,align-nativebnbwd-torchaffine --json "$out/train_step_masker.json"
stage masker_ops 30 $py benchmarks/masker_ops.py $gpu --batch 256 --size 224
stage profile_align 40 $py benchmarks/profile_step.py --recipe align $gpu --batch 256 --size 224 --channels-last \
  --rows 30
stage saliency 120 $py benchmarks/saliency.py --settings 32x224,64x64 --inline-memory --repeats 4 \
  --json "$out/saliency.json"
stage kernel 140 $py benchmarks/kernel.py --sweep --stages --compile-dtypes '' --json "$out/kernel.json"
# fuse="auto" (one launch) fuses at 1.8-2.0 samples per multiprocessor (it runs in steps of a sample
# per multiprocessor): at batches on both sides of the window's edges (H200: 132 multiprocessors),
# the default against the three launches (fuse off) and the one launch, for the shapes it fuses
# (bf16 7x7, fp32 7x7 and 14x14).
stage kernel_fuse_batch 150 bash -c "for b in 132 200 240 256 264 512; do $py benchmarks/kernel.py --batch \$b \
  --sweep-only --configs '{};{\"fuse\": \"off\"};{\"fuse\": \"on\"}' --cases 512:7,2048:7,1024:14 \
  --json '$out'/kernel_fuse_b\$b.json || exit; done"
stage train_step_cl 90 $py benchmarks/train_step.py $gpu --batch 256 --size 224 --inline-memory --channels-last \
  --only clf+align,align,align-nativebn-nativedgrad,align-nativebn,align-nativedgrad,align-keep,align-keep-whole,align-ckpt-whole,align-gt,align-w1,dre,irm,mixup,sgdrop,sgt,sgt-nativedgrad \
  --json "$out/train_step_cl.json"
stage sync_check 40 $py benchmarks/sync_check.py --batch 32 --size 224 --json "$out/sync_check.json"
stage input_grads 40 $py benchmarks/input_grads.py --batch 128 --repeats 5 --json "$out/input_grads.json"
stage profile_saliency 30 $py benchmarks/profile_saliency.py --model resnet18 --batch 32 --size 224
stage profile_masker 35 $py benchmarks/profile_step.py --recipe align --phase masker $gpu --batch 256 --size 224 \
  --channels-last --shapes --rows 30
# Is the channel sum slow at 14x14 / 7x7 because each channel's row (392 / 98 bytes in bf16) is not
# 16-byte aligned? The same channel counts at 16x16 / 8x8 (512 / 128-byte rows) tell (stage rows).
stage kernel_alignment 40 $py benchmarks/kernel.py --stages --compile-dtypes '' --cases 1024:14,1024:16,512:7,512:8 \
  --json "$out/kernel_alignment.json"
stage train_step_fbn 40 $py benchmarks/train_step.py $gpu --batch 256 --size 224 --inline-memory --channels-last \
  --only erm-fbn,align-fbn,align-fbn-2pass --json "$out/train_step_fbn.json"
stage train_step_fp16 40 $py benchmarks/train_step.py --device cuda --precision fp16 --batch 256 --size 224 \
  --inline-memory --channels-last --only clf+align,align --json "$out/train_step_fp16.json"

#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one go, on one CUDA GPU (about 5 minutes; no data download:
# synthetic identities and the shared LFW subset). Each step prints PASS or FAIL; paste the whole
# output into docs/gpu.md ("Figures") with the commit hash and the date.
#   experiments/launch/gpu_checks.sh [OUT_DIR]            (from the repository root)
set -u
PY="${PY:-.venv/bin/python}"
OUT="${1:-runs/gpu_checks}"
FAILED=0
step() { echo "== $1"; shift; if "$@"; then echo "PASS"; else echo "FAIL (exit $?)"; FAILED=1; fi; }
train() {  # a 1-epoch synthetic run on the GPU with the given overrides
  local name="$1"; shift
  "$PY" -m noisyfr train experiments/configs/train_synthetic.yaml device=cuda optim.epochs=1 optim.warmup_epochs=0 \
    "data.train=synthetic:ids=200,per_id=8,size=112,seed=0" name="$name" output_dir="$OUT/$name" "$@"
}

step "device" "$PY" -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
step "fp16 autocast + GradScaler, Partial FC 0.5" train fp16 optim.amp=fp16 loss.sample_rate=0.5
step "bf16, channels-last, Partial FC 0.1, Sub-center ArcFace" train bf16 optim.amp=bf16 \
  model.channels_last=true loss.sample_rate=0.1 loss.name=subcenter_arcface
step "torch.compile (Triton)" train compiled model.compile=true optim.amp=bf16
step "replicated head, CurricularFace, bf16" train curricular optim.amp=bf16 loss.name=curricularface
step "data path (GPU batched decode)" "$PY" benchmarks/bench_data.py --repeat 3 --workers 4
step "step vs arcface_torch-style loop" "$PY" benchmarks/bench_train.py --gpu-preset --rounds 20
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
  step "2-GPU torchrun: NCCL DDP + Partial FC + SyncBatchNorm" torchrun --standalone --nproc_per_node 2 \
    -m noisyfr train experiments/configs/train_synthetic.yaml device=cuda optim.epochs=1 optim.warmup_epochs=0 \
    loss.sample_rate=0.5 model.sync_bn=true optim.amp=bf16 name=ddp2 output_dir="$OUT/ddp2"
else
  echo "== 2-GPU torchrun: skipped (one GPU); NCCL paths not run"
fi
exit $FAILED

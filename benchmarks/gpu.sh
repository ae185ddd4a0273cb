#!/usr/bin/env bash
# The whole GPU measurement in one short run (< 8 minutes on one H100/H200), JSON into $OUT.
#   OUT=/tmp/bench bash benchmarks/gpu.sh
# The same command as on CPU: bf16 (the accelerator default of --dtype=auto), cuDNN attention via
# jax.nn.dot_product_attention, MFU against the datasheet dense bf16 peak of the device. JAX only:
# the PyTorch reference of fungizsl.bench runs on the CPU (torch_clip.py has no CUDA path yet).
set -euo pipefail
OUT=${OUT:-bench_gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
REF=none
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/nvidia_smi.csv" || true
run() { timeout "$1" python -m fungizsl.bench "${@:2}" 2>&1 | tail -40; }
# ViT-B/32 CLIP, batch 256, the headline (bf16, cuDNN attention).
run 200 --config=configs/fungalzsl.py:arch=b32 --batch=256 --steps=10 --reference=$REF --nopipeline \
    --torch_modes=eager --out="$OUT/b32_bs256.json" | tee "$OUT/b32_bs256.txt"
# The local job's tiny CLIP (input pipeline included) and L/14@336 with FSDP rules on one device.
run 90 --config=configs/fungalzsl.py:arch=tiny,runlocal --batch=256 --steps=10 --reference=$REF \
    --torch_modes=eager --out="$OUT/tiny_bs256.json" | tee "$OUT/tiny_bs256.txt"
run 150 --config=configs/fungalzsl.py:arch=l14_336 --batch=32 --steps=5 --noprofile --nopipeline --noembed \
    --out="$OUT/l14_336_bs32.json" | tee "$OUT/l14_336_bs32.txt"
ls -l "$OUT"

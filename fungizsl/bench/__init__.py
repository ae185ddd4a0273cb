"""Throughput benchmark of the FungalZSL CLIP train step, side by side with PyTorch.

    python -m fungizsl.bench --config=configs/fungalzsl.py:arch=tiny --reference=torch --out=bench.json

Modules: `clip_step` (the trainer's jit step on a synthetic batch), `torch_clip` (transformers'
CLIPModel trained the same way; imported only with --reference=torch), `torch_convnet` (the same
for the plain conv tower, cnn_tiny, which CLIPModel lacks), `measure` (interleaved
timing, device peak, model FLOPs, memory), `profile` (per-op trace buckets), `input_rate`
(Grain pipeline alone), `scaling` (batch/resolution sweep, FSDP memory per device, loss
communication volume). See docs/benchmarks.md.
"""

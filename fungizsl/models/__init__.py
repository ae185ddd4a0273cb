"""Flax linen towers: ViT (CLIP and DINOv2 flavours), CLIP text, BERT and two-tower CLIP.

Each tower's config is a frozen dataclass with a variant table of the published sizes; shared
transformer blocks live in `layers.py`. Checkpoint conversion is in `fungizsl.weights`.
"""

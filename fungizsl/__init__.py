"""fungizsl: zero-shot and few-shot fungal classification with vision-language models in JAX/Flax.

Implements FungalZSL (Rani, Arroyo, Durdevic 2025: CLIP fine-tuned on synthetic growth-stage
images with LLM-written descriptions) and the FungiCLEF 2025 few-shot system (DINOv2 features,
a Transformer layer trained with the Dynamic Weighting Contrastive Loss, BERT metadata text and
Q-Former fusion), plus the machinery to run them on sharded accelerators.
"""

__version__ = "0.1.0"

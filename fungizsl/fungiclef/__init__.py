"""The FungiCLEF 2025 few-shot system of Lu et al. ("Few-Shot Classification of Fungi Species Using
Contrastive Representation Learning and Multimodal Fusion", 2nd place): token features from a
frozen image tower (`features`), a class-balanced sampler with feature-level augmentation
(`sampler`), metadata as text and categorical fields (`metadata`), and a synthetic few-shot
species set shaped like the real one for the embedded default run (`synthetic_species`)."""

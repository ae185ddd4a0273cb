"""Class-balanced batches with feature-level augmentation for DWCL (Lu et al., FungiCLEF 2025, 3.2).

The paper forms positive pairs "by randomly sampling up to 4 instances per category, with a
strict requirement of at least 2 samples per category"; categories with fewer samples get "new
instances generated via data augmentation", and negatives come from "a uniform class sampling
strategy". `ClassBalancedSampler` does exactly that, one batch per step:

* the classes of a batch are drawn uniformly, without replacement, from all classes;
* a class contributes min(n_c, instances_per_class) distinct instances, topped up to
  `min_instances` with copies of its own instances marked `augmented` (the trainer perturbs
  them: token dropout, noise, view mixing), so every row has at least one positive;
* classes are added until the next one no longer fits; the leftover rows are padding
  (`valid` False), which DWCL excludes from anchors, positives and denominators.

Batch `s` is a pure function of (seed, s): the sampler is a random-access source, so a Grain
`MapDataset.range(steps).map(...)` over it resumes exactly from a checkpointed iterator state.
"""

from __future__ import annotations

import numpy as np


class ClassBalancedSampler:
    def __init__(self, labels, batch_size: int, instances_per_class: int = 4, min_instances: int = 2,
                 seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        if not 1 <= min_instances <= instances_per_class:
            raise ValueError(f"need 1 <= min_instances ({min_instances}) <= instances_per_class "
                             f"({instances_per_class})")
        if batch_size < instances_per_class:
            raise ValueError(f"batch_size {batch_size} is smaller than instances_per_class {instances_per_class}")
        self.labels = labels
        self.batch_size = batch_size
        self.instances_per_class = instances_per_class
        self.min_instances = min_instances
        self.seed = seed
        self.classes = np.unique(labels)
        self.members = {int(c): np.flatnonzero(labels == c) for c in self.classes}

    def __len__(self) -> int:  # any step is valid; a large bound keeps Grain's range finite
        return 2 ** 31 - 1

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(step)])
        order = rng.permutation(self.classes)
        index = np.full(self.batch_size, -1, np.int64)
        label = np.full(self.batch_size, -1, np.int64)
        augmented = np.zeros(self.batch_size, bool)
        filled = 0
        for c in order:
            members = self.members[int(c)]
            distinct = min(len(members), self.instances_per_class)
            rows = max(distinct, self.min_instances)
            if filled + rows > self.batch_size:
                if self.batch_size - filled < self.min_instances:
                    break
                continue  # a smaller class may still fit
            chosen = rng.choice(members, distinct, replace=False)
            copies = rng.choice(members, rows - distinct, replace=True)
            index[filled:filled + rows] = np.concatenate([chosen, copies])
            label[filled:filled + rows] = c
            augmented[filled + distinct:filled + rows] = True
            filled += rows
            if filled == self.batch_size:
                break
        return {"index": index, "label": label, "augmented": augmented, "valid": index >= 0}

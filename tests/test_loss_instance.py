"""The instance term of the FungalZSL loss (issue 21, part 5), checked by hand on a 3 x 3 toy.

Toy: three images and their captions embedded as the unit vectors e1, e2, e3 (image i and caption i
coincide), scale 1, labels (0, 0, 1). The similarity matrix is the identity, so every row's
softmax denominator is e + 2 and, with c = log(e + 2):

* plain CLIP (instance) row loss: -log(e / (e + 2)) = c - 1, in both directions;
* class-aware rows 0 and 1 (targets 1/2, 1/2, 0): 1/2 (c - 1) + 1/2 c = c - 1/2;
  row 2 (its own class): c - 1; the mean is (2 (c - 1/2) + (c - 1)) / 3 = c - 2/3.
"""

import math

import jax.numpy as jnp
import pytest

from fungizsl import losses

C = math.log(math.e + 2.0)
EYE = jnp.eye(3, dtype=jnp.float32)
LABELS = jnp.array([0, 0, 1])


def test_toy_terms_by_hand():
    inst, _ = losses.clip_loss(EYE, EYE, 1.0, combine="mean")
    cls, _ = losses.class_aware_clip_loss(EYE, EYE, 1.0, LABELS, combine="mean")
    assert float(inst) == pytest.approx(C - 1.0, abs=1e-6)  # 0.551445
    assert float(cls) == pytest.approx(C - 2.0 / 3.0, abs=1e-6)  # 0.884778


@pytest.mark.parametrize("combine,factor", [("mean", 1.0), ("sum", 2.0)])
@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_class_aware_plus_weighted_instance_term(combine, factor, weight):
    loss, metrics = losses.contrastive_loss(EYE, EYE, 1.0, labels=LABELS, class_aware=True, combine=combine,
                                            instance_weight=weight)
    expected = factor * ((C - 2.0 / 3.0) + weight * (C - 1.0))  # sum: 1.769556 + w * 1.102889
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(metrics["loss"]) == pytest.approx(expected, abs=1e-5)
    if weight > 0:
        assert float(metrics["l_class"]) == pytest.approx(factor * (C - 2.0 / 3.0), abs=1e-5)
        assert float(metrics["l_instance"]) == pytest.approx(factor * (C - 1.0), abs=1e-5)
        assert float(metrics["instance_i2t_top1"]) == 1.0 and float(metrics["instance_t2i_top1"]) == 1.0
    else:
        assert "l_instance" not in metrics


def test_instance_term_separates_same_class_pairs():
    """Images 0 and 1 swapped against their captions: the class-aware term cannot see it (same
    class), the instance term can: its in-batch top-1 drops to the one pair left in place."""
    zimg = EYE[jnp.array([1, 0, 2])]
    base, _ = losses.contrastive_loss(EYE, EYE, 1.0, labels=LABELS, class_aware=True, instance_weight=1.0)
    swapped, metrics = losses.contrastive_loss(zimg, EYE, 1.0, labels=LABELS, class_aware=True, instance_weight=1.0)
    assert float(metrics["l_class"]) == pytest.approx(C - 2.0 / 3.0, abs=1e-6)  # unchanged
    # instance rows 0, 1: -log(1 / (e + 2)) = c; row 2: c - 1 -> mean c - 1/3
    assert float(metrics["l_instance"]) == pytest.approx(C - 1.0 / 3.0, abs=1e-6)
    assert float(swapped) > float(base)
    assert float(metrics["instance_i2t_top1"]) == pytest.approx(1.0 / 3.0)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match="instance_weight"):
        losses.contrastive_loss(EYE, EYE, 1.0, labels=LABELS, class_aware=True, instance_weight=-1.0)

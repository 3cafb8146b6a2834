"""Relevance masks and triplet sampling inside a batch (ALGORITHM.md item 5).

Triplets are index triples (anchor, positive, negative) into the batch, so each image is encoded once.
Single-label data: a positive shares the anchor's class, a negative does not. Multi-label data (multi-hot
rows): a positive shares at least one label, a negative shares none; images without any label are
neither anchors' positives nor negatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from drlih_jax import metrics


def relevance_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Positive and negative masks [B, B] (the diagonal is never positive).

  Relevance is `metrics.relevance`, the rule the retrieval metrics use; a multi-hot entry > 0 is a label.
  """
  b = labels.shape[0]
  if labels.ndim == 1:
    labelled = jnp.ones((b,), bool)
  else:
    labels = labels > 0
    labelled = jnp.any(labels, axis=1)
  same = metrics.relevance(labels, labels)
  both = labelled[:, None] & labelled[None, :]
  pos = same & both & ~jnp.eye(b, dtype=bool)
  neg = ~same & both
  return pos, neg


def sample_triplets(rng: jax.Array, pos_mask: jax.Array, neg_mask: jax.Array,
                    per_anchor: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Draws `per_anchor` (positive, negative) pairs uniformly for every anchor of the batch.

  Returns:
    anchors, positives, negatives: [B * per_anchor] int32; valid: [B * per_anchor] bool, False where
    the anchor has no positive or no negative in the batch (those triplets must get zero weight).
  """
  b = pos_mask.shape[0]
  pos_key, neg_key = jax.random.split(rng)
  neg_inf = jnp.float32(-1e9)
  pos_logits = jnp.where(pos_mask, 0.0, neg_inf)
  neg_logits = jnp.where(neg_mask, 0.0, neg_inf)
  positives = jax.random.categorical(pos_key, pos_logits, axis=-1, shape=(per_anchor, b)).T
  negatives = jax.random.categorical(neg_key, neg_logits, axis=-1, shape=(per_anchor, b)).T
  anchors = jnp.repeat(jnp.arange(b, dtype=jnp.int32), per_anchor)
  valid = jnp.repeat(jnp.any(pos_mask, axis=1) & jnp.any(neg_mask, axis=1), per_anchor)
  return anchors, positives.reshape(-1).astype(jnp.int32), negatives.reshape(-1).astype(jnp.int32), valid

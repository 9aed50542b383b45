"""Few-pair M&MNets: K annotated (depth, segmentation) pairs added to zero-pair training.

Beyond the paper (weak_supervised_i2i_paper.txt): if K examples of the unseen pair could be
labelled, which K, and how much do they close the gap to the oracle?

  * Selection (`select_few_pairs`): from the depth stream of the TRAIN split (the test
    split is never looked at), embed every candidate with an encoder (M&MNets' own depth
    encoder after stage 1, since no ImageNet network can be downloaded here: global
    average- and max-pooled latents, L2-normalised), cluster the embeddings with k-means
    (k = K, k-means++ init) and take each cluster's medoid (the member with the least mean
    distance to the others), as the weak-supervision paper does; or K at random.
  * Training (`FewPairMixAndMatch`): a `MixAndMatchNetworks` whose batches carry one more
    entry, `"depth+segmentation"`, with the K pairs; from stage `from_stage` on it adds the
    supervised losses depth->segmentation and segmentation->depth (their modality losses,
    weighted like any translation into that modality, times `few_pair_weight`).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from mm_tf import losses as mm_losses
from mm_tf import model as mm_model

FEW_PAIR_STREAM = ("depth", "segmentation")
SELECTION_METHODS = ("kmedoids", "random")
KMEANS_ITERATIONS = 50


def few_pair_stream_name(stream=FEW_PAIR_STREAM) -> str:
  return "+".join(stream)


# ------------------------------------------------------------------ selection
def encoder_features(model, modality: str, images, batch_size: int = 32) -> np.ndarray:
  """[N, 2C] L2-normalised (mean ++ max) pooled latents of `model`'s `modality` encoder."""
  features = []
  for start in range(0, len(images), batch_size):
    latent, _ = model.encode(modality, tf.convert_to_tensor(images[start:start + batch_size]))
    latent = tf.cast(latent, tf.float32)
    features.append(tf.concat([tf.reduce_mean(latent, [1, 2]), tf.reduce_max(latent, [1, 2])],
                              -1).numpy())
  features = np.concatenate(features)
  return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def kmeans(features: np.ndarray, k: int, seed: int = 0,
           iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
  """Cluster index of every row (Lloyd's algorithm, k-means++ initialisation)."""
  rng = np.random.default_rng(seed)
  n = len(features)
  centers = [features[rng.integers(n)]]
  for _ in range(1, k):
    distance = np.min(((features[:, None] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
    probabilities = distance / distance.sum() if distance.sum() > 0 else np.full(n, 1.0 / n)
    centers.append(features[rng.choice(n, p=probabilities)])
  centers = np.asarray(centers)
  assignment = np.zeros(n, np.int64)
  for _ in range(iterations):
    assignment = np.argmin(((features[:, None] - centers[None]) ** 2).sum(-1), axis=1)
    new_centers = np.asarray([features[assignment == c].mean(0) if np.any(assignment == c)
                              else centers[c] for c in range(k)])
    if np.allclose(new_centers, centers):
      break
    centers = new_centers
  return assignment


def kmedoids_indices(features: np.ndarray, k: int, seed: int = 0) -> List[int]:
  """One medoid per k-means cluster: the member with least mean distance to its cluster."""
  k = min(int(k), len(features))
  assignment = kmeans(features, k, seed)
  chosen = []
  for cluster in range(k):
    members = np.flatnonzero(assignment == cluster)
    if len(members) == 0:
      continue
    distances = np.linalg.norm(features[members, None] - features[None, members], axis=-1)
    chosen.append(int(members[np.argmin(distances.mean(1))]))
  # An empty cluster (duplicate points) leaves fewer than k: fill with the farthest points.
  remaining = [i for i in range(len(features)) if i not in chosen]
  while len(chosen) < k and remaining:
    distance = np.min(np.linalg.norm(features[remaining, None] - features[None, chosen], axis=-1),
                      axis=1)
    chosen.append(remaining.pop(int(np.argmax(distance))))
  return sorted(chosen)


def select_few_pairs(candidates: Dict[str, np.ndarray], k: int, method: str = "kmedoids",
                     model=None, feature_modality: str = "depth",
                     seed: int = 0) -> Tuple[Dict[str, np.ndarray], List[int]]:
  """Selects K examples of `candidates` (`{modality: [N, ...]}` model-space arrays).

  Args:
    candidates: Train-split examples with at least the few-pair modalities.
    k: Number of pairs.
    method: "kmedoids" (needs `model`) or "random".
    model: Model whose `feature_modality` encoder embeds the candidates.
    feature_modality: Which encoder embeds them (the modality one would have to label).
    seed: Seed of k-means++ / random choice.

  Returns:
    (`{modality: [K, ...]}` selected examples, their indices into `candidates`).
  """
  if method not in SELECTION_METHODS:
    raise ValueError(f"method must be one of {SELECTION_METHODS}, got {method!r}.")
  n = len(next(iter(candidates.values())))
  if k <= 0 or n == 0:
    return {name: value[:0] for name, value in candidates.items()}, []
  if k >= n:
    indices = list(range(n))
  elif method == "random":
    indices = sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())
  else:
    if model is None:
      raise ValueError("k-medoids selection needs a model whose encoder embeds the candidates.")
    indices = kmedoids_indices(encoder_features(model, feature_modality,
                                                candidates[feature_modality]), k, seed)
  logging.info("Few pairs (%s, K=%d): candidates %s", method, k, indices)
  return {name: value[indices] for name, value in candidates.items()}, indices


def few_pair_dataset(pairs: Dict[str, np.ndarray], batch_size: int, seed: int = 0):
  """Infinite shuffled batches of the selected pairs (batch = min(K, batch_size))."""
  k = len(next(iter(pairs.values())))
  ds = tf.data.Dataset.from_tensor_slices(dict(pairs)).repeat().shuffle(max(k, 1), seed=seed)
  return ds.batch(min(k, batch_size), drop_remainder=True)


def with_few_pairs(train_dataset, pairs: Dict[str, np.ndarray], batch_size: int, seed: int = 0,
                   stream=FEW_PAIR_STREAM):
  """Adds the `"depth+segmentation"` entry of the K pairs to every zero-pair batch."""
  few = few_pair_dataset({m: pairs[m] for m in stream}, batch_size, seed)
  name = few_pair_stream_name(stream)
  return tf.data.Dataset.zip(train_dataset, few).map(lambda batch, extra: {**batch, name: extra})


# ------------------------------------------------------------------ model
class FewPairMixAndMatch(mm_model.MixAndMatchNetworks):
  """`MixAndMatchNetworks` + supervised losses on a few pairs of otherwise unseen modalities.

  Args:
    *args, **kwargs: As `MixAndMatchNetworks`.
    few_pair_stream: The two modalities of the few pairs (default depth, segmentation).
    few_pair_weight: Multiplies the target modality's weight for these terms.
    from_stage: First stage that trains on the pairs (their selection uses the stage-1
      encoders, so 2 by default).

  Terms are reported as `"few_pairs_{a}_to_{b}"`; batches must then carry the entry
  `"depth+segmentation"` (see `with_few_pairs`).
  """

  def __init__(self, *args, few_pair_stream=FEW_PAIR_STREAM, few_pair_weight=1.0, from_stage=2,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.few_pair_stream = tuple(few_pair_stream)
    self.few_pair_weight = float(few_pair_weight)
    self.few_pair_from_stage = int(from_stage)
    a, b = self.few_pair_stream
    self.few_pair_routes = ((a, b), (b, a))
    for source, target in self.few_pair_routes:
      name = f"few_pairs_{source}_to_{target}"
      self._term_trackers[name] = keras.metrics.Mean(name=name)

  def _few_pairs_on(self, spec) -> bool:
    return spec.number >= self.few_pair_from_stage

  def active_term_names(self, spec=None):
    spec = spec or self.stage_spec
    names = super().active_term_names(spec)
    if self._few_pairs_on(spec):
      names += [f"few_pairs_{s}_to_{t}" for s, t in self.few_pair_routes]
    return names

  def _term_weight(self, term, spec):
    if term.startswith("few_pairs_"):
      return self.few_pair_weight * spec.modality_weight(term.rsplit("_to_", 1)[1])
    return super()._term_weight(term, spec)

  def compute_loss_terms(self, batch, spec=None):
    spec = spec or self.stage_spec
    terms, generated = super().compute_loss_terms(batch, spec)
    name = few_pair_stream_name(self.few_pair_stream)
    if self._few_pairs_on(spec) and name in batch:
      data = batch[name]
      for source, target in self.few_pair_routes:
        latent, side = self._encode_for_training(source, data[source])
        output = self._decode_for_training(target, latent, side)
        terms[f"few_pairs_{source}_to_{target}"] = [
            mm_losses.reconstruction(self.modalities[target], output, data[target])]
    return terms, generated

  def get_config(self):
    config = super().get_config()
    config.update(few_pair_stream=list(self.few_pair_stream),
                  few_pair_weight=self.few_pair_weight, from_stage=self.few_pair_from_stage)
    return config

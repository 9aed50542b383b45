"""Losses of M&MNets (paper section 4.3 and 5.2).

Every function returns PER-EXAMPLE losses, shape [B]: each image's loss is averaged
over its own (valid) pixels first. The model then averages over the global batch
(`tf.nn.compute_average_loss`), so a `tf.distribute` strategy gives the same value as one
device and an image with many void pixels weighs as much as any other.

All arithmetic is float32, whatever the compute dtype of the networks.
"""

import tensorflow as tf

BERHU_THRESHOLD_FRACTION = 0.2  # c = 1/5 max |z' - z| (paper Eq. 6).
_EPSILON = 1e-12


def _per_image_masked_mean(values, mask):
  """Mean of `values` over the True pixels of each image; 0 for an image with none."""
  values = tf.where(mask, values, tf.zeros_like(values))
  mask = tf.cast(mask, tf.float32)
  axes = tf.range(1, tf.rank(values))
  count = tf.reduce_sum(mask, axis=axes)
  return tf.math.divide_no_nan(tf.reduce_sum(values, axis=axes), count)


def l2(prediction, target):
  """Mean squared error per image (the paper's L2 distance for RGB, Eq. 1-3).

  Args:
    prediction: [B, H, W, C].
    target: [B, H, W, C].

  Returns:
    [B] float32.
  """
  prediction = tf.cast(prediction, tf.float32)
  target = tf.cast(target, tf.float32)
  return tf.reduce_mean(tf.square(prediction - target), axis=tf.range(1, tf.rank(target)))


def berhu(prediction, target, valid_mask=None):
  """Reverse Huber (BerHu) loss exactly as paper Eq. 6, averaged per image.

  B(e) = |e| if |e| <= c, else (e^2 + c^2) / (2c), with c = 0.2 * max_i |e_i| taken over
  the valid pixels of EACH image (not the batch: with a batch-wide c the quadratic branch
  barely fires, which is how the original code degenerated to L1). c is a statistic of
  the residuals, so no gradient flows through it.

  Args:
    prediction: [B, H, W, C] predicted depth (or NIR).
    target: [B, H, W, C] ground truth.
    valid_mask: bool [B, H, W, C]; default: target finite and non-zero (0 = invalid depth).

  Returns:
    [B] float32; 0 for an image without valid pixels.

  Example:
    >>> float(berhu(tf.constant([[1.0, 2.0]]), tf.constant([[1.5, 1.0]]))[0])
    0.75
  """
  prediction = tf.cast(prediction, tf.float32)
  target = tf.cast(target, tf.float32)
  if valid_mask is None:
    valid_mask = tf.math.is_finite(target) & tf.not_equal(target, 0.0)
  valid_mask &= tf.math.is_finite(prediction)
  # Zero the residual where invalid BEFORE any arithmetic, so NaN cannot reach gradients.
  residual = tf.where(valid_mask, prediction - tf.where(valid_mask, target, 0.0), 0.0)
  abs_residual = tf.abs(residual)
  axes = tf.range(1, tf.rank(abs_residual))
  threshold = tf.stop_gradient(BERHU_THRESHOLD_FRACTION * tf.reduce_max(abs_residual, axis=axes,
                                                                       keepdims=True))
  quadratic = (tf.square(residual) + tf.square(threshold)) / tf.maximum(2.0 * threshold, _EPSILON)
  loss = tf.where(abs_residual <= threshold, abs_residual, quadratic)
  return _per_image_masked_mean(loss, valid_mask)


def cross_entropy(logits, labels, num_classes=None, class_weights=()):
  """Pixel-wise softmax cross-entropy ignoring void labels, averaged per image.

  Args:
    logits: [B, H, W, K].
    labels: int [B, H, W]; any value outside 0..K-1 (the void label 255) is ignored.
    num_classes: K (defaults to the logits' last dimension).
    class_weights: Optional K weights; each pixel's loss is scaled by its label's weight
      (the mean is still over valid pixels, as in SegNet's weighted loss).

  Returns:
    [B] float32; 0 for an image that is entirely void.
  """
  logits = tf.cast(logits, tf.float32)
  num_classes = num_classes or logits.shape[-1]
  labels = tf.cast(labels, tf.int32)
  valid = (labels >= 0) & (labels < num_classes)
  safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
  pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
  if len(class_weights):
    pixel_loss *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
  return _per_image_masked_mean(pixel_loss, valid)


def latent_consistency(latent_a, latent_b):
  """||f_a(x) - f_b(y)||_2 per example (paper Eq. 10-11), on the flattened latents.

  The norm is taken with a tiny floor inside the square root so identical latents give
  a zero (not NaN) gradient.
  """
  difference = tf.cast(latent_a, tf.float32) - tf.cast(latent_b, tf.float32)
  squared = tf.reduce_sum(tf.square(difference), axis=tf.range(1, tf.rank(difference)))
  return tf.sqrt(tf.maximum(squared, _EPSILON))


def lsgan_generator(fake_scores):
  """Least-squares GAN generator loss E[(C(x_hat) - 1)^2] per example."""
  fake_scores = tf.cast(fake_scores, tf.float32)
  return tf.reduce_mean(tf.square(fake_scores - 1.0), axis=tf.range(1, tf.rank(fake_scores)))


def lsgan_discriminator(real_scores, fake_scores):
  """Least-squares GAN discriminator loss E[(C(x) - 1)^2] + E[C(x_hat)^2] per example.

  Args:
    real_scores: [B, h, w, 1] patch scores of real images.
    fake_scores: [B', h, w, 1] patch scores of generated images (B' may differ from B).

  Returns:
    ([B] real term, [B'] fake term): the caller averages each over its images.
  """
  real_scores = tf.cast(real_scores, tf.float32)
  fake_scores = tf.cast(fake_scores, tf.float32)
  real = tf.reduce_mean(tf.square(real_scores - 1.0), axis=tf.range(1, tf.rank(real_scores)))
  fake = tf.reduce_mean(tf.square(fake_scores), axis=tf.range(1, tf.rank(fake_scores)))
  return real, fake


def reconstruction(modality, output, target):
  """The modality's own loss (from its description) between a decoder output and target.

  Args:
    modality: `mm_tf.modalities.Modality` of the target.
    output: decoder output in model space (logits for segmentation).
    target: ground truth in model space (int labels for segmentation).

  Returns:
    [B] float32.
  """
  if modality.loss == "cross_entropy":
    return cross_entropy(output, target, modality.channels, modality.class_weights)
  if modality.loss == "berhu":
    return berhu(output, target, modality.valid_mask(tf.cast(target, tf.float32)))
  if modality.loss == "l2":
    return l2(output, target)
  raise ValueError(f"Unknown loss {modality.loss!r} of modality {modality.name!r}.")


def pseudo_pair(modality, output, pseudo_target):
  """Pseudo-pair loss (paper Eq. 12-13): the modality loss against a pseudo target.

  The pseudo target is the output of the seen translator from the anchor (e.g.
  T_RD(x)), under `stop_gradient`, so only the unseen translator learns. For
  segmentation the pseudo labels are its argmax (Eq. 13: CE(T_RS(x), T_DS(z))); for
  continuous modalities every finite pixel of the pseudo target counts.
  """
  pseudo_target = tf.stop_gradient(tf.cast(pseudo_target, tf.float32))
  if modality.loss == "cross_entropy":
    return cross_entropy(output, modality.to_labels(pseudo_target), modality.channels,
                         modality.class_weights)
  if modality.loss == "berhu":
    return berhu(output, pseudo_target, tf.math.is_finite(pseudo_target))
  return l2(output, pseudo_target)

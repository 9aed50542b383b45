r"""Procedural forest scenes with aligned RGB, depth, NIR and segmentation.

The embedded dataset of mm_tf. Every scene is rendered from a camera over a ground plane:

  * geometry: the horizon's height and roll vary; depth along the ground grows towards
    it; a winding trail (a band in world coordinates, hence in perspective) crosses the
    grass; a forest edge (treeline) stands at a random distance; bushes and trees
    (vegetation) and rocks, logs and posts (obstacles) stand on the ground with their own
    distances and occlude each other through a z-buffer; sky has no depth (invalid, 0).
  * appearance that depth cannot predict (NOTES.md section 6: with flat class colours the
    cascade depth->RGB->segmentation beats zero-pair translation, which would make the
    project's demo meaningless): per-scene colours drawn from overlapping ranges (dry
    grass looks like a trail, mossy rocks look like bushes, gravel looks like rock),
    textures in world coordinates, sun/overcast illumination, side shading, cast and
    canopy shadows, exposure and colour-temperature changes, haze growing with distance,
    sensor noise.
  * modality-specific information, as real sensors have it: depth separates standing
    things from the ground; NIR separates living vegetation and grass (high reflectance)
    from rock, soil and trail (low); RGB alone confuses grass/vegetation and
    trail/obstacle.

Files are written in the exact Freiburg Forest layout and palette, so the
`freiburg_forest` tfds builder reads synthetic and real data alike:

  <output_dir>/{train,test}/rgb/<id>_Clipped.jpg                        (JPEG, quality 95, 4:4:4)
  <output_dir>/{train,test}/depth_gray/<id>_Clipped_redict_depth_gray.png (16-bit, mm, 0 = sky)
  <output_dir>/{train,test}/nir_gray/<id>.tif                           (8-bit grayscale)
  <output_dir>/{train,test}/GT_color/<id>_Clipped.png                   (Freiburg palette)
  <output_dir>/synthetic_forest.json                                    (generation parameters)

Scene ids are "syn<split letter><index>" (e.g. "synt00042", "syne00003"): no "_" (the Freiburg
pairing rule takes the text before the first "_"), one scene per id, so the zero-pair split
rule of `mm_tf.data.pipeline` (sorted seeded hash of scene ids) applies exactly as for real data.
Scene `i` of a split depends only on (seed, split, i), so growing `num_train` keeps the
first scenes unchanged.

Example:
  python -m mm_tf.data.synthetic_forest --output_dir /tmp/data/synthetic_forest \
      --num_train 400 --num_test 100 --image_size 64
"""

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Optional

import numpy as np
from PIL import Image

from mm_tf import modalities
from mm_tf.data import datasets

SKY, TRAIL, GRASS, VEGETATION, OBSTACLE = range(5)
PALETTE = np.asarray(modalities.FREIBURG_PALETTE, np.uint8)
MAX_DEPTH_M = datasets.FOREST_MAX_DEPTH_M
METADATA_FILE = "synthetic_forest.json"
GENERATOR_VERSION = 1  # Bump when the rendering changes: it keys the tfds cache.
JPEG_QUALITY = 95
_SPLIT_CODES = {"train": 0, "test": 1}


# --------------------------------------------------------------------------- noise
class _Lattice:
  """Smooth value noise on a periodic lattice, evaluated at arbitrary 2-D coordinates.

  Textures are evaluated at world coordinates of the visible surface (ground X/Z, or
  position on an object), so they shrink with distance like real texture does.
  """

  def __init__(self, rng: np.random.Generator, size: int = 64):
    self.size = size
    self.values = rng.standard_normal((size, size)).astype(np.float32)

  def __call__(self, x, y):
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0).astype(np.float32)
    fy = (y - y0).astype(np.float32)
    fx = fx * fx * (3 - 2 * fx)  # Smoothstep: no visible lattice creases.
    fy = fy * fy * (3 - 2 * fy)
    i0 = x0.astype(np.int64) % self.size
    j0 = y0.astype(np.int64) % self.size
    i1 = (i0 + 1) % self.size
    j1 = (j0 + 1) % self.size
    v = self.values
    top = v[j0, i0] * (1 - fx) + v[j0, i1] * fx
    bottom = v[j1, i0] * (1 - fx) + v[j1, i1] * fx
    return top * (1 - fy) + bottom * fy

  def fractal(self, x, y, octaves: int = 3):
    """Sum of octaves with halving amplitude, roughly unit variance."""
    total = np.zeros(np.shape(x), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
      scale = 2.0 ** octave
      total += amplitude * self(x * scale + 17.3 * octave, y * scale - 9.1 * octave)
      norm += amplitude ** 2
      amplitude *= 0.5
    return total / np.sqrt(norm)


def _mix(rng, colours, weights=None):
  """A random convex combination of reference colours: overlapping class appearances."""
  colours = np.asarray(colours, np.float32)
  w = rng.dirichlet(np.ones(len(colours)) if weights is None else np.asarray(weights))
  return w @ colours


# --------------------------------------------------------------------------- scene
def render_scene(rng: np.random.Generator, image_size: int) -> Dict[str, np.ndarray]:
  """Renders one scene.

  Args:
    rng: Source of all randomness of the scene.
    image_size: Output height and width S in pixels.

  Returns:
    Dict with "rgb" uint8 [S,S,3], "depth" float32 [S,S] metres (0 = sky/invalid,
    ground clipped at MAX_DEPTH_M), "nir" uint8 [S,S], "labels" uint8 [S,S] in 0..4
    (sky, trail, grass, vegetation, obstacle).
  """
  size = image_size
  ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

  # ---- camera: height, focal length, horizon height and roll.
  cam_height = rng.uniform(1.2, 2.0)
  focal = size * rng.uniform(0.85, 1.25)
  horizon = size * rng.uniform(0.22, 0.5)
  roll = rng.uniform(-0.12, 0.12)
  cx = size / 2 + rng.uniform(-0.05, 0.05) * size
  cos_r, sin_r = np.cos(roll), np.sin(roll)
  u = (xs - cx) * cos_r + (ys - horizon) * sin_r  # Right, in the rolled camera frame.
  v = (ys - horizon) * cos_r - (xs - cx) * sin_r  # Down from the horizon line.

  # ---- ground plane with gentle undulation.
  lattice = _Lattice(rng)
  is_ground = v > 0.25
  ground_z = np.where(is_ground, cam_height * focal / np.maximum(v, 1e-3), np.inf)
  ground_x = u * np.minimum(ground_z, 1e4) / focal
  ground_z = ground_z * (1 + 0.04 * lattice(ground_x / 6, np.minimum(ground_z, 1e4) / 6))

  # ---- winding trail, defined in world coordinates so it narrows in perspective.
  amp, wavelength, phase = rng.uniform(0.3, 3.0), rng.uniform(4, 14), rng.uniform(0, 2 * np.pi)
  offset, drift = rng.uniform(-2.0, 2.0), rng.uniform(-0.15, 0.15)
  half_width = rng.uniform(0.6, 1.6)

  def trail_centre(z):
    return amp * np.sin(z / wavelength + phase) + offset + drift * z

  zc = np.minimum(ground_z, 200.0)
  edge_noise = 0.25 * lattice.fractal(ground_x * 2.0 + 50, zc * 2.0)
  on_trail = is_ground & (np.abs(ground_x - trail_centre(zc)) < half_width * (1 + edge_noise))

  labels = np.where(is_ground, np.where(on_trail, TRAIL, GRASS), SKY).astype(np.uint8)
  zbuf = ground_z.astype(np.float32).copy()
  # Surface coordinates (metres) for textures, and per-pixel shading/ids of objects.
  tex_a = np.where(is_ground, ground_x, 0).astype(np.float32)
  tex_b = np.where(is_ground, zc, 0).astype(np.float32)
  side_shade = np.zeros((size, size), np.float32)  # -1..1 across standing objects.
  object_id = np.full((size, size), -1, np.int32)
  objects = []

  # ---- forest edge: a band of trees at distance z_edge with a ragged top, with gaps.
  if rng.uniform() < 0.85:
    z_edge = rng.uniform(10.0, 38.0)
    top_m = rng.uniform(4.0, 14.0) * (1 + 0.35 * lattice.fractal(u * z_edge / focal / 3 + 200, 0.0 * u))
    gaps = lattice(u * z_edge / focal / 8 + 400, 3.3 + 0 * u) < rng.uniform(-2.0, -0.6)
    v_base = cam_height * focal / z_edge
    edge_mask = (v < v_base) & (v > -top_m * focal / z_edge) & ~gaps
    edge_z = (z_edge + 1.5 * lattice(u / 4 + 300, v / 4)).astype(np.float32)
    draw = edge_mask & (edge_z < zbuf)
    labels[draw] = VEGETATION
    zbuf[draw] = edge_z[draw]
    tex_a[draw] = (u * z_edge / focal)[draw]
    tex_b[draw] = (v * z_edge / focal)[draw] + 100
    object_id[draw] = len(objects)
    objects.append(dict(kind="edge", cls=VEGETATION, z=z_edge, x=0.0, w=0.0, h=0.0))
    far_limit = z_edge
  else:
    far_limit = MAX_DEPTH_M

  # ---- standing objects: (kind, class, width m, height m).
  kinds = []
  for _ in range(rng.integers(2, 10)):
    kinds.append(("bush", VEGETATION, rng.uniform(0.6, 3.0), rng.uniform(0.5, 2.2))
                 if rng.uniform() < 0.6 else
                 ("tree", VEGETATION, rng.uniform(1.5, 5.0), rng.uniform(4.0, 12.0)))
  for _ in range(rng.integers(2, 8)):
    r = rng.uniform()
    if r < 0.5:
      kinds.append(("rock", OBSTACLE, rng.uniform(0.4, 1.8), rng.uniform(0.25, 1.1)))
    elif r < 0.8:
      kinds.append(("log", OBSTACLE, rng.uniform(1.5, 5.0), rng.uniform(0.25, 0.6)))
    else:
      kinds.append(("post", OBSTACLE, rng.uniform(0.12, 0.35), rng.uniform(0.6, 1.6)))
  for kind, cls, width, height in kinds:
    z = rng.uniform(2.5, max(3.0, min(far_limit, 30.0) - 0.5))
    if cls == OBSTACLE and rng.uniform() < 0.55:
      x = trail_centre(z) + rng.uniform(-1.2, 1.2) * half_width  # On/at the trail.
    else:
      side = rng.choice([-1.0, 1.0])
      x = trail_centre(z) + side * (half_width + width / 2 + rng.exponential(2.5))
    objects.append(dict(kind=kind, cls=cls, z=z, x=x, w=width, h=height))

  for index in sorted(range(len(objects)), key=lambda i: -objects[i]["z"]):
    obj = objects[index]
    if obj["kind"] == "edge":
      continue
    z, half_w, height = obj["z"], obj["w"] / 2, obj["h"]
    u_base, v_base = obj["x"] * focal / z, cam_height * focal / z
    a = (u - u_base) / (half_w * focal / z)  # -1..1 across the object.
    b = (v_base - v) / (height * focal / z)  # 0 at its foot, 1 at its top.
    if np.all((np.abs(a) > 1.6) | (b < -0.1) | (b > 1.3)):
      continue  # Off screen.
    angle = np.arctan2(b - 0.5, a)
    wobble = 0.0
    for k in (3, 5, 8):
      wobble = wobble + rng.uniform(0.0, 0.12) * np.cos(k * angle + rng.uniform(0, 6.3))
    kind = obj["kind"]
    if kind == "bush":
      r2 = a ** 2 + ((b - 0.5) / 0.5) ** 2
      mask = r2 < (1 + wobble) ** 2
      bulge = half_w * np.sqrt(np.clip(1 - r2, 0, 1))
    elif kind == "tree":
      crown_b = rng.uniform(0.3, 0.5)
      if rng.uniform() < 0.5:  # Broadleaf: round crown on a trunk.
        r2 = a ** 2 + ((b - (1 + crown_b) / 2) / ((1 - crown_b) / 2)) ** 2
        crown = r2 < (1 + wobble) ** 2
      else:  # Conifer: a cone.
        r2 = (a / np.clip(1 - b, 1e-3, None)) ** 2
        crown = (b > crown_b * 0.5) & (b < 1) & (np.abs(a) < (1 - b) * (1 + wobble))
      trunk = (np.abs(a) < rng.uniform(0.05, 0.12)) & (b >= 0) & (b < crown_b + 0.1)
      mask = crown | trunk
      bulge = 0.5 * half_w * np.sqrt(np.clip(1 - r2, 0, 1)) * crown
    elif kind == "rock":
      r2 = a ** 2 + b ** 2
      mask = (b >= -0.02) & (r2 < (1 + wobble) ** 2)
      bulge = 0.6 * half_w * np.sqrt(np.clip(1 - r2, 0, 1))
    elif kind == "log":
      ends = np.clip(np.abs(a) - 0.9, 0, None) / 0.1
      mask = (b >= 0) & (b < 1) & (ends ** 2 + ((b - 0.5) / 0.5) ** 2 < 1 + 0.5 * (np.abs(a) < 0.9))
      bulge = np.zeros_like(a)
      z = z + rng.uniform(-0.8, 0.8) * half_w * a  # Logs lie at an angle.
    else:  # post
      mask = (np.abs(a) < 1) & (b >= 0) & (b < 1 + 0.1 * wobble)
      bulge = np.zeros_like(a)
    obj_z = (z - bulge).astype(np.float32)
    draw = mask & (obj_z < zbuf)
    labels[draw] = obj["cls"]
    zbuf[draw] = obj_z[draw]
    tex_a[draw] = (a * half_w + 37.0 * index)[draw]
    tex_b[draw] = (b * height + 11.0 * index)[draw]
    side_shade[draw] = np.clip(a, -1, 1)[draw]
    object_id[draw] = index

  # ---- appearance: per-scene colours drawn from overlapping ranges.
  dryness = rng.uniform() ** 1.5
  fresh, dry = (0.26, 0.46, 0.12), (0.52, 0.46, 0.24)
  grass_col = (1 - dryness) * np.asarray(fresh) + dryness * np.asarray(dry)
  veg_col = _mix(rng, [(0.10, 0.24, 0.07), (0.30, 0.50, 0.15), (0.46, 0.32, 0.12),
                       (0.20, 0.32, 0.10)], [2, 1, 0.6, 2])
  trail_col = _mix(rng, [(0.48, 0.38, 0.26), (0.52, 0.50, 0.46), (0.26, 0.21, 0.16),
                         (0.50, 0.45, 0.28)])
  rock_col = _mix(rng, [(0.47, 0.46, 0.43), (0.30, 0.30, 0.30), (0.55, 0.50, 0.40)])
  wood_col = _mix(rng, [(0.36, 0.26, 0.16), (0.45, 0.40, 0.33), (0.22, 0.17, 0.12)])
  moss_col = _mix(rng, [(0.25, 0.36, 0.15), (0.35, 0.38, 0.20)])
  sky_clear = _mix(rng, [(0.35, 0.55, 0.90), (0.55, 0.70, 0.95)])
  overcast = rng.uniform() < 0.35
  sky_horizon = np.asarray((0.80, 0.82, 0.85)) if overcast else _mix(rng, [(0.75, 0.85, 0.95), (0.9, 0.9, 0.85)])
  if overcast:
    sky_clear = np.asarray((0.72, 0.74, 0.78)) * rng.uniform(0.8, 1.1)

  base = np.zeros((size, size, 3), np.float32)
  nir_refl = np.zeros((size, size), np.float32)
  class_colour = {SKY: sky_clear, TRAIL: trail_col, GRASS: grass_col, VEGETATION: veg_col}
  nir_value = {SKY: rng.uniform(0.3, 0.6) if overcast else rng.uniform(0.15, 0.4),
               TRAIL: rng.uniform(0.15, 0.35), GRASS: rng.uniform(0.55, 0.8) * (1 - 0.35 * dryness),
               VEGETATION: rng.uniform(0.6, 0.9)}
  for cls in (TRAIL, GRASS, VEGETATION):
    m = labels == cls
    base[m] = class_colour[cls] + rng.normal(0, 0.03, 3)
    nir_refl[m] = nir_value[cls]
  # Objects get their own colour (rock / wood / moss) and a per-object jitter.
  for index, obj in enumerate(objects):
    m = object_id == index
    if not m.any():
      continue
    if obj["cls"] == OBSTACLE:
      is_wood = obj["kind"] in ("log", "post")
      mossy = rng.uniform() < 0.25
      colour = moss_col if mossy else (wood_col if is_wood else rock_col)
      nir_obj = rng.uniform(0.3, 0.45) if mossy else rng.uniform(0.08, 0.32)
    else:
      colour = veg_col * rng.uniform(0.75, 1.25) + rng.normal(0, 0.04, 3)
      nir_obj = nir_value[VEGETATION] * rng.uniform(0.85, 1.1)
    base[m] = colour * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3)
    nir_refl[m] = nir_obj

  # Textures at surface coordinates; amplitude and grain differ per class.
  tex_fine = lattice.fractal(tex_a / 0.15 + 500, tex_b / 0.15, octaves=2)
  tex_coarse = lattice.fractal(tex_a / 0.6 + 900, tex_b / 0.6, octaves=3)
  amplitude = np.select([labels == GRASS, labels == VEGETATION, labels == TRAIL, labels == OBSTACLE],
                        [0.22, 0.30, 0.14, 0.18], 0.0).astype(np.float32)
  grain = np.where(labels == GRASS, tex_fine, tex_coarse)
  texture = 1 + amplitude * grain
  # Far surfaces average their texture out (one pixel covers many leaves).
  texture = 1 + (texture - 1) / (1 + np.where(labels == SKY, 0, zbuf) / 25)

  # ---- illumination: sun from one side, ambient, cast and canopy shadows.
  sunny = not overcast and rng.uniform() < 0.8
  sun = rng.uniform(0.5, 1.0) if sunny else rng.uniform(0.0, 0.1)
  ambient = rng.uniform(0.35, 0.6)
  sun_side = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0)
  sun_back = rng.uniform(-0.6, 0.8)  # Shadows fall towards (+) or away from the camera.
  lit = np.ones((size, size), np.float32)
  ground_like = (labels == GRASS) | (labels == TRAIL)
  for obj in objects:
    if obj["kind"] == "edge":
      continue
    length = obj["h"] * rng.uniform(0.6, 1.6)
    sx = obj["x"] + sun_side * length * 0.6
    sz = obj["z"] + sun_back * length * 0.6
    rx = obj["w"] / 2 + 0.3 * length * abs(sun_side)
    rz = obj["w"] / 2 + 0.4 * length
    inside = ((ground_x - sx) / rx) ** 2 + ((zc - sz) / rz) ** 2 < 1
    lit[ground_like & inside] = 0.0
  if sunny and rng.uniform() < 0.6:  # Dappled light under an off-screen canopy.
    canopy = lattice.fractal(tex_a / 1.5 + 700, tex_b / 1.5, octaves=2)
    lit = np.minimum(lit, (canopy > rng.uniform(-0.6, 0.6)).astype(np.float32))
  if sunny and rng.uniform() < 0.4:  # The shadow of the forest beside the trail.
    lateral = u * np.where(labels == SKY, 0, zbuf) / focal  # World X of every surface.
    side = rng.choice([-1.0, 1.0])
    shadow_edge = trail_centre(zc) + side * rng.uniform(-1.0, 3.0) + 0.5 * tex_coarse
    lit = np.where((labels != SKY) & ((lateral - shadow_edge) * side > 0), 0.0, lit)
  shade = 1 + 0.45 * sun_side * side_shade  # Lit and shadowed sides of standing things.
  light = ambient + sun * lit * np.clip(shade, 0.1, None)
  exposure = rng.uniform(0.75, 1.3) / (ambient + 0.75 * sun)
  tint = 1 + rng.uniform(-0.1, 0.1) * np.asarray((1.0, 0.0, -1.0), np.float32)

  rgb = base * texture[..., None] * (light * exposure)[..., None] * tint
  nir = nir_refl * (1 + 0.8 * (texture - 1)) * light * exposure

  # ---- sky: gradient towards the zenith, clouds; haze grows with distance.
  sky = labels == SKY
  elevation = np.clip(-v / size * 2.0, 0, 1)[..., None]
  sky_rgb = sky_horizon * (1 - elevation) + sky_clear * elevation
  clouds = np.clip(lattice.fractal(xs / size * 4 + 1000, ys / size * 8, 3), 0, None)[..., None]
  sky_rgb = sky_rgb + (0.95 - sky_rgb) * np.clip(clouds * rng.uniform(0.2, 0.9), 0, 1)
  sky_rgb = sky_rgb * rng.uniform(0.9, 1.15)
  rgb = np.where(sky[..., None], sky_rgb, rgb)
  nir = np.where(sky, nir_value[SKY] * (1 + 0.3 * clouds[..., 0]), nir)
  visibility = rng.uniform(25.0, 140.0)
  dist = np.where(sky, np.inf, zbuf)
  transmission = np.exp(-dist / visibility)[..., None]
  rgb = rgb * transmission + sky_horizon * (1 - transmission)
  nir_transmission = np.exp(-dist / (2 * visibility))  # Longer wavelengths see farther.
  nir = nir * nir_transmission + nir_value[SKY] * (1 - nir_transmission)

  rgb = rgb + rng.normal(0, 0.015, rgb.shape)
  nir = nir + rng.normal(0, 0.015, nir.shape)
  rgb8 = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
  nir8 = np.clip(nir * 255 + 0.5, 0, 255).astype(np.uint8)

  depth = np.where(sky, 0.0, np.minimum(zbuf * (1 + rng.normal(0, 0.01, zbuf.shape)), MAX_DEPTH_M))
  return {"rgb": rgb8, "depth": depth.astype(np.float32), "nir": nir8, "labels": labels}


def scene_id(split: str, index: int) -> str:
  """The file id of scene `index` of `split` ("synt00042"; no "_", see module doc)."""
  return f"syn{split[0]}{index:05d}"


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """Independent random stream per scene: scenes do not depend on the dataset size."""
  return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index), GENERATOR_VERSION])


# --------------------------------------------------------------------------- files
def write_scene(split_dir: str, file_id: str, scene: Dict[str, np.ndarray]) -> None:
  """Writes one scene in the Freiburg Forest layout (see module doc)."""
  Image.fromarray(scene["rgb"]).save(
      os.path.join(split_dir, "rgb", f"{file_id}_Clipped.jpg"), quality=JPEG_QUALITY, subsampling=0)
  depth_mm = np.clip(np.round(scene["depth"] * 1000.0), 0, 65535).astype(np.uint16)
  Image.fromarray(depth_mm).save(
      os.path.join(split_dir, "depth_gray", f"{file_id}_Clipped_redict_depth_gray.png"))
  Image.fromarray(scene["nir"], mode="L").save(os.path.join(split_dir, "nir_gray", f"{file_id}.tif"))
  Image.fromarray(PALETTE[scene["labels"]]).save(
      os.path.join(split_dir, "GT_color", f"{file_id}_Clipped.png"))


def generation_parameters(num_train: int, num_test: int, image_size: int, seed: int) -> dict:
  return {"generator": "mm_tf.data.synthetic_forest", "version": GENERATOR_VERSION,
          "num_train": int(num_train), "num_test": int(num_test),
          "image_size": int(image_size), "seed": int(seed)}


def generate(output_dir: str, num_train: int, num_test: int, image_size: int = 64,
             seed: int = 0) -> str:
  """Renders and writes a synthetic forest dataset (overwrites files of the same ids).

  Args:
    output_dir: Root of the dataset; `train/` and `test/` are created inside.
    num_train: Number of training scenes.
    num_test: Number of test scenes.
    image_size: Height and width of every image (a multiple of 32 suits the networks).
    seed: Generation seed; the same seed gives the same files.

  Returns:
    `output_dir`.
  """
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16, got {image_size}.")
  if num_train < 2 or num_test < 1:
    raise ValueError(f"Need num_train >= 2 (two disjoint zero-pair streams) and num_test >= 1, "
                     f"got {num_train} and {num_test}.")
  start = time.time()
  for split, count in (("train", num_train), ("test", num_test)):
    split_dir = os.path.join(output_dir, split)
    for sub in ("rgb", "depth_gray", "nir_gray", "GT_color"):
      os.makedirs(os.path.join(split_dir, sub), exist_ok=True)
    for index in range(count):
      write_scene(split_dir, scene_id(split, index), render_scene(scene_rng(seed, split, index), image_size))
  with open(os.path.join(output_dir, METADATA_FILE), "w") as f:
    json.dump(generation_parameters(num_train, num_test, image_size, seed), f, indent=2, sort_keys=True)
  logging.info("synthetic_forest: wrote %d train + %d test scenes of %dx%d to %s in %.1f s.",
               num_train, num_test, image_size, image_size, output_dir, time.time() - start)
  return output_dir


def read_generation_parameters(dataset_dir: str) -> Optional[dict]:
  """The parameters a generated dataset was made with, or None if it is not one."""
  path = os.path.join(dataset_dir, METADATA_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def ensure_synthetic_forest(data_dir: str, num_train: int = 400, num_test: int = 100,
                            image_size: int = 64, seed: int = 0) -> str:
  """Generates `<data_dir>/synthetic_forest` unless it already holds exactly this dataset.

  Idempotent and atomic: the dataset is rendered into a temporary sibling directory and
  renamed into place, so an interrupted run never leaves a half-written dataset that a
  later run would take for complete. A directory generated with other parameters is
  replaced.

  Args:
    data_dir: The project's data directory.
    num_train, num_test, image_size, seed: As for `generate`.

  Returns:
    The dataset directory `<data_dir>/synthetic_forest`.

  Example:
    >>> path = ensure_synthetic_forest("/tmp/data", num_train=200, num_test=50, image_size=64)
  """
  target = os.path.join(data_dir, datasets.get_dataset_spec("synthetic_forest").source_dir)
  wanted = generation_parameters(num_train, num_test, image_size, seed)
  if read_generation_parameters(target) == wanted:
    return target
  if os.path.exists(target) and read_generation_parameters(target) is None:
    raise ValueError(f"{target} exists but has no {METADATA_FILE}: it was not written by the "
                     "synthetic generator. Move it away or pick another data_dir.")
  os.makedirs(data_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".synthetic_forest.tmp-", dir=data_dir)
  try:
    generate(tmp, num_train, num_test, image_size, seed)
    if os.path.exists(target):
      old = tempfile.mkdtemp(prefix=".synthetic_forest.old-", dir=data_dir)
      os.rename(target, os.path.join(old, "replaced"))
      os.rename(tmp, target)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return target


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  generate(f.output_dir, f.num_train, f.num_test, f.image_size, f.seed)
  print(f"Wrote {f.num_train} train + {f.num_test} test scenes to {f.output_dir}")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("output_dir", None, "Dataset root to write train/ and test/ into "
                      "(Freiburg Forest layout).", required=True)
  flags.DEFINE_integer("num_train", 400, "Number of training scenes.")
  flags.DEFINE_integer("num_test", 100, "Number of test scenes.")
  flags.DEFINE_integer("image_size", 64, "Height and width of the images in pixels.")
  flags.DEFINE_integer("seed", 0, "Generation seed (same seed, same files).")
  app.run(main)

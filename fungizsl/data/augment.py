"""Image decoding, augmentation and normalisation for the input pipeline (numpy and PIL only).

Everything here is a pure function of an image and, where random, a ``np.random.Generator``; the
Grain pipeline (:mod:`fungizsl.data.pipeline`) hands each example its own generator, so the same
(seed, position in the stream) always gives the same pixels, in any process.

Training transform (:func:`augment_image`), in this order:

1. random resized crop (area fraction ``crop_scale``, aspect ratio ``crop_ratio``; the crop is cut
   and resized in one PIL call, so it costs one resampling pass);
2. horizontal / vertical flips and, for microscopy where "up" means nothing, 90-degree rotations;
3. optionally (``lowres_prob``) a lower resolution: the image shrunk to a side drawn from
   ``lowres_scale`` times ``size`` (box filter, as a coarser camera would sample it) and resized
   back (bicubic, as the evaluation transform resizes a smaller image), so thin structures are
   learned as they look at other resolutions;
4. colour jitter (brightness, contrast, saturation, hue, optional grayscale) in random order.

Every colour operation is affine in RGB, so the drawn operations are composed into one 3x3 matrix
and offset and applied in one pass by PIL's matrix conversion (rounded and clipped to uint8 once, at
the end, rather than after every operation as torchvision does). Hue is turned in YIQ space (a
rotation of the chroma plane), the usual linear stand-in for an HSV hue shift. Flips and rotations
are PIL transposes of the already resized crop, and the normalisation ``(x / 255 - mean) / std``
runs on rows of ``W * 3`` values (numpy is slow when it broadcasts over a last axis of 3).

Evaluation transform (:func:`eval_image`): CLIP's preprocessing, i.e. the central square of side
``crop_fraction * min(H, W)`` resized to ``size`` (bicubic), then normalised.

Presets (:data:`AUGMENT_PRESETS`): ``"natural"`` for photographs (FungiCLEF), ``"microscopy"`` for
micrographs and the synthetic growth stages (vertical flips and rotations, no hue change: the
paper preset of :mod:`fungizsl.data.synthetic` encodes the class in the colour),
``"microscopy_whole_field"`` (the same without the crop, for captions of the whole image),
``"microscopy_randomised"`` (whole field, with lower resolutions and grayscale drawn), ``"none"``
for the deterministic evaluation transform.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageStat

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2 and most ImageNet-trained towers
IMAGENET_STD = (0.229, 0.224, 0.225)

# ITU-R 601 luma weights, as PIL's "L" conversion and torchvision's rgb_to_grayscale use.
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# RGB -> YIQ (rows: Y, I, Q) and back.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "lanczos": Image.LANCZOS, "box": Image.BOX}


class CorruptImageError(ValueError):
    """An image field that cannot be decoded; the message names the record it came from."""


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x / 255 - mean) / std`` for RGB images with values in [0, 255]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"normalization {name} must have 3 values (R, G, B), got {value}")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise ValueError(f"normalization std must be positive, got {self.std}")

    @property
    def scale(self) -> np.ndarray:
        """Multiplier of a [0, 255] value, float64 [3]."""
        return 1.0 / (255.0 * np.asarray(self.std))

    @property
    def offset(self) -> np.ndarray:
        """Normalised value of 0, float64 [3]."""
        return -np.asarray(self.mean) / np.asarray(self.std)

    @property
    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised values of 0 and 255 per channel (float32 [3] each)."""
        low = self.offset
        return low.astype(np.float32), (low + 255.0 * self.scale).astype(np.float32)


NORMALIZATIONS = {
    "clip": Normalization(CLIP_MEAN, CLIP_STD),
    "imagenet": Normalization(IMAGENET_MEAN, IMAGENET_STD),
    "unit": Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # plain x / 255
}


def get_normalization(spec) -> Normalization:
    """A :class:`Normalization` from a name in :data:`NORMALIZATIONS`, a ``(mean, std)`` pair or itself."""
    if isinstance(spec, Normalization):
        return spec
    if isinstance(spec, str):
        if spec not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {spec!r}; expected one of {', '.join(NORMALIZATIONS)} "
                             f"or a (mean, std) pair")
        return NORMALIZATIONS[spec]
    if isinstance(spec, Mapping):
        return Normalization(spec["mean"], spec["std"])
    try:
        mean, std = spec
    except (TypeError, ValueError):
        raise ValueError(f"normalization must be a name, a (mean, std) pair or a Normalization, got {spec!r}") from None
    return Normalization(mean, std)


def normalize(image: np.ndarray, norm: Normalization | str = "clip") -> np.ndarray:
    """uint8 (or [0, 255] float) [..., W, 3] -> float32 normalised, same shape."""
    norm = get_normalization(norm)
    image = np.asarray(image)
    if image.ndim < 2 or image.shape[-1] != 3:
        raise ValueError(f"normalize expects an [..., W, 3] image, got shape {image.shape}")
    width = image.shape[-2]
    rows = image.reshape(-1, width * 3).astype(np.float32)  # a copy, so the in-place ops are safe
    rows *= np.tile(norm.scale.astype(np.float32), width)
    rows += np.tile(norm.offset.astype(np.float32), width)
    return rows.reshape(image.shape)


# ----------------------------------------------------------------------------------------------
# Augmentation settings
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; see the module docstring for the order of operations.

    Probabilities are in [0, 1]; jitter strengths follow torchvision's ColorJitter: a factor is drawn
    from [1 - s, 1 + s] for brightness, contrast and saturation, and a hue turn from [-hue, hue]
    (fraction of a full turn, at most 0.5).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: bool = False
    jitter_prob: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.0
    grayscale_prob: float = 0.0
    lowres_prob: float = 0.0
    lowres_scale: tuple[float, float] = (0.5, 1.0)
    interpolation: str = "bilinear"

    def __post_init__(self):
        name = type(self).__name__
        for field in ("crop_scale", "crop_ratio", "lowres_scale"):
            value = getattr(self, field)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name}.{field} must be a (min, max) pair, got {value!r}") from None
            object.__setattr__(self, field, (low, high))
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"{name}.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        low, high = self.lowres_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"{name}.lowres_scale must satisfy 0 < min <= max <= 1, got {self.lowres_scale}")
        low, high = self.crop_ratio
        if not 0.0 < low <= high:
            raise ValueError(f"{name}.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        for field in ("hflip", "vflip", "jitter_prob", "grayscale_prob", "lowres_prob"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}.{field} is a probability and must lie in [0, 1], got {value!r}")
        for field in ("brightness", "contrast", "saturation"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{field} must lie in [0, 1), got {value!r}")
        if not isinstance(self.hue, (int, float)) or not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"{name}.hue must lie in [0, 0.5], got {self.hue!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"{name}.interpolation must be one of {', '.join(_RESAMPLE)}, got {self.interpolation!r}")

    @property
    def has_jitter(self) -> bool:
        return self.jitter_prob > 0 and (self.brightness or self.contrast or self.saturation or self.hue) > 0


AUGMENT_PRESETS: dict[str, AugmentConfig | None] = {
    "natural": AugmentConfig(),
    "microscopy": AugmentConfig(crop_scale=(0.35, 1.0), vflip=0.5, rot90=True, hue=0.0),
    # The whole field of view, for captions that describe the whole image (FungalZSL's `scene`
    # captions count spores, name the density and where colonies sit): flips, rotations and colour
    # jitter, but no crop, which would leave the caption describing what is no longer in view.
    "microscopy_whole_field": AugmentConfig(crop_scale=(1.0, 1.0), vflip=0.5, rot90=True, hue=0.0),
    # The same with resolution and colour randomised (issue 21: a model that does not learn one
    # resolution or lean on colour): half the images at 0.5-1.0 of the input's resolution (val
    # zero-shot 0.935 against 0.922 with a third, main job, one seed each), a tenth in grayscale.
    "microscopy_randomised": AugmentConfig(crop_scale=(1.0, 1.0), vflip=0.5, rot90=True, hue=0.0,
                                           grayscale_prob=0.1, lowres_prob=0.5, lowres_scale=(0.5, 1.0)),
    "none": None,
}


def get_augment(spec) -> AugmentConfig | None:
    """An :class:`AugmentConfig` (or None: evaluation transform) from a preset name, a config, or a
    mapping of fields with an optional ``"preset"`` key to start from (handy in ml_collections)."""
    if spec is None or isinstance(spec, AugmentConfig):
        return spec
    if isinstance(spec, str):
        if spec not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augment preset {spec!r}; expected one of {', '.join(AUGMENT_PRESETS)}")
        return AUGMENT_PRESETS[spec]
    if hasattr(spec, "to_dict"):  # an ml_collections.ConfigDict is not a Mapping
        spec = spec.to_dict()
    if isinstance(spec, Mapping):
        fields = dict(spec)
        preset = get_augment(fields.pop("preset", "natural"))
        if preset is None:
            raise ValueError("augment preset 'none' cannot take overrides")
        known = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"unknown augment field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(preset, **fields)
    raise ValueError(f"augment must be a preset name, an AugmentConfig, a mapping or None, got {spec!r}")


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def load_image(data, *, where: str = "image", draft_size: int | None = None) -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG, ...) or a uint8 [H, W], [H, W, 1|3|4] array.

    ``draft_size`` lets a JPEG decode at a reduced scale whose shorter side is still at least that
    many pixels (much faster for large photos at evaluation). Failures raise
    :class:`CorruptImageError` naming ``where``.
    """
    if isinstance(data, np.ndarray):
        return _array_to_pil(data, where)
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            image = Image.open(io.BytesIO(data))
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise CorruptImageError(f"cannot decode the image of {where} ({len(data)} bytes): {err}") from err
    raise CorruptImageError(f"the image of {where} is a {type(data).__name__}; expected encoded bytes or a "
                            f"uint8 array")


def _array_to_pil(array: np.ndarray, where: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise CorruptImageError(f"the image array of {where} has dtype {array.dtype}; expected uint8")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise CorruptImageError(f"the image array of {where} has shape {array.shape}; expected [H, W, 3]")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: tuple[float, float], ratio: tuple[float, float],
                            attempts: int = 10) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a crop covering a random area fraction in ``scale`` with aspect
    ratio (w / h) log-uniform in ``ratio``; after ``attempts`` misses, the largest central crop whose
    ratio is clamped into ``ratio`` (torchvision's RandomResizedCrop rule)."""
    area = float(width * height)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    if scale[0] >= 1.0:  # the whole image: every attempt would miss (unless the ratio draws 1 exactly)
        attempts = 0
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 1.0 <= w <= width and 1.0 <= h <= height:
            left = rng.uniform(0.0, width - w)
            top = rng.uniform(0.0, height - h)
            return (left, top, left + w, top + h)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = float(width), width / ratio[0]
    elif aspect > ratio[1]:
        w, h = height * ratio[1], float(height)
    else:
        w, h = float(width), float(height)
    left, top = (width - w) / 2.0, (height - h) / 2.0
    return (left, top, left + w, top + h)


def center_crop_box(width: int, height: int, crop_fraction: float = 1.0) -> tuple[float, float, float, float]:
    """The central square of side ``crop_fraction * min(width, height)``: what "resize the shorter
    side to size / crop_fraction, then center-crop size" keeps of the original."""
    side = crop_fraction * min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return (left, top, left + side, top + side)


_QUARTER_TURNS = {1: Image.ROTATE_90, 2: Image.ROTATE_180, 3: Image.ROTATE_270}  # counter-clockwise


def flip_and_rotate(image: Image.Image, rng: np.random.Generator, config: AugmentConfig) -> Image.Image:
    """Random horizontal flip, vertical flip, then counter-clockwise quarter turns (as ``np.rot90``)."""
    if config.hflip and rng.random() < config.hflip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    if config.vflip and rng.random() < config.vflip:
        image = image.transpose(Image.FLIP_TOP_BOTTOM)
    if config.rot90:
        quarter_turns = int(rng.integers(4))
        if quarter_turns:
            image = image.transpose(_QUARTER_TURNS[quarter_turns])
    return image


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------


def colour_jitter_affine(rng: np.random.Generator, config: AugmentConfig,
                         mean_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A random colour jitter as ``x @ matrix + bias`` on RGB row vectors in [0, 255], or None when
    this draw applies none. ``mean_rgb`` is the image's mean colour (for contrast)."""
    jitter = config.has_jitter and rng.random() < config.jitter_prob
    grayscale = config.grayscale_prob > 0 and rng.random() < config.grayscale_prob
    if not (jitter or grayscale):
        return None
    matrix, bias = np.eye(3), np.zeros(3)
    mean = np.asarray(mean_rgb, dtype=np.float64)

    def then(step_matrix, step_bias=0.0):
        nonlocal matrix, bias
        matrix, bias = matrix @ step_matrix, bias @ step_matrix + step_bias

    if jitter:
        for op in rng.permutation(4):
            if op == 0 and config.brightness:
                then(np.eye(3) * rng.uniform(1 - config.brightness, 1 + config.brightness))
            elif op == 1 and config.contrast:
                factor = rng.uniform(1 - config.contrast, 1 + config.contrast)
                grey_mean = float((mean @ matrix + bias) @ _GRAY)
                then(np.eye(3) * factor, (1.0 - factor) * grey_mean)
            elif op == 2 and config.saturation:
                factor = rng.uniform(1 - config.saturation, 1 + config.saturation)
                then(factor * np.eye(3) + (1.0 - factor) * np.outer(_GRAY, np.ones(3)))
            elif op == 3 and config.hue:
                angle = 2.0 * math.pi * rng.uniform(-config.hue, config.hue)
                cos, sin = math.cos(angle), math.sin(angle)
                turn = np.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
                then((_YIQ_TO_RGB @ turn @ _RGB_TO_YIQ).T)
    if grayscale:
        then(np.outer(_GRAY, np.ones(3)))
    return matrix, bias


def apply_colour_affine(image: Image.Image, affine: tuple[np.ndarray, np.ndarray]) -> Image.Image:
    """``x @ matrix + bias`` on every RGB pixel, rounded and clipped to uint8 (PIL's matrix convert)."""
    matrix, bias = affine
    # PIL wants, per output channel, the weights of (R, G, B) and an offset: columns of our matrix.
    coefficients = np.concatenate([np.asarray(matrix).T, np.asarray(bias)[:, None]], axis=1)
    return image.convert("RGB", tuple(float(c) for c in coefficients.ravel()))


# ----------------------------------------------------------------------------------------------
# Whole transforms
# ----------------------------------------------------------------------------------------------


def augment_image(image: Image.Image, rng: np.random.Generator, config: AugmentConfig, size: int,
                  norm: Normalization) -> np.ndarray:
    """Training transform of one RGB PIL image -> float32 [size, size, 3]."""
    box = random_resized_crop_box(rng, image.width, image.height, config.crop_scale, config.crop_ratio)
    if box == (0.0, 0.0, float(size), float(size)) and image.size == (size, size):
        crop = image  # the whole image at its own size: nothing to resample
    else:
        crop = image.resize((size, size), _RESAMPLE[config.interpolation], box=box)
    crop = flip_and_rotate(crop, rng, config)
    if config.lowres_prob > 0 and rng.random() < config.lowres_prob:
        crop = lower_resolution(crop, rng, config.lowres_scale)
    mean_rgb = ImageStat.Stat(crop).mean if config.has_jitter and config.contrast else np.zeros(3)
    affine = colour_jitter_affine(rng, config, mean_rgb)
    if affine is not None:
        crop = apply_colour_affine(crop, affine)
    return normalize(np.asarray(crop), norm)


def lower_resolution(image: Image.Image, rng: np.random.Generator, scale: tuple[float, float]) -> Image.Image:
    """`image` sampled at a side drawn uniformly from ``scale`` times its own (box filter), then
    resized back to its own size (bicubic)."""
    side = max(1, round(rng.uniform(*scale) * image.width))
    if side >= image.width:
        return image
    small = image.resize((side, max(1, round(side * image.height / image.width))), Image.BOX)
    return small.resize(image.size, Image.BICUBIC)


def eval_image(image: Image.Image, size: int, norm: Normalization, crop_fraction: float = 1.0,
               interpolation: str = "bicubic") -> np.ndarray:
    """Evaluation transform of one RGB PIL image -> float32 [size, size, 3] (deterministic)."""
    box = center_crop_box(image.width, image.height, crop_fraction)
    return normalize(np.asarray(image.resize((size, size), _RESAMPLE[interpolation], box=box)), norm)

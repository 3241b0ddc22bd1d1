"""Image transforms with Pillow: geometry (resize, crop to fit) and a handful of looks.

Pure functions on PIL images; the pillow adapter runs them on a thread."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

STYLES = ("sketch", "sepia", "posterize", "cartoon", "blur", "resize")
FITS = ("cover", "contain", "pad", "stretch")
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PREVIEW_SIDE = 128
# The classic sepia tone matrix (rows: output R, G, B from input R, G, B; no offsets).
_SEPIA = (0.393, 0.769, 0.189, 0, 0.349, 0.686, 0.168, 0, 0.272, 0.534, 0.131, 0)
# The median window for cartoon smoothing grows with radius up to this size (odd), beyond
# which it costs much and flattens little more.
_MAX_MEDIAN = 9


class ImageError(ValueError):
    """The input is not an image this module can work on."""


@dataclass(frozen=True)
class Look:
    """What to do to an image: the job's checked parameters."""

    style: str = "sketch"
    radius: float = 4.0
    bits: int = 3
    width: int | None = None
    height: int | None = None
    fit: str = "cover"
    format: str = "png"


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """The decoded image, upright (EXIF orientation applied), first frame of an animation."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        # Checked from the header, before decoding a huge picture into memory.
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height}; at most {max_pixels} pixels")
        image.load()
    except UnidentifiedImageError as exc:
        # Pillow's own message names the BytesIO object, which tells the caller nothing.
        raise ImageError("not a readable image (not a format the provider can decode)") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image ({exc})") from exc
    upright = ImageOps.exif_transpose(image)
    return upright if upright is not None else image


def output_size(size: tuple[int, int], look: Look) -> tuple[int, int]:
    """The box the result is fitted to: the requested one, one side kept in proportion
    when only the other is given, or the input's own size."""
    w, h = size
    if look.width and look.height:
        return look.width, look.height
    if look.width:
        return look.width, max(1, round(h * look.width / w))
    if look.height:
        return max(1, round(w * look.height / h)), look.height
    return w, h


def render(image: Image.Image, look: Look) -> bytes:
    """The full-size result, encoded in look.format."""
    return encode(styled(image, output_size(image.size, look), look, 1.0), look.format)


def render_preview(image: Image.Image, look: Look) -> bytes:
    """The same result at most PREVIEW_SIDE pixels a side, as PNG; fast on any input."""
    box = output_size(image.size, look)
    scale = min(1.0, PREVIEW_SIDE / max(box))
    small_box = (max(1, round(box[0] * scale)), max(1, round(box[1] * scale)))
    # Shrink the input first (cheaply) so even a 40-megapixel photo previews at once.
    source = image.copy()
    source.thumbnail((small_box[0] * 2, small_box[1] * 2), Image.Resampling.BILINEAR)
    return encode(styled(source, small_box, look, scale), "png")


def styled(image: Image.Image, box: tuple[int, int], look: Look, scale: float) -> Image.Image:
    """Fit to `box`, then apply the style; `scale` shrinks radii along with a preview."""
    alpha_ok = look.format != "jpeg"
    rgba = image.convert("RGBA" if _has_alpha(image) or look.fit == "pad" else "RGB")
    fitted = fit(rgba, box, look.fit, transparent=alpha_ok)
    alpha = fitted.getchannel("A") if fitted.mode == "RGBA" else None
    rgb = fitted.convert("RGB")
    out = transform(rgb, look.style, max(look.radius * scale, 0.1), look.bits)
    if alpha is not None and alpha_ok:
        out = out.convert("RGBA")
        out.putalpha(alpha)
    return out


def fit(image: Image.Image, box: tuple[int, int], how: str, transparent: bool) -> Image.Image:
    """`image` resized into `box`: cropped to fill it (cover), inside it (contain), inside
    and padded to it (pad), or distorted to it (stretch)."""
    if image.size == box:
        return image
    lanczos = Image.Resampling.LANCZOS
    if how == "cover":
        return ImageOps.fit(image, box, lanczos)
    if how == "contain":
        return ImageOps.contain(image, box, lanczos)
    if how == "pad":
        color = (0, 0, 0, 0) if transparent else (255, 255, 255, 255)
        return ImageOps.pad(image, box, lanczos, color=color)
    return image.resize(box, lanczos)


def transform(image: Image.Image, style: str, radius: float, bits: int) -> Image.Image:
    """One RGB image in, the styled RGB image out."""
    if style == "sketch":
        return _sketch(image, radius)
    if style == "sepia":
        return image.convert("RGB", _SEPIA)
    if style == "posterize":
        return ImageOps.posterize(image, bits)
    if style == "cartoon":
        return _cartoon(image, radius, bits)
    if style == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius))
    return image  # "resize": the geometry alone


def _sketch(image: Image.Image, radius: float) -> Image.Image:
    """Pencil sketch: the grey image colour-dodged with its own blurred negative."""
    gray = image.convert("L")
    blurred = ImageOps.invert(gray).filter(ImageFilter.GaussianBlur(radius))
    g = np.asarray(gray, dtype=np.float32)
    b = np.asarray(blurred, dtype=np.float32)
    dodged = np.minimum(1.0, g / np.maximum(255.0 - b, 1.0))
    # Squared: the dodge alone leaves faint strokes on a near-white page.
    return Image.fromarray((255.0 * dodged**2).astype(np.uint8), "L").convert("RGB")


def _cartoon(image: Image.Image, radius: float, bits: int) -> Image.Image:
    """Flat colours (edge-preserving median, then posterize) under dark outlines."""
    size = min(2 * max(1, round(radius / 2)) + 1, _MAX_MEDIAN)
    flat = ImageOps.posterize(image.filter(ImageFilter.MedianFilter(size)), bits)
    edges = image.convert("L").filter(ImageFilter.GaussianBlur(1)).filter(ImageFilter.FIND_EDGES)
    lines = edges.point(lambda v: 255 if v > 20 else 0).filter(ImageFilter.MaxFilter(3))
    flat.paste((20, 20, 20), mask=lines)
    return flat


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, "JPEG", quality=90)
    elif fmt == "webp":
        image.save(buf, "WEBP", quality=90)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info

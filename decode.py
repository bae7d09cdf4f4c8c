"""Decode any image input into a small, upright 8-bit picture: the first stage of inference.

    decode(source) -> Picture(pixels, name, size)

`source` is a path, bytes, a binary file object, a PIL image, a NumPy array or a Picture.
`pixels` is uint8, HxW (grey) or HxWx3 (colour), upright (EXIF orientation applied), with
transparency composited, and at most WORK_SIDE pixels on its long side (`side` asks for
another bound); `size` is the image's own upright size, before it was reduced.

Decoding is bounded whatever the file claims: a path that is not a regular file is refused
before it is read, and the header decides the cost before any pixel is decoded. JPEGs are
decoded at a reduced scale, other formats over MAX_PIXELS are refused, and every image is
reduced and brought to 8 bits before it becomes floats. Whatever Pillow raises becomes an
UnreadableImageError naming the input.
"""

import contextlib
import io
import os
import stat
from typing import NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from errors import BusyError, ImageTooLargeError, UnreadableImageError

WORK_SIDE = 400  # pictures are brought down to this long side: room for a small digit in a corner
# Bytes per pixel at the peak of decoding, by mode: what Pillow stores (multi-band images take
# 4 bytes a pixel), plus the copy that converting or reducing makes. Unknown modes count 8.
PEAK_BYTES = {"1": 4, "L": 2, "P": 9, "I;16": 6, "I;16B": 6, "I;16L": 6, "I;16N": 6, "I": 4, "F": 4,
              "LA": 8, "PA": 9, "RGB": 8, "RGBA": 8, "RGBa": 8, "RGBX": 8, "CMYK": 8, "YCbCr": 8}
MAX_DECODE_MB = 200  # with Python, NumPy and Pillow themselves, a file's decoding stays under 300 MB
# A JPEG is decoded at the smallest libjpeg scale that keeps this share of the long side asked
# for (280 px of WORK_SIDE): that is what costs least (no resize after it), and a photo's digit is
# big enough at this size.
JPEG_MIN_SHARE = 0.7
STRIP_SIDE = 4 * WORK_SIDE  # the longest side decode(short_side=...) gives a wide strip
MAX_PIXELS = 40_000_000  # an image that would decode to more is refused from its header (A4 at 600 dpi: 35 M)
# Pillow can decode these safely and they hold photos, scans and drawings; others (EPS, PDF, ...)
# need outside programs or are rarely digit images.
FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM", "TGA")  # JPEG covers phones' MPO
# The file names those formats go by: what the command line picks out of a folder.
SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp",
            ".pgm", ".ppm", ".pbm", ".pnm", ".tga"}
EIGHT_BIT_MODES = {"L", "LA", "RGB", "RGBA"}  # what the rest of decoding works in
# EXIF orientation -> the transpose that turns the stored pixels upright (as ImageOps.exif_transpose)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


class Picture(NamedTuple):
    """A decoded image as the pipeline sees it."""

    pixels: np.ndarray  # uint8, HxW (grey) or HxWx3 (colour), long side <= WORK_SIDE (or the side asked for)
    name: str  # how messages name the input: its path, or "the image"
    size: Optional[Tuple[int, int]] = None  # (width, height) of the upright input before reducing; None: the pixels'

    def scale(self):
        """(x, y) factors from these pixels' coordinates to the input's own."""
        height, width = self.pixels.shape[:2]
        full = self.size or (width, height)
        return full[0] / width, full[1] / height


def decode(source, name=None, max_pixels=MAX_PIXELS, side=WORK_SIDE, short_side=0, max_megabytes=MAX_DECODE_MB,
           reserve=None):
    """Return `source` as a Picture; raise UnreadableImageError when it cannot be read.

    Args:
        source: a path (str or os.PathLike), bytes, a binary file object, a PIL
            image, a NumPy array (HxW or HxWxC, C = 1-4, any numeric dtype) or a Picture.
        name: how messages name it (default: the path, or "the image").
        max_pixels: a file or PIL image that would decode to more pixels raises
            ImageTooLargeError, before any pixel is decoded.
        side: the longest side the pixels may have (a Picture is returned as it is)...
        short_side: ...unless a longer one (up to STRIP_SIDE) keeps the short side this
            long: a wide strip, such as a written number, keeps the height its digits need.
        max_megabytes: a file or PIL image whose decoding would take more memory at its
            peak (estimated from its header) raises ImageTooLargeError.
        reserve: None, or a function reserve(megabytes) -> context manager, entered
            with that estimate around the decoding itself: how a server shares one
            memory budget among its requests (it may raise BusyError to refuse).
    """
    if isinstance(source, Picture):
        return source
    bound = (side, short_side)
    limits = Limits(max_pixels, max_megabytes, reserve or no_reservation)
    if isinstance(source, (str, os.PathLike)):
        return decode_path(source, name or os.fspath(source), limits, bound)
    name = name or str(getattr(source, "filename", "") or "the image")
    if isinstance(source, np.ndarray):
        size = (source.shape[1], source.shape[0]) if source.ndim >= 2 else None
        return Picture(array_to_pixels(source, name, long_side(size or (1, 1), bound)), name, size)
    if isinstance(source, Image.Image):
        pixels, size = read_pillow(lambda: contextlib.nullcontext(source), name, limits, bound)
        return Picture(pixels, name, size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_stream(io.BytesIO(source), name, limits, bound)
    if hasattr(source, "read"):
        return decode_stream(source, name, limits, bound)
    raise UnreadableImageError(f"{name}: cannot read a {type(source).__name__}; "
                               "pass a path, bytes, a file, a PIL image or a NumPy array")


def long_side(size, bound):
    """The long side to reduce an image of size (width, height) to, for decode()'s (side, short_side)."""
    side, short_side = bound
    longer, shorter = max(size), max(1, min(size))
    return max(side, min(STRIP_SIDE, int(short_side * longer / shorter)))


class Limits(NamedTuple):
    """What one decoding may cost."""

    max_pixels: int
    max_megabytes: float
    reserve: object  # reserve(megabytes) -> a context manager held while the pixels are decoded


def no_reservation(megabytes):
    return contextlib.nullcontext()


DEFAULT_LIMITS = Limits(MAX_PIXELS, MAX_DECODE_MB, no_reservation)


def decode_path(path, name, limits, bound=(WORK_SIDE, 0)):
    """Open a regular file without blocking (a FIFO or device is refused unread) and decode it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
    except FileNotFoundError:
        raise UnreadableImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UnreadableImageError(f"{name}: a folder, not an image") from None
    except PermissionError:
        raise UnreadableImageError(f"{name}: permission denied") from None
    except (OSError, ValueError) as error:  # a name too long, a NUL byte, a loop of links...
        raise UnreadableImageError(f"{name}: cannot open ({describe(error)})") from None
    kind = stat.S_IFMT(os.fstat(fd).st_mode)
    if kind != stat.S_IFREG:
        os.close(fd)
        if kind == stat.S_IFDIR:
            raise UnreadableImageError(f"{name}: a folder, not an image")
        raise UnreadableImageError(f"{name}: not a regular file (a pipe, socket or device)")
    with os.fdopen(fd, "rb") as file:
        return decode_stream(file, name, limits, bound)


def decode_stream(file, name, limits, bound=(WORK_SIDE, 0)):
    pixels, size = read_pillow(lambda: Image.open(file, formats=FORMATS), name, limits, bound)
    return Picture(pixels, name, size)


def read_pillow(open_image, name, limits, bound=(WORK_SIDE, 0)):
    """pil_to_pixels(open_image()), with whatever Pillow raises turned into UnreadableImageError."""
    try:
        with open_image() as image:
            return pil_to_pixels(image, name, limits, bound)
    except (UnreadableImageError, BusyError):
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours, said so first
        raise ImageTooLargeError(f"{name}: too large ({describe(error)})") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{name}: not an image, or not in a format read here "
                                   "(PNG, JPEG, BMP, GIF, TIFF, WebP, PNM, TGA)") from None
    except Exception as error:  # Pillow raises many types for broken data: all mean "cannot read"
        raise UnreadableImageError(f"{name}: not a readable image ({describe(error)})") from None


def describe(error):
    text = str(error).splitlines()[0].strip() if str(error).strip() else ""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    return text or type(error).__name__


def pil_to_pixels(image, name, limits=DEFAULT_LIMITS, bound=(WORK_SIDE, 0)):
    """Decode a PIL image (of any mode and size Pillow accepts) into bounded uint8 pixels.

    Returns (pixels, (width, height) of the whole image, upright).
    """
    width, height = full = image.size
    if width < 1 or height < 1:
        raise UnreadableImageError(f"{name}: an empty image ({width}x{height})")
    side = long_side(full, bound)
    if image.format in ("JPEG", "MPO"):  # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free
        scale = next(s for s in (8, 4, 2, 1) if max(width, height) // s >= JPEG_MIN_SHARE * side or s == 1)
        if scale > 1:
            image.draft(None, (width // scale, height // scale))
            width, height = image.size
    per_pixel = PEAK_BYTES.get(image.mode, 8)
    megabytes = width * height * per_pixel / 2**20
    if width * height > limits.max_pixels or megabytes > limits.max_megabytes:
        limit = min(limits.max_pixels, limits.max_megabytes * 2**20 / per_pixel) / 1e6
        raise ImageTooLargeError(f"{name}: too large ({width}x{height} pixels, mode {image.mode}; the limit is "
                                 f"{limit:.{0 if limit >= 10 else 1}f} megapixels)")
    with limits.reserve(megabytes):
        return decode_pixels(image, name, side, full)


def decode_pixels(image, name, side, full):
    """(pixels, upright full size): the first frame, 8-bit, reduced and upright; the size was checked before."""
    try:
        image.seek(0)  # the first frame of an animation or a multi-page TIFF
    except (AttributeError, EOFError, ValueError):
        pass
    image.load()
    orientation = exif_orientation(image)  # after load(): a PNG may keep its EXIF after the pixels
    image = reduce_to(to_eight_bit(image, side), side)
    if orientation in UPRIGHT:
        image = image.transpose(UPRIGHT[orientation])
        if orientation >= 5:  # a quarter turn
            full = full[::-1]
    return finish(np.asarray(image), name, side), full


def exif_orientation(image):
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not lose the picture itself
        return None


def to_eight_bit(image, side=WORK_SIDE):
    """Return the image in L, LA, RGB or RGBA; 16-bit, integer and float images are scaled to 0-255."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        return image
    if mode == "1":
        image = image.convert("L")
        if min(image.size) >= 64:  # dithered greys (fax, bilevel scans): dots back to grey
            image = image.filter(ImageFilter.BoxBlur(1))
        return image
    if mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if mode in ("PA", "RGBa", "La"):
        return image.convert("RGBA" if mode != "La" else "LA")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    # I, I;16 (any byte order) and F: reduce first (in Pillow where it can), then scale to 0-255
    array = np.asarray(reduce_to(image, 2 * side) if mode in ("I", "F") else image)
    if mode == "F" and not np.isfinite(array).all():
        array = np.where(np.isfinite(array), array, 0)  # NaN and inf: no information, call it black
    offset, factor = value_scale(array.dtype, array)
    small = block_mean(array, 2 * side)
    return Image.fromarray(((small.astype(np.float32) - offset) * factor).clip(0, 255).round().astype(np.uint8))


def reduce_to(image, side):
    """Shrink so that the long side is at most `side`: Pillow's integer reduce, then a box resize."""
    width, height = image.size
    factor = max(width, height) // side
    if factor >= 2:
        try:
            image = image.reduce(factor)
        except (ValueError, NotImplementedError):  # a mode reduce() lacks: the resize below copes
            pass
    width, height = image.size
    if max(width, height) > side:
        scale = side / max(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
    return image


def block_mean(array, side):
    """Average square blocks of an HxW(xC) array so that its long side is about `side` (float32)."""
    factor = max(array.shape[:2]) // side
    if factor < 2:
        return array
    height, width = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = array[:height, :width].reshape(height // factor, factor, width // factor, factor, *array.shape[2:])
    return blocks.mean(axis=(1, 3), dtype=np.float32)  # reduces in float32 without a full-size copy


def array_to_pixels(array, name, side=WORK_SIDE):
    """Return uint8 pixels (HxW or HxWx3) from an HxW or HxWxC array of any numeric dtype."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)) or 0 in array.shape:
        raise UnreadableImageError(f"{name}: an image array must be HxW or HxWxC (C = 1-4), "
                                   f"got shape {array.shape}")
    if array.dtype.kind not in "biuf":  # bool, integers and floats; not complex, dates, text or objects
        raise UnreadableImageError(f"{name}: cannot read an array of {array.dtype}")
    if array.dtype == np.uint8:
        return finish(array, name, side)
    if array.dtype == bool:
        return finish(array.astype(np.uint8) * 255, name, side)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        array = np.where(np.isfinite(array), array, 0)  # NaN and inf: no information, call it black
    has_alpha = array.ndim == 3 and array.shape[2] in (2, 4)
    colour = array[..., :-1] if has_alpha else array
    offset, factor = value_scale(array.dtype, colour)
    eight_bit = ((colour.astype(np.float32) - offset) * factor).clip(0, 255).round().astype(np.uint8)
    if has_alpha:
        alpha = (array[..., -1].astype(np.float32) * value_scale(array.dtype, array[..., -1])[1]).clip(0, 255)
        eight_bit = np.concatenate([eight_bit.reshape(eight_bit.shape[:2] + (-1,)),
                                    alpha.round().astype(np.uint8)[..., None]], axis=2)
    return finish(eight_bit, name, side)


def value_scale(dtype, values):
    """Return (offset, factor) that map this array's values onto 0-255."""
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(dtype, np.floating) and low >= 0 and high <= 1:
        return 0.0, 255.0  # the usual 0-1 floats
    if np.issubdtype(dtype, np.floating) and low >= -1 and high <= 1:
        return -1.0, 127.5  # -1..1, as in USPS
    if low >= 0 and high <= 255:
        return 0.0, 1.0
    if low >= 0 and high <= 65535 and (dtype == np.uint16 or np.issubdtype(dtype, np.integer)):
        # 16-bit scans and 12-bit sensors: scale by the range actually used
        return 0.0, 255.0 / (65535.0 if high > 4095 else 4095.0)
    return low, 255.0 / max(high - low, 1e-6)


def finish(array, name, side=WORK_SIDE):
    """uint8 HxW(xC) -> bounded HxW or HxWx3: alpha composited, grey kept as one channel."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if max(array.shape[:2]) > side:
        array = np.asarray(reduce_to(Image.fromarray(np.ascontiguousarray(array)), side))
    if array.ndim == 3 and array.shape[2] in (2, 4):
        colour = array[..., 0] if array.shape[2] == 2 else array[..., :3]
        array = composite(colour.astype(np.float32), array[..., -1].astype(np.float32) / 255)
        array = array.round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 3 and is_grey(array):
        array = array[..., 0]
    return np.ascontiguousarray(array)


def is_grey(rgb):
    return np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def composite(colour, alpha):
    """Put a picture with transparency onto a backdrop, so that what is drawn stays ink.

    A canvas export is ink on nothing, and the colour of its transparent pixels is
    arbitrary, so only alpha counts: mostly transparent -> the opaque pixels are the
    ink, put them on a backdrop of the opposite brightness; mostly opaque -> the
    transparent parts are margins, fill them with the picture's own paper colour.
    """
    if alpha.min() >= 0.99:
        return colour
    opaque = alpha > 0.5
    if not opaque.any():
        return np.full_like(colour, 255.0)  # nothing drawn
    colours = colour[opaque]
    if opaque.mean() > 0.5:
        backdrop = np.median(colours, axis=0)
    else:
        brightness = colours.mean() if colours.ndim == 1 else luminance(colours).mean()
        backdrop = np.full(colours.shape[1:], 255.0 if brightness < 128 else 0.0, np.float32)
    weight = alpha if colour.ndim == 2 else alpha[..., None]
    return colour * weight + backdrop * (1 - weight)


def luminance(rgb):
    """Grey levels of RGB values (ITU-R 601, as Pillow's convert("L"))."""
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def use_own_limits():
    """For the command line and the web app: let decode()'s budget alone decide what is too large.

    Pillow's own limit is checked on a JPEG's full size, before decode() scales it down,
    and it warns about images decode() refuses anyway. Its other warnings (a corrupt EXIF
    block, say) concern images that decode fine; errors still come as UnreadableImageError.
    """
    import warnings

    Image.MAX_IMAGE_PIXELS = None
    warnings.filterwarnings("ignore", module="PIL")

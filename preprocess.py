"""Bring any single-digit image to MNIST's own form: 28x28, light digit on dark, 0-255.

MNIST was made by cropping each binary NIST digit to its bounding box, scaling it
(anti-aliased, aspect kept) into a 20x20 box and placing that box in a 28x28 field
so that the centre of mass lands in the middle. `to_mnist` does the same to a
photo, scan or drawing, after the steps a real image needs first:

    load_image   decode; EXIF orientation; alpha composited; any mode/dtype -> RGB floats
    ink_side     is the ink darker or lighter than the paper? (from the histogram's tails)
    ink_map      ink strength per pixel, 0 on the paper, even under shadows and tinted paper
    normalise    background to 0, ink to 255; noise below the floor; no ink -> ImageError
    find_digit   connected pieces; specks, paper edges and form lines dropped
    fit_box      crop, keep the stroke width in MNIST's range, scale into 20x20
    centre       place in 28x28 by the centre of mass
"""

import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

SIZE = 28  # MNIST's field
BOX = 20  # MNIST scaled each digit to fit this box, keeping its aspect ratio
CENTRE = 14.0  # where MNIST's centres of mass sit (row and column index, measured)
MAX_SIDE = 1200  # bigger inputs are shrunk first: still room for a small digit in a corner
GRID = 160  # connected pieces are found on a grid at most this big (cheap, joins broken strokes)
WORK = 96  # the box side at which stroke width is measured and adjusted
MIN_CONTRAST = 10.0  # in 0-255 levels: weaker "ink" than this is paper texture or JPEG noise
CLOSING = 2  # blocks (1/16 of the picture): strokes up to 4 blocks wide are told from the paper
INK_LEVEL = 0.3  # a pixel belongs to a stroke when its ink is this share of the full strength
# Stroke width as a share of the box side: about the 1st-99th percentile of MNIST's own digits.
# Strokes outside (1-pixel mouse lines, fat brushes) are brought to a typical MNIST width.
STROKE_RANGE = (0.08, 0.23)
STROKE_TARGET = (0.12, 0.19)  # for too thin, too thick (MNIST's median is 0.125)


class ImageError(ValueError):
    """An input cannot be read as an image, or holds no digit."""


class Picture(NamedTuple):
    """An image as the pipeline sees it."""

    rgb: np.ndarray  # HxWx3 float32, 0-255, alpha already composited onto a backdrop
    name: str  # how error messages name the input


# ----------------------------------------------------------------------------- loading

def load_image(source):
    """Return `source` (a path, PIL image or NumPy array) as a Picture.

    Applies EXIF orientation, composites transparency and converts any Pillow
    mode (1, L, P, PA, LA, RGB, RGBA, CMYK, I;16, I, F...) or NumPy dtype.
    Raises ImageError when the input cannot be read.
    """
    if isinstance(source, Picture):
        return source
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        return Picture(pil_to_rgb(open_image(name), name), name)
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "the image"
        return Picture(pil_to_rgb(source, name), name)
    if isinstance(source, np.ndarray):
        return Picture(array_to_rgb(source, "the image"), "the image")
    raise ImageError(f"cannot classify a {type(source).__name__}: pass a path, PIL image or NumPy array")


def open_image(path):
    try:
        image = Image.open(path)
        if image.format == "JPEG":  # decode big photos at a reduced size: much faster
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
        image.load()
        return image
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageError(f"{path}: not a readable image ({message})") from None


def pil_to_rgb(image, name):
    """Return an upright HxWx3 float32 array of a PIL image of any mode."""
    try:
        image = ImageOps.exif_transpose(image)  # phone photos are stored sideways + a tag
    except Exception:  # a broken EXIF block must not lose the picture itself
        pass
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    mode = image.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode in ("PA", "RGBa", "La"):
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
        if min(image.size) >= 64:  # dithered greys (fax, bilevel scans): dots back to grey
            image = image.filter(ImageFilter.BoxBlur(1))
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        image = image.convert("RGB")
    factor = max(image.size) // MAX_SIDE
    if factor >= 2:  # shrink a huge picture before it becomes floats: a 16-megapixel one would take ~600 MB
        try:
            image = image.reduce(factor)
        except (ValueError, NotImplementedError):  # a mode reduce() lacks: shrink() copes later
            pass
    try:
        array = np.asarray(image)
    except Exception as error:
        raise ImageError(f"{name}: not a readable image (mode {image.mode}: {error})") from None
    return array_to_rgb(array, name)


def array_to_rgb(array, name):
    """Return HxWx3 float32 0-255 from an HxW or HxWxC array of any numeric dtype."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (2, 3, 4)) or min(array.shape[:2]) == 0:
        raise ImageError(f"{name}: an image array must be HxW or HxWxC (C = 1-4), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ImageError(f"{name}: cannot read an array of {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        array = np.where(np.isfinite(array), array, 0)  # NaN and inf: no information, call it black
    has_alpha = array.ndim == 3 and array.shape[2] in (2, 4)
    colour = array[..., :-1] if has_alpha else array
    scale = value_scale(array.dtype, colour)
    colour = ((colour.astype(np.float32) - scale[0]) * scale[1]).clip(0, 255)
    if colour.ndim == 2 or colour.shape[2] == 1:
        colour = np.repeat(colour.reshape(colour.shape[:2] + (1,)), 3, axis=2)
    if has_alpha:
        alpha = array[..., -1].astype(np.float32) * value_scale(array.dtype, array[..., -1])[1] / 255
        colour = composite(colour, alpha.clip(0, 1))
    return shrink(colour)


def value_scale(dtype, values):
    """Return (offset, factor) that map this array's values onto 0-255."""
    if dtype == bool:
        return 0.0, 255.0
    if dtype == np.uint8:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(dtype, np.floating) and low >= 0 and high <= 1:
        return 0.0, 255.0  # the usual 0-1 floats
    if np.issubdtype(dtype, np.floating) and low >= -1 and high <= 1:
        return -1.0, 127.5  # -1..1, as in USPS
    if low >= 0 and high <= 255:
        return 0.0, 1.0
    if dtype == np.uint16 or (low >= 0 and high <= 65535 and np.issubdtype(dtype, np.integer)):
        # 16-bit scans and 12-bit sensors: scale by the range actually used
        return 0.0, 255.0 / (65535.0 if high > 4095 else 4095.0)
    return low, 255.0 / max(high - low, 1e-6)


def composite(rgb, alpha):
    """Put a picture with transparency onto a backdrop, so that what is drawn stays ink.

    A canvas export is ink on nothing, and the colour of its transparent pixels is
    arbitrary, so only alpha counts: mostly transparent -> the opaque pixels are the
    ink, put them on a backdrop of the opposite brightness; mostly opaque -> the
    transparent parts are margins, fill them with the picture's own paper colour.
    """
    if alpha.min() >= 0.99:
        return rgb
    opaque = alpha > 0.5
    if not opaque.any():
        return np.full_like(rgb, 255.0)  # nothing drawn
    colours = rgb[opaque]
    if opaque.mean() > 0.5:
        backdrop = np.median(colours, axis=0)
    else:
        backdrop = np.full(3, 255.0 if luminance(colours).mean() < 128 else 0.0, np.float32)
    return rgb * alpha[..., None] + backdrop * (1 - alpha[..., None])


def shrink(rgb):
    """Scale a very large picture down (area averaging), so the rest stays fast."""
    height, width = rgb.shape[:2]
    if max(height, width) <= MAX_SIDE:
        return rgb.astype(np.float32)
    factor = MAX_SIDE / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.stack([resize(rgb[..., c], size, Image.BOX) for c in range(3)], axis=2)


def resize(channel, size, method):
    """Resize a float array to size (width, height) with Pillow."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(channel, np.float32), "F").resize(size, method))


def luminance(rgb):
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


# ----------------------------------------------------------------------------- the pipeline

def to_mnist(picture, trace=None):
    """Return a 28x28 float32 array, light digit on dark, 0-255, as MNIST made it.

    Args:
        picture: a Picture from load_image (or anything load_image accepts).
        trace: an optional dict that receives each intermediate step (for --explain).
    Raises:
        ImageError("no digit found in NAME") when the image holds no ink.
    """
    picture = load_image(picture)
    trace = {} if trace is None else trace
    trace["input"] = picture.rgb
    rgb = picture.rgb
    if min(rgb.shape[:2]) >= 100:  # dithering, JPEG ripple, sensor noise: average them out first
        image = Image.fromarray(rgb.clip(0, 255).round().astype(np.uint8)).filter(ImageFilter.BoxBlur(1))
        rgb = np.asarray(image, np.float32)
    side = ink_side(luminance(rgb))
    trace["side"] = "dark ink on light paper" if side < 0 else "light ink on dark background"
    ink, noise = ink_map(rgb, side)
    ink = normalise(ink, noise, picture.name)
    trace["ink"] = ink
    keep, box = find_digit(ink, picture.name)
    trace["keep"], trace["box"] = keep, box
    top, bottom, left, right = box
    gray = luminance(rgb)
    if in_mnist_form(gray, side, box):  # refitting would only resample it: keep MNIST's own pixels
        trace["mnist"] = gray
        return gray
    crop = np.where(keep, ink, 0)[top:bottom, left:right]
    fitted, stroke = fit_box(crop)
    trace["fitted"], trace["stroke"] = fitted, stroke
    mnist = centre(fitted)
    trace["mnist"] = mnist
    return mnist


def in_mnist_form(gray, side, box):
    """Is this already what MNIST's own steps make: a light digit on black, 28x28, in a 20x20 box, centred?"""
    if gray.shape != (SIZE, SIZE) or side < 0:
        return False
    top, bottom, left, right = box
    if max(bottom - top, right - left) > BOX or np.median(gray) > MIN_CONTRAST:
        return False
    total = gray.sum()
    com_y = gray.sum(axis=1) @ np.arange(SIZE) / total
    com_x = gray.sum(axis=0) @ np.arange(SIZE) / total
    return abs(com_y - CENTRE) <= 1.5 and abs(com_x - CENTRE) <= 1.5


def ink_side(gray):
    """Return -1 when the ink is darker than the paper, +1 when lighter.

    Not from one corner pixel: three cues vote, each from -1 (light ink) to +1
    (dark ink). The paper is most of the picture (where the median sits between
    the darkest and lightest spots), it surrounds the digit (the same for the
    border's median, half weight: a table around a photographed sheet fools it),
    and the ink is the stronger tail of deviations from the local background (a
    blur wide enough to follow shading but not thin strokes).
    """
    small = thumbnail(gray, 256)
    smooth = box_blur(small, 1)  # so that single-pixel specks do not set the extremes
    low, high = smooth.min(), smooth.max()
    if high - low < 1:
        return -1

    def position(level):  # -1 at the darkest spot, +1 at the lightest
        return float(np.clip(2 * (level - low) / (high - low) - 1, -1, 1))

    ring = max(1, round(0.03 * min(small.shape)))
    border = np.concatenate([small[:ring].ravel(), small[-ring:].ravel(),
                             small[:, :ring].ravel(), small[:, -ring:].ravel()])
    radius = max(1.0, max(small.shape) / 8)
    residual = small - box_blur(box_blur(small, radius), radius)
    spread = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    cut = 2 * spread + 2
    dark = np.clip(-residual - cut, 0, None).sum()
    light = np.clip(residual - cut, 0, None).sum()
    tails = np.clip(np.log2((dark + 1) / (light + 1)) / 3, -1, 1)
    score = tails + position(np.median(small)) + 0.5 * position(np.median(border))
    return -1 if score >= 0 else 1


def box_blur(array, radius):
    """Mean over a (2r+1)-square window, edges repeated (separable running sums)."""
    radius = max(1, int(round(radius)))
    for axis in (0, 1):
        padded = np.pad(array, [(radius + 1, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        sums = np.cumsum(padded, axis=axis, dtype=np.float64)
        upper = np.take(sums, np.arange(2 * radius + 1, sums.shape[axis]), axis=axis)
        lower = np.take(sums, np.arange(0, sums.shape[axis] - 2 * radius - 1), axis=axis)
        array = ((upper - lower) / (2 * radius + 1)).astype(np.float32)
    return array


def thumbnail(gray, side):
    height, width = gray.shape
    if max(height, width) <= side:
        return gray.astype(np.float32)
    factor = side / max(height, width)
    return resize(gray, (max(1, round(width * factor)), max(1, round(height * factor))), Image.BOX)


def ink_map(rgb, side):
    """Return (ink, noise): per-pixel ink strength in 0-255 levels and the paper's noise level.

    Each colour channel is compared with its own estimated background (so blue ink on
    yellow paper counts as fully as black on white) and the strongest channel wins.
    Dark ink is measured relative to the local paper brightness, which cancels
    shadows and uneven light; light ink (chalk, a white pen on a dark canvas) as a
    difference.
    """
    grey = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    maps = []
    for channel in np.moveaxis(rgb[..., :1] if grey else rgb, 2, 0):
        background = estimate_background(channel, side)
        if side < 0:
            maps.append((background - channel) / np.maximum(background, 48.0) * 255)
        else:
            maps.append(channel - background)
    ink = np.max(maps, axis=0)
    # The paper's level and noise, two ways; the quieter one is right. The median and
    # its absolute deviation ignore strong outliers on either side (a table's edge),
    # but not a fat digit covering half of a small raster; the 10th and 25th
    # percentiles (1.28 and 0.67 deviations below the mean of normal noise) are
    # paper even then.
    median = np.median(ink)
    spread = 1.4826 * np.median(np.abs(ink - median))
    low, quarter = np.percentile(ink, [10, 25])
    if (quarter - low) / 0.608 < spread:
        median, spread = quarter + 0.674 * (quarter - low) / 0.608, (quarter - low) / 0.608
    return ink - median, spread


def estimate_background(channel, side):
    """Estimate the paper under the ink: per-block percentiles, closed over neighbours, smoothed.

    Blocks where the paper is a majority give its level; a 3x3 max-then-min over the
    block grid removes strokes wider than a block (a morphological closing) without
    letting a bright area spill into a dark one next to it (e.g. paper next to a table).
    """
    height, width = channel.shape
    block = max(8, int(np.ceil(max(height, width) / 16)))
    if max(height, width) < 4 * block:  # small rasters: one flat background, the paper's side
        return np.full_like(channel, np.percentile(channel, 75 if side < 0 else 25))
    rows, cols = -(-height // block), -(-width // block)
    padded = np.pad(channel, ((0, rows * block - height), (0, cols * block - width)), mode="edge")
    blocks = padded.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    if side < 0:
        grid = morph(np.percentile(blocks, 80, axis=2), np.max, np.min)  # closing: drops dark strokes
    else:
        grid = morph(np.percentile(blocks, 20, axis=2), np.min, np.max)  # opening: drops light strokes
    # extend the grid by one block of linear extrapolation, so that shading keeps its
    # slope up to the picture's edge instead of flattening there
    grid = np.pad(grid.astype(np.float32), 1, mode="reflect", reflect_type="odd")
    grid = box_blur(grid, 1)
    full = resize(grid, ((cols + 2) * block, (rows + 2) * block), Image.BILINEAR)
    return full[block:block + height, block:block + width]


def morph(grid, first, second, radius=CLOSING):
    """A square closing (max, min) or opening (min, max) that is exact up to the grid's edge.

    Outside the grid counts as neutral for the first step (-inf for max, +inf for
    min), and the first step is evaluated `radius` cells beyond the edge, so a
    plain gradient comes back unchanged.
    """
    neutral = -np.inf if first is np.max else np.inf
    padded = np.pad(grid, 2 * radius, constant_values=neutral)
    return windows(windows(padded, first, radius), second, radius)


def windows(array, reduce, radius):
    """(2r+1)-square reduction over the positions where the window fits."""
    size = 2 * radius + 1
    rows, cols = array.shape[0] - size + 1, array.shape[1] - size + 1
    return reduce([array[dy:dy + rows, dx:dx + cols] for dy in range(size) for dx in range(size)], axis=0)


def grid_filter(grid, reduce):
    padded = np.pad(grid, 1, mode="edge")
    rows, cols = grid.shape
    stack = [padded[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3)]
    return reduce(stack, axis=0)


def normalise(ink, noise, name):
    """Map the paper to 0 and the ink's full strength to 255; raise ImageError if no ink.

    The floor (3 noise deviations) zeroes paper grain, sensor noise and JPEG ripple;
    the strength is the 90th percentile of the ink, so the stroke cores saturate as
    in MNIST (about 40% of MNIST's ink pixels are 255).
    """
    floor = 3 * noise
    candidates = ink[ink > floor + max(noise, MIN_CONTRAST)]
    if candidates.size == 0:
        raise ImageError(f"no digit found in {name}")
    strength = np.percentile(candidates, 90)
    if strength - floor < MIN_CONTRAST:
        raise ImageError(f"no digit found in {name}")
    return ((ink - floor) / (strength - floor)).clip(0, 1).astype(np.float32) * 255


def find_digit(ink, name):
    """Return (keep, box): the mask of the digit's pieces and its bounding box (top, bottom, left, right).

    Pieces are found on a coarse grid (max-pooled, so thin strokes survive). The
    digit is the heaviest piece that is not a line hugging the border (a paper
    edge, a form's cell line); nearby pieces big enough to be strokes join it,
    specks do not.
    """
    height, width = ink.shape
    strokes = ink >= INK_LEVEL * 255
    strokes = drop_border_lines(strokes)
    cell = max(1, int(np.ceil(max(height, width) / GRID)))
    occupied = pool(strokes, cell, np.max)
    mass = pool(np.where(strokes, ink, 0), cell, np.sum)
    labels = label_components(occupied)
    pieces = describe_pieces(labels, mass)
    main = choose_main(pieces, cell, height, width)
    if main is None:
        raise ImageError(f"no digit found in {name}")
    group = grow_group(main, pieces)
    chosen = np.isin(labels, [p["label"] for p in group])
    # a cell's margin keeps the anti-aliased edges, but not the pieces left out
    cells = grid_filter(chosen, np.max) & ((labels == 0) | chosen)
    keep = np.kron(cells, np.ones((cell, cell), bool))[:height, :width] & (ink > 0)
    if cell > 1:
        keep &= ~(strokes & ~np.kron(chosen, np.ones((cell, cell), bool))[:height, :width])
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    return keep, (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)


def drop_border_lines(strokes):
    """Clear thin straight lines that run along the border (form cells, ruled paper at the edge)."""
    strokes = strokes.copy()
    for axis in (0, 1):
        view = strokes if axis == 0 else strokes.T
        length, span = view.shape
        if length < 40:  # small rasters are tight crops: a bar at the edge is the digit's own
            continue
        band = max(1, int(0.12 * length))
        full = view.mean(axis=1) > 0.85
        for start, stop in runs(full):
            near_edge = stop <= band or start >= length - band
            if near_edge and stop - start <= max(2, 0.05 * length):
                view[start:stop] = False
    return strokes


def runs(flags):
    """Yield (start, stop) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return zip(edges[::2], edges[1::2])


def pool(array, cell, reduce):
    if cell == 1:
        return array
    height, width = array.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), array.dtype)
    padded[:height, :width] = array
    return reduce(padded.reshape(rows, cell, cols, cell), axis=(1, 3))


def label_components(mask):
    """Label 8-connected components of a boolean array (0 = background), with NumPy only.

    Each pixel starts with its own index and repeatedly takes the smallest label in
    its 3x3 neighbourhood; pointer jumping (label = label[label]) makes it converge
    in a few dozen rounds even on long, winding strokes.
    """
    rows, cols = mask.shape
    size = rows * cols
    labels = np.where(mask, np.arange(size).reshape(rows, cols), size)
    while True:
        padded = np.pad(labels, 1, constant_values=size)
        smallest = np.min([padded[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3)], axis=0)
        smallest = np.where(mask, smallest, size)
        flat = np.append(smallest.ravel(), size)
        for _ in range(4):
            smallest = flat[smallest]
            flat = np.append(smallest.ravel(), size)
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    _, dense = np.unique(labels, return_inverse=True)
    dense = dense.reshape(rows, cols) + 1
    return np.where(mask, dense, 0)


def describe_pieces(labels, mass):
    """Return one dict per component: label, mass, bounding box and tier.

    tier 0: clear of the border; 1: touches it; 2: runs along a third or more of a
    side, or spans nine tenths of the picture (a shadow's or a table's edge).
    """
    rows, cols = labels.shape
    pieces = []
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[order], np.arange(1, flat.max() + 2))
    for index in range(flat.max()):
        members = order[starts[index]:starts[index + 1]]
        if members.size == 0:
            continue
        r, c = np.divmod(members, cols)
        along = max((r == 0).sum() / cols, (r == rows - 1).sum() / cols,
                    (c == 0).sum() / rows, (c == cols - 1).sum() / rows)
        spans = r.max() - r.min() + 1 >= 0.9 * rows or c.max() - c.min() + 1 >= 0.9 * cols
        touches = r.min() == 0 or c.min() == 0 or r.max() == rows - 1 or c.max() == cols - 1
        pieces.append({"label": index + 1, "mass": float(mass.ravel()[members].sum()),
                       "box": (r.min(), r.max() + 1, c.min(), c.max() + 1),
                       "tier": 2 if along >= 1 / 3 or spans else int(touches)})
    return pieces


def choose_main(pieces, cell, height, width):
    """Return the piece most likely to be the digit, or None when there are only specks.

    Pieces away from the border come first, then pieces that merely touch it, last
    those that run along it (a table or the sheet's edge in a photo, a shadow): a
    tight crop's digit touches the border, but then nothing else competes with it.
    """
    heaviest = max(pieces, key=lambda p: p["mass"])
    # a candidate must be digit-sized, and not a speck next to a much bigger piece
    sized = [p for p in pieces if is_digit_sized([p], cell, height, width)
             and (p["mass"] >= 0.25 * heaviest["mass"] or extent(p["box"]) >= 0.25 * extent(heaviest["box"]))]
    clear = [p for p in sized if p["tier"] == 0]
    touching = [p for p in sized if p["tier"] == 1]
    if clear and (not touching or max(p["mass"] for p in clear) >= 0.25 * max(p["mass"] for p in touching)):
        return max(clear, key=lambda p: p["mass"])
    for candidates in (touching, sized):
        if candidates:
            return max(candidates, key=lambda p: p["mass"])
    return None


def grow_group(main, pieces):
    """Return the main piece plus the pieces near it that are big enough to be strokes."""
    group, box = [main], main["box"]
    others = [p for p in pieces if p is not main]
    changed = True
    while changed:
        changed = False
        reach = 0.3 * extent(box) + 1
        for piece in list(others):
            # edges and lines along the border never join; when the digit is clear of
            # the border (a photo or scan with margins), nothing touching the border does
            if piece["tier"] == 2 or piece["tier"] > main["tier"]:
                continue
            joined = (min(box[0], piece["box"][0]), max(box[1], piece["box"][1]),
                      min(box[2], piece["box"][2]), max(box[3], piece["box"][3]))
            inside = joined == box and piece["mass"] >= 0.01 * main["mass"]
            # a stroke the pen lifted from, not a frame or a line around the digit
            near = (box_gap(box, piece["box"]) <= reach and piece["mass"] >= 0.04 * main["mass"]
                    and extent(joined) <= 1.6 * extent(box))
            if inside or near:
                group.append(piece)
                others.remove(piece)
                box = joined
                changed = True
    return group


def extent(box):
    return max(box[1] - box[0], box[3] - box[2])


def box_gap(a, b):
    """Chebyshev distance between two boxes (0 when they touch or overlap)."""
    dy = max(0, a[0] - b[1] + 1, b[0] - a[1] + 1)
    dx = max(0, a[2] - b[3] + 1, b[2] - a[3] + 1)
    return max(dy, dx)


def is_digit_sized(group, cell, height, width):
    """A digit is more than a speck: at least 3 pixels and 1.5% of the picture's long side."""
    top = min(p["box"][0] for p in group) * cell
    bottom = max(p["box"][1] for p in group) * cell
    left = min(p["box"][2] for p in group) * cell
    right = max(p["box"][3] for p in group) * cell
    extent = max(bottom - top, right - left)
    return extent >= max(3, 0.015 * max(height, width))


def fit_box(crop):
    """Scale the cropped digit to fit 20x20 (aspect kept); return (fitted, stroke width share).

    The stroke width is measured at a working size; when it lies outside MNIST's
    range the strokes are thickened or thinned there first.
    """
    height, width = crop.shape
    factor = WORK / max(height, width)
    work_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    method = Image.BILINEAR if factor > 1 else Image.BOX
    work = resize(crop, work_size, method)
    work = work / max(np.percentile(work[work > 0.3 * work.max()], 90), 1e-6) * 255  # thin lines fade when shrunk
    work = work.clip(0, 255)
    stroke = stroke_width(work) / WORK
    low, high = STROKE_RANGE
    size = (max(1, round(width * BOX / max(height, width))), max(1, round(height * BOX / max(height, width))))
    if low <= stroke <= high:
        method = Image.BILINEAR if size[0] > width or size[1] > height else Image.LANCZOS
        return resize(crop, size, method).clip(0, 255), stroke
    target = STROKE_TARGET[0] if stroke < low else STROKE_TARGET[1]
    steps = round(abs(target - stroke) * WORK)
    rank = ImageFilter.MaxFilter if stroke < low else ImageFilter.MinFilter
    adjusted = Image.fromarray(work.astype(np.float32), "F")
    for _ in range(max(1, steps // 2)):  # a 3x3 rank filter moves each side by one pixel
        adjusted = adjusted.filter(rank(3))
    fitted = np.asarray(adjusted.resize(size, Image.LANCZOS)).clip(0, 255)
    return fitted, stroke


def stroke_width(work):
    """Mean stroke width in pixels: twice the ink area over its outline length."""
    ink = work >= 0.5 * 255
    if not ink.any():
        return 0.0
    padded = np.pad(ink, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    outline = (ink & ~inner).sum()
    return 2.0 * ink.sum() / max(outline, 1)


def centre(fitted):
    """Place the fitted digit in 28x28 so that its centre of mass lands where MNIST's do."""
    height, width = fitted.shape
    total = fitted.sum()
    if total > 0:
        rows, cols = np.arange(height), np.arange(width)
        com_y = (fitted.sum(axis=1) @ rows) / total
        com_x = (fitted.sum(axis=0) @ cols) / total
    else:
        com_y, com_x = (height - 1) / 2, (width - 1) / 2
    top = int(np.clip(round(CENTRE - com_y), 0, SIZE - height))
    left = int(np.clip(round(CENTRE - com_x), 0, SIZE - width))
    field = np.zeros((SIZE, SIZE), np.float32)
    field[top:top + height, left:left + width] = fitted
    return field

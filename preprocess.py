"""Bring a decoded picture of one digit to MNIST's own form: 28x28, light digit on dark, 0-255.

MNIST was made by cropping each binary NIST digit to its bounding box, scaling it
(anti-aliased, aspect kept) into a 20x20 box and placing that box in a 28x28 field
so that the centre of mass lands in the middle. `to_mnist` does the same to a
photo, scan or drawing (a Picture from decode.py), after the steps a real image needs:

    ink_side     is the ink darker or lighter than the paper? (from the histogram's tails)
    ink_map      ink strength per pixel, 0 on the paper, even under shadows and tinted paper
    normalise    background to 0, ink to 255; noise below the floor; no ink -> NoDigitError
    find_digit   the digit's pieces; specks, paper edges and form lines dropped (pieces.py)
    fit_box      crop, keep the stroke width in MNIST's range, scale into 20x20
    centre       place in 28x28 by the centre of mass

A digit that is already in MNIST's form (`mnist_form`) is kept as it is: refitting it
would only resample it, and the check costs microseconds, for a whole batch at once.

The steps come in two parts that number.py also uses for a whole number: ink_of (ink
side, ink map, normalise: any picture's ink) and crop_to_mnist (fit and centre one
digit's cropped ink).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter

from decode import Picture
from errors import NoDigitError
from pieces import find_digit

SIZE = 28  # MNIST's field
BOX = 20  # MNIST scaled each digit to fit this box, keeping its aspect ratio
CENTRE = 14.0  # where MNIST's centres of mass sit (row and column index; all of MNIST is within 0.5)
WORK = 96  # the box side at which stroke width is measured and adjusted
MIN_CONTRAST = 10.0  # in 0-255 levels: weaker "ink" than this is paper texture or JPEG noise
CLOSING = 2  # blocks (1/16 of the picture): strokes up to 4 blocks wide are told from the paper
STATS_PIXELS = 10_000  # global statistics (medians, percentiles) are taken on about this many pixels at most
# Stroke width as a share of the box side: about the 1st-99th percentile of MNIST's own digits.
# Strokes outside (1-pixel mouse lines, fat brushes) are brought to a typical MNIST width.
STROKE_RANGE = (0.08, 0.23)
STROKE_TARGET = (0.12, 0.19)  # for too thin, too thick (MNIST's median is 0.125)
# Ink mass over edge length (about half the stroke width, in pixels) of a 28x28 image in MNIST's
# form. MNIST's digits span 0.97-6.5; most 1-pixel pen drawings are below, a filled box above.
MNIST_STROKE = (0.95, 8.0)


@dataclass
class Trace:
    """Each step of one image's preprocessing, for pictures (explain.py); a step not reached stays None."""

    input: Optional[np.ndarray] = None  # the decoded pixels (uint8, HxW or HxWx3)
    side: Optional[int] = None  # -1: dark ink on light paper, +1: light ink on dark
    ink: Optional[np.ndarray] = None  # the normalised ink map, 0-255
    keep: Optional[np.ndarray] = None  # the pixels kept as the digit's pieces
    box: Optional[tuple] = None  # (top, bottom, left, right) of the digit in the ink map
    fitted: Optional[np.ndarray] = None  # the digit scaled into the 20x20 box
    stroke: Optional[float] = None  # its stroke width as a share of the box, before adjusting
    mnist: Optional[np.ndarray] = None  # the 28x28 model input
    rivals: float = 0.0  # ink of digit-sized pieces left out, as a share of the digit's (pieces.py)


def to_mnist(picture: Picture, trace: Optional[Trace] = None):
    """Return a 28x28 array, light digit on dark, 0-255, as MNIST made it (float32, or the
    picture's own uint8 pixels when they are already in MNIST's form).

    Args:
        picture: a Picture from decode.decode().
        trace: an optional Trace that receives each step (for --explain).
    Raises:
        NoDigitError when the picture holds no digit.
    """
    trace = Trace() if trace is None else trace
    pixels = trace.input = picture.pixels
    if pixels.shape == (SIZE, SIZE) and mnist_form(pixels[None])[0]:
        trace.mnist = pixels
        return pixels
    ink = ink_of(picture, trace)
    digit = find_digit(ink)
    if digit is None:
        raise NoDigitError(f"no digit found in {picture.name}")
    trace.keep, trace.box, trace.rivals = digit
    top, bottom, left, right = digit.box
    return crop_to_mnist(np.where(digit.keep, ink, 0)[top:bottom, left:right], trace)


def ink_of(picture: Picture, trace: Optional[Trace] = None):
    """Return the picture's normalised ink map: HxW float32, 0 on the paper, 255 at full strength.

    The ink side, the ink map and the contrast steps of to_mnist(), for any picture (one
    digit or a whole number). Raises NoDigitError when there is no ink at all.
    """
    trace = Trace() if trace is None else trace
    pixels = picture.pixels
    grey = pixels if pixels.ndim == 2 else np.asarray(Image.fromarray(pixels).convert("L"))
    side = trace.side = ink_side(smoothed(grey))
    ink, noise = ink_map(smoothed(grey if pixels.ndim == 2 else ink_channel(pixels, side)), side)
    trace.ink = normalise(ink, noise, picture.name)
    return trace.ink


def crop_to_mnist(crop, trace: Optional[Trace] = None):
    """Bring one digit's ink, cropped to its box (0-255, nothing else in it), to the 28x28 model input.

    The fit and centre steps of to_mnist(): stroke width into MNIST's range, scaled into
    the 20x20 box, placed by its centre of mass.
    """
    trace = Trace() if trace is None else trace
    trace.fitted, trace.stroke = fit_box(crop)
    trace.mnist = centre(trace.fitted)
    return trace.mnist


def mnist_form(images):
    """For a stack of 28x28 images (N x 28 x 28, 0-255), which are already in MNIST's form?

    That is: a light digit on a black background that fits the 20x20 box, has its
    centre of mass in the middle and strokes of MNIST's width, anti-aliased. Every
    MNIST digit passes; MNIST's own steps would give such an image back unchanged.
    A few vectorised passes: a few microseconds per image.
    """
    images = np.asarray(images)
    count = len(images)
    flat = images.reshape(count, SIZE * SIZE)
    pixels = flat.astype(np.float32, copy=False).reshape(count, SIZE, SIZE)
    ones, positions = np.ones(SIZE, np.float32), np.arange(SIZE, dtype=np.float32)
    rows, cols = pixels @ ones, ones @ pixels  # ink per row and per column
    total = rows @ ones
    heights = SIZE - (rows > 0).argmax(axis=1) - (rows[:, ::-1] > 0).argmax(axis=1)
    widths = SIZE - (cols > 0).argmax(axis=1) - (cols[:, ::-1] > 0).argmax(axis=1)
    # The edge length is the summed steps between neighbours (the flat rows wrap, but a digit
    # in the 20x20 box leaves the border empty); ink mass over it is about half the stroke width.
    edges = steps(flat[:, SIZE:], flat[:, :-SIZE]) + steps(flat[:, 1:], flat[:, :-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        stroke = 2 * total / edges
        return ((flat.max(axis=1) >= 2 * MIN_CONTRAST) & (heights <= BOX) & (widths <= BOX)
                & (np.abs(rows @ positions / total - CENTRE) <= 1.5)
                & (np.abs(cols @ positions / total - CENTRE) <= 1.5)
                & (stroke >= MNIST_STROKE[0]) & (stroke <= MNIST_STROKE[1]))


def steps(a, b):
    """Summed absolute differences per row of two equally shaped N x M arrays."""
    if a.dtype == np.uint8:  # stays in bytes: several times faster than in floats
        return (np.maximum(a, b) - np.minimum(a, b)).sum(axis=1, dtype=np.int32)
    return np.abs(a.astype(np.float32) - b).sum(axis=1)


def sample(array):
    """A strided view with about STATS_PIXELS pixels: global statistics need no more."""
    step = max(1, int(np.sqrt(array.size / STATS_PIXELS)))
    return array[::step, ::step]


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
    # Block means a quarter the size: a speck cannot set the extremes, and shading is smooth there.
    coarse = thumbnail(small, 64) if max(small.shape) > 64 else box_blur(small, 1)
    low, high = coarse.min(), coarse.max()
    if high - low < 1:
        return -1

    def position(level):  # -1 at the darkest spot, +1 at the lightest
        return float(np.clip(2 * (level - low) / (high - low) - 1, -1, 1))

    ring = max(1, round(0.03 * min(small.shape)))
    border = np.concatenate([small[:ring].ravel(), small[-ring:].ravel(),
                             small[:, :ring].ravel(), small[:, -ring:].ravel()])
    radius = max(1.0, max(coarse.shape) / 8)
    shading = box_blur(box_blur(coarse, radius), radius)
    residual = small - (resize(shading, small.shape[::-1], Image.BILINEAR) if coarse.shape != small.shape else shading)
    few = sample(residual)
    spread = 1.4826 * np.median(np.abs(few - np.median(few)))
    cut = 2 * spread + 2
    dark = np.clip(-residual - cut, 0, None).sum()
    light = np.clip(residual - cut, 0, None).sum()
    tails = np.clip(np.log2((dark + 1) / (light + 1)) / 3, -1, 1)
    score = tails + position(np.median(sample(small))) + 0.5 * position(np.median(border))
    return -1 if score >= 0 else 1


def box_blur(array, radius):
    """Mean over a (2r+1)-square window, edges repeated (separable running sums)."""
    radius = max(1, int(round(radius)))
    width = 2 * radius + 1
    for axis in (0, 1):  # cumsum runs along each axis in place: no transposed copies
        first, last = np.take(array, [0], axis=axis), np.take(array, [-1], axis=axis)
        padded = np.concatenate([np.repeat(first, radius + 1, axis=axis), array,
                                 np.repeat(last, radius, axis=axis)], axis=axis)
        sums = np.cumsum(padded, axis=axis, dtype=np.float32)  # float32: 0.001-level error, 2x faster
        upper = sums[width:] if axis == 0 else sums[:, width:]
        lower = sums[:-width] if axis == 0 else sums[:, :-width]
        array = ((upper - lower) / width).astype(np.float32)
    return array


def thumbnail(gray, side):
    height, width = gray.shape
    if max(height, width) <= side:
        return gray.astype(np.float32)
    factor = side / max(height, width)
    return resize(gray, (max(1, round(width * factor)), max(1, round(height * factor))), Image.BOX)


def smoothed(channel):
    """uint8 HxW -> float32; pictures of 100 px and more get a 3x3 mean first, against
    dithering, JPEG ripple and sensor noise."""
    if min(channel.shape) >= 100:
        channel = np.asarray(Image.fromarray(channel).filter(ImageFilter.BoxBlur(1)))
    return channel.astype(np.float32)


def ink_channel(rgb, side):
    """The one channel to read a colour picture's ink in: each pixel's darkest colour for dark ink.

    Whatever the colours, that is where ink and paper differ most, so blue ink on yellow
    paper counts as fully as black on white. For light ink, each pixel's lightest colour (uint8).
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    pick = np.minimum if side < 0 else np.maximum
    return pick(pick(red, green), blue)


def ink_map(channel, side):
    """Return (ink, noise): per-pixel ink strength in 0-255 levels and the paper's noise level.

    The paper under the ink is estimated locally. Dark ink is measured relative to the
    local paper brightness, which cancels shadows and uneven light; light ink (chalk,
    a white pen on a dark canvas) as a difference.
    """
    background = estimate_background(channel, side)
    if side < 0:
        ink = (background - channel) / np.maximum(background, 48.0) * 255
    else:
        ink = channel - background
    # The paper's level and noise, two ways; the quieter one is right. The median and
    # its absolute deviation ignore strong outliers on either side (a table's edge),
    # but not a fat digit covering half of a small raster; the 10th and 25th
    # percentiles (1.28 and 0.67 deviations below the mean of normal noise) are
    # paper even then.
    few = sample(ink)
    median = np.median(few)
    spread = 1.4826 * np.median(np.abs(few - median))
    low, quarter = np.percentile(few, [10, 25])
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
    step = 2 if block >= 16 else 1  # every other pixel of a block gives the same percentile, 4x faster
    blocks = padded.reshape(rows, block, cols, block)[:, ::step, :, ::step].transpose(0, 2, 1, 3)
    blocks = blocks.reshape(rows, cols, -1)
    if side < 0:
        grid = morph(block_percentile(blocks, 0.8), np.max, np.min)  # closing: drops dark strokes
    else:
        grid = morph(block_percentile(blocks, 0.2), np.min, np.max)  # opening: drops light strokes
    # extend the grid by one block of linear extrapolation, so that shading keeps its
    # slope up to the picture's edge instead of flattening there
    grid = np.pad(grid.astype(np.float32), 1, mode="reflect", reflect_type="odd")
    grid = box_blur(grid, 1)
    full = resize(grid, ((cols + 2) * block, (rows + 2) * block), Image.BILINEAR)
    return full[block:block + height, block:block + width]


def block_percentile(blocks, share):
    """The value at `share` of each block's sorted pixels (rows x cols x pixels -> rows x cols)."""
    k = int(round(share * (blocks.shape[2] - 1)))
    return np.partition(blocks, k, axis=2)[..., k]


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


def normalise(ink, noise, name):
    """Map the paper to 0 and the ink's full strength to 255; raise NoDigitError if there is no ink.

    The floor (3 noise deviations) zeroes paper grain, sensor noise and JPEG ripple;
    the strength is the 90th percentile of the ink, so the stroke cores saturate as
    in MNIST (about 40% of MNIST's ink pixels are 255).
    """
    floor = 3 * noise
    candidates = ink[ink > floor + max(noise, MIN_CONTRAST)]
    if candidates.size == 0:
        raise NoDigitError(f"no digit found in {name}")
    strength = np.percentile(candidates, 90)
    if strength - floor < MIN_CONTRAST:
        raise NoDigitError(f"no digit found in {name}")
    return ((ink - floor) / (strength - floor)).clip(0, 1).astype(np.float32) * 255


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


def resize(channel, size, method):
    """Resize a float array to size (width, height) with Pillow."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(channel, np.float32), "F").resize(size, method))

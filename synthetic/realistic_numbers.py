"""A realistic test set of whole numbers: 2-8 MNIST digits written on one line, as photos, scans and drawings.

Each number is composed from MNIST digits (traced and redrawn with a pen, as in
synthetic/realistic.py) with handwriting's irregularities: uneven gaps between the
strokes, a baseline that wanders and tilts, digits of slightly different sizes, a
slant shared by the whole number, now and then a digit broken where the pen
lifted. A share of the numbers has one touching pair: two neighbours drawn so
close that their strokes overlap, one connected piece of ink. The number is then
rendered through every condition of synthetic/realistic.py (paper photo, canvas,
thin and thick strokes, shadows, light on dark...) and on lined paper, where the
digits sit on a ruled line. Deterministic given the seed.

    from synthetic.realistic_numbers import generate_numbers
    from synthetic.realistic import load_digits
    for sample in generate_numbers(*load_digits(), count=10):
        sample.condition, sample.image, sample.text, sample.touching
"""

from typing import List, NamedTuple, Optional

import numpy as np
from PIL import Image

from synthetic.realistic import (CONDITIONS, Digit, add_noise, aspect, dark_ink, file_bytes, jpeg, lighting, paint,
                                 pen_mask, pen_width, pencil_mask, place, sizes, skeleton, to_image)

LENGTHS = (2, 8)  # digits per number, both included
TOUCHING_SHARE = 1 / 3  # numbers with one touching pair
BROKEN_SHARE = 0.2  # numbers with one digit broken where the pen lifted
MAX_WIDTH = 1600  # pixels: a long number's scene is scaled down to this width, as a phone photo would be
MAX_ASPECT = 4.0  # a scene is at most this much wider than tall: a longer number is written smaller in it
GAP = (0.06, 0.5)  # between the strokes of neighbours (not their boxes), in digit heights
OVERLAP = (0.0, 0.08)  # of a touching pair's strokes, in digit heights (and at least a pixel)
SLANT = (-0.15, 0.3)  # the number's shear (x shift per unit of height); forward slant is positive
WIDEST_PEN = 0.3  # in digit heights: what a condition's pen may add to the drawn width
ROOM = (1.25, 2.0)  # the scene's width over the number's widest drawing: a margin on both sides


class NumberSample(NamedTuple):
    condition: str
    image: Image.Image
    text: str  # the digits, left to right
    touching: Optional[int]  # the left digit of the touching pair, None when all are apart

    def file(self):
        return file_bytes(self.image)


class Layout(NamedTuple):
    """One digit's place in the number, in units of the number's digit height."""

    size: float  # its height
    drop: float  # how far its bottom sits below the line's
    slant: float  # its shear
    gap: float  # to the strokes before it (negative: they overlap), in digit heights


class Number:
    """Digits on one line, drawn like a Digit (pen, pencil, canvas) for the conditions of synthetic/realistic.py."""

    def __init__(self, digits: List[Digit], layouts: List[Layout], touching: Optional[int], room=1.25):
        self.digits, self.layouts, self.touching, self.room = digits, layouts, touching, room
        self.touched = None  # after drawing: whether the touching pair's strokes met
        self.fit = 1.0  # set by canvas(): the share of the asked-for size at which the number fits its scene
        self.max_aspect = MAX_ASPECT  # a photo-shaped scene (1.4, say) has the number small in it
        # An upper bound of the drawn width in digit heights: boxes, slant, gaps and a wide pen.
        widths = [(aspect(d.thin) + abs(lay.slant)) * lay.size + WIDEST_PEN for d, lay in zip(digits, layouts)]
        self.aspect = sum(widths) + sum(max(lay.gap, 0) for lay in layouts[1:])

    def pen(self, height, width_px):
        """The number's coverage, its digits `height` pixels tall (less, to fit the scene) with a round pen."""
        height, width_px = height * self.fit, max(1.0, width_px * self.fit)
        return self.compose([shear(pen_mask(d.thin, lay.size * height, width_px), lay.slant)
                             for d, lay in zip(self.digits, self.layouts)], height)

    def pencil(self, height):
        height *= self.fit
        return self.compose([shear(pencil_mask(d.image, lay.size * height), lay.slant)
                             for d, lay in zip(self.digits, self.layouts)], height)

    def canvas(self, height, width):
        """The scene for a number with digits about `height` tall: wide enough for it, up to
        MAX_ASPECT (then the number is drawn smaller) and MAX_WIDTH pixels (then all is scaled)."""
        wanted = self.room * self.aspect * height  # a condition draws digits up to 0.85 of its height
        wide = min(max(width, wanted), self.max_aspect * height)
        self.fit = min(1.0, wide / wanted)
        factor = min(1.0, MAX_WIDTH / wide)
        return max(1, round(height * factor)), max(1, round(wide * factor))

    def compose(self, masks, height):
        """Put the drawn digits side by side, each at its drop and gap; return the number's coverage."""
        rows, columns, places = self.layout(masks, height)
        out = np.zeros((rows, columns), np.float32)
        for mask, (y, x) in zip(masks, places):
            window = out[y:y + mask.shape[0], x:x + mask.shape[1]]
            np.maximum(window, mask, out=window)
        return out

    def digit_layers(self, height, width_px):
        """Each digit's coverage alone, placed as pen() places it (to check which digits touch)."""
        masks = [shear(pen_mask(d.thin, lay.size * height, width_px), lay.slant)
                 for d, lay in zip(self.digits, self.layouts)]
        rows, columns, places = self.layout(masks, height)
        layers = []
        for mask, (y, x) in zip(masks, places):
            layer = np.zeros((rows, columns), np.float32)
            layer[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
            layers.append(layer)
        return layers

    def layout(self, masks, height):
        """(rows, columns, [(top, left) of each mask]): the digits at their drops and gaps."""
        bottoms = [round(lay.drop * height) for lay in self.layouts]
        top = min(b - m.shape[0] for b, m in zip(bottoms, masks))
        rows = max(bottoms) - top
        spans = [row_spans(m, b - m.shape[0] - top, rows) for m, b in zip(masks, bottoms)]
        lefts = [0]
        for i in range(1, len(masks)):
            gap = self.layouts[i].gap * height
            if i - 1 == self.touching:  # strokes overlap the left neighbour's by a pixel or more
                touch = left_for_gap(spans[i], spans[i - 1:i], lefts[i - 1:i], -max(1, round(-gap)))
                apart = left_for_gap(spans[i], spans[:i - 1], lefts[:i - 1], 2)
                self.touched = touch >= apart
                lefts.append(max(touch, apart))
            else:
                lefts.append(left_for_gap(spans[i], spans[:i], lefts, max(2, round(gap))))
        start = min(lefts)
        columns = max(left + m.shape[1] for left, m in zip(lefts, masks)) - start
        return rows, columns, [(b - top - m.shape[0], left - start) for m, left, b in zip(masks, lefts, bottoms)]


def shear(mask, slant):
    """The mask slanted: its top shifted right by slant x height relative to its bottom."""
    height, width = mask.shape
    shift = slant * (height - 1)
    out_width = width + int(np.ceil(abs(shift)))
    image = Image.fromarray(np.ascontiguousarray(mask, np.float32), "F").transform(
        (out_width, height), Image.AFFINE, (1, slant, -max(0.0, shift), 0, 1, 0), Image.BILINEAR)
    return np.asarray(image)


def row_spans(mask, top, rows):
    """(first, last) column with ink (coverage over 0.5) per row of the number's frame, each widened by
    the rows above and below, so that strokes one row apart count as touching (8-connected);
    +inf / -inf where a row has none."""
    ink = mask > 0.5
    inked = ink.any(axis=1)
    first, last = np.full(rows + 2, np.inf), np.full(rows + 2, -np.inf)
    first[1 + top:1 + top + len(ink)][inked] = ink.argmax(axis=1)[inked]
    last[1 + top:1 + top + len(ink)][inked] = (ink.shape[1] - 1 - ink[:, ::-1].argmax(axis=1))[inked]
    first = np.minimum(np.minimum(first[:-2], first[1:-1]), first[2:])
    last = np.maximum(np.maximum(last[:-2], last[1:-1]), last[2:])
    return first, last


def left_for_gap(span, others, lefts, gap):
    """The smallest left column for a digit with these row spans that leaves at least `gap` empty
    columns (negative: an overlap) to each of the others, placed at `lefts`, in every row."""
    first, _ = span
    best = -np.inf
    for (_, last), left in zip(others, lefts):
        both = np.isfinite(first) & np.isfinite(last)
        if both.any():
            best = max(best, float(np.max(left + last[both] - first[both])) + 1 + gap)
    return int(np.ceil(best)) if np.isfinite(best) else -(10 ** 6)


def break_stroke(thin, rng):
    """The skeleton with a short gap cut into it, where the pen lifted (a 5's bar, a broken 4)."""
    points = np.argwhere(thin)
    y, x = points[rng.integers(len(points))]
    radius = rng.uniform(5, 9)  # of the skeleton's 112 px: a gap of about a tenth of the digit
    rows, cols = np.ogrid[:thin.shape[0], :thin.shape[1]]
    return thin & ((rows - y) ** 2 + (cols - x) ** 2 > radius ** 2)


def compose_number(images, labels, rng, touching=None, length=None):
    """Draw a number's digits and layout from the pool (images, labels) with rng.

    Returns (Number, its text); `length` digits, or 2-8 (LENGTHS) drawn with rng.
    """
    count = int(rng.integers(LENGTHS[0], LENGTHS[1] + 1)) if length is None else length
    picks = rng.choice(len(images), size=count, replace=False)
    digits = [Digit(images[i], skeleton(images[i])[1]) for i in picks]
    if rng.random() < BROKEN_SHARE:
        k = int(rng.integers(count))
        digits[k] = Digit(digits[k].image, break_stroke(digits[k].thin, rng))
    slant = rng.uniform(*SLANT)
    tilt = rng.uniform(-0.04, 0.04)  # the line's slope, per digit height along it
    layouts = []
    for k in range(count):
        layouts.append(Layout(size=rng.uniform(0.88, 1.1), drop=rng.normal(0, 0.04) + tilt * k * 0.8,
                              slant=slant + rng.uniform(-0.06, 0.06), gap=rng.uniform(*GAP)))
    pair = int(rng.integers(count - 1)) if touching else None
    if pair is not None:
        layouts[pair + 1] = layouts[pair + 1]._replace(gap=-rng.uniform(*OVERLAP))
    text = "".join(str(int(labels[i])) for i in picks)
    return Number(digits, layouts, pair, room=rng.uniform(*ROOM)), text


def ruled_paper(shape, rng):
    """A number written on lined paper: it sits on one ruled line, others run above and below it."""
    height, width = shape.canvas(*sizes(rng, 150, 900))
    digit_h = rng.uniform(0.25, 0.45) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    coverage = place(mask, (height, width), rng, margin=0.1)
    height, width = coverage.shape
    rows = np.flatnonzero(coverage.max(axis=1) > 0.5)
    baseline = rows[-1] - rng.uniform(0.0, 0.12) * digit_h * shape.fit  # strokes reach down to it or across
    drawn = digit_h * shape.fit  # the digits' height as drawn
    spacing = rng.uniform(1.3, 1.8) * drawn
    thickness = max(1.0, rng.uniform(0.02, 0.05) * drawn)
    tilt = rng.uniform(-0.02, 0.02)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    distance = (y - baseline - tilt * (x - width / 2)) % spacing  # to the nearest line below
    distance = np.minimum(distance, spacing - distance)
    lines = np.clip(thickness / 2 + 0.5 - distance, 0, 1) * rng.uniform(0.5, 0.9)
    paper = rng.uniform(225, 252) * np.ones(3)
    rule = np.array([(120, 160, 220), (150, 150, 150), (90, 130, 200)][rng.integers(3)], np.float32)
    rgb = paint(lines, paper, rule)
    ink = dark_ink(rng) if rng.random() < 0.6 else np.array((25, 45, 150), np.float32)
    rgb = rgb * (1 - coverage[..., None]) + ink * coverage[..., None]
    rgb = rgb * lighting(height, width, rng, rng.uniform(0.1, 0.4))[..., None]
    return jpeg(to_image(add_noise(rgb, rng, 3)), rng.uniform(60, 92))


# Every condition a single digit is rendered in, and lined paper, which only a number meets.
NUMBER_CONDITIONS = {**CONDITIONS, "lined paper": ruled_paper}


def generate_numbers(images, labels, count, conditions=None, seed=0, touching_share=TOUCHING_SHARE):
    """Yield NumberSamples: `count` numbers under each condition.

    Args:
        images, labels: the MNIST digits to compose from (N x 28 x 28 uint8, N).
        count: numbers per condition.
        conditions: names from NUMBER_CONDITIONS (default: all).
        seed: the generator is deterministic given this.
        touching_share: the share of numbers with one touching pair.
    """
    names = list(NUMBER_CONDITIONS) if conditions is None else list(conditions)
    for c, name in enumerate(names):
        for i in range(count):
            for attempt in range(20):  # a touching pair kept apart by a third digit is drawn again
                rng = np.random.default_rng([seed, c, i, attempt])
                number, text = compose_number(images, labels, rng, touching=rng.random() < touching_share)
                image = NUMBER_CONDITIONS[name](number, rng)
                if number.touched is not False:
                    break
            yield NumberSample(name, image, text, number.touching)

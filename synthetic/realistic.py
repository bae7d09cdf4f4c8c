"""A realistic test set: MNIST test digits rendered as photos, scans and drawings.

Each digit is traced to its centre line (a skeleton) and redrawn with a pen of a
chosen width onto paper of a chosen colour, size and lighting, then blurred,
noised, JPEG-compressed, made transparent or shrunk, one condition at a time.
Everything is deterministic given the seed.

    from synthetic.realistic import CONDITIONS, load_digits, generate
    for sample in generate(*load_digits(), per_condition=10):
        sample.condition, sample.image, sample.label   # image: a PIL image

A condition draws a shape: a Digit here, a whole number in synthetic/realistic_numbers.py.
"""

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FIXTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "mnist_small.npz"  # real digits, committed
SUPERSAMPLE = 2  # pens are drawn at twice the size and averaged down: anti-aliased strokes


class Sample(NamedTuple):
    condition: str
    image: Image.Image
    label: int

    def file(self):
        return file_bytes(self.image)


def file_bytes(image):
    """A rendered image as the bytes of its file (a JPEG as rendered, anything else as PNG): what a
    reader gets from a camera or a scanner, decoded from scratch at whatever size it needs."""
    if image.format == "JPEG" and getattr(image, "fp", None) is not None:  # not loaded yet: the JPEG's
        return image.fp.getvalue()  # own bytes, EXIF tag and all
    buffer = io.BytesIO()
    image.save(buffer, "PNG", exif=image.getexif())
    return buffer.getvalue()


def load_digits(path=FIXTURE, split="test"):
    """Return (images, labels) of one split of a Keras-layout MNIST .npz."""
    with np.load(path) as data:
        return data[f"x_{split}"], data[f"y_{split}"]


# ----------------------------------------------------------------------------- strokes

def skeleton(digit):
    """Return the centre-line pixels (N x 2 array of y, x in 0-1 digit-box units) of a 28x28 digit."""
    rows, cols = np.nonzero(digit > 0)
    crop = digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32)
    scale = 112 / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = np.asarray(Image.fromarray(crop, "F").resize(size, Image.BICUBIC)) > 100
    thin = zhang_suen(np.pad(big, 2))[2:-2, 2:-2]
    points = np.argwhere(thin).astype(np.float32) / 112
    return points, thin


def zhang_suen(image):
    """Thin a boolean image to 1-pixel lines (Zhang & Suen 1984), vectorised."""
    image = image.copy()
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(image, 1)
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            count = sum(x.astype(np.int8) for x in n)
            transitions = sum((~n[i] & n[(i + 1) % 8]).astype(np.int8) for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if step == 0:
                keep = (p2 & p4 & p6) | (p4 & p6 & p8)
            else:
                keep = (p2 & p4 & p8) | (p2 & p6 & p8)
            remove = image & (count >= 2) & (count <= 6) & (transitions == 1) & ~keep
            if remove.any():
                image &= ~remove
                changed = True
        if not changed:
            return image


def segments(thin):
    """Pairs of neighbouring skeleton pixels, as the line pieces a pen would draw."""
    pairs = []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = thin & np.roll(np.roll(thin, -dy, 0), -dx, 1)
        for y, x in np.argwhere(a):
            if 0 <= y + dy < thin.shape[0] and 0 <= x + dx < thin.shape[1]:
                pairs.append((y, x, y + dy, x + dx))
    return np.array(pairs, np.float32) / 112


def pen_mask(thin, height, width_px, stretch=1.0):
    """Return a float 0-1 coverage mask of the digit drawn with a round pen, `height` pixels tall
    and `stretch` times as wide as it was written (the pen's own width stays)."""
    points = np.argwhere(thin).astype(np.float32) / 112 * [1, stretch]
    pieces = segments(thin) * [1, stretch, 1, stretch]
    extent = points.max(axis=0) - points.min(axis=0)
    scale = height / max(extent[0], 1e-3) * SUPERSAMPLE
    pen = max(1, round(width_px * SUPERSAMPLE))
    margin = pen + 2
    origin = points.min(axis=0)
    size = (int(extent[1] * scale) + 2 * margin + 1, int(extent[0] * scale) + 2 * margin + 1)
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for y0, x0, y1, x1 in pieces:
        a = ((x0 - origin[1]) * scale + margin, (y0 - origin[0]) * scale + margin)
        b = ((x1 - origin[1]) * scale + margin, (y1 - origin[0]) * scale + margin)
        draw.line([a, b], fill=255, width=pen)
    if pen > 2:  # round the joints
        r = pen / 2
        for y, x in points:
            cx, cy = (x - origin[1]) * scale + margin, (y - origin[0]) * scale + margin
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    small = canvas.resize((max(1, size[0] // SUPERSAMPLE), max(1, size[1] // SUPERSAMPLE)), Image.BOX)
    return np.asarray(small, np.float32) / 255


def pencil_mask(digit, height):
    """The MNIST digit's own grey profile, enlarged smoothly (a soft pencil scan)."""
    rows, cols = np.nonzero(digit > 0)
    crop = digit[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(np.float32)
    scale = height / crop.shape[0]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(height)))
    big = np.asarray(Image.fromarray(np.pad(crop, 1), "F").resize(
        (size[0] + round(2 * scale), size[1] + round(2 * scale)), Image.BICUBIC))
    return (big / 255).clip(0, 1)


class Digit(NamedTuple):
    """One MNIST digit as a condition draws it (a whole number offers the same three methods)."""

    image: np.ndarray  # 28x28 uint8
    thin: np.ndarray  # its skeleton (skeleton(image)[1])

    def pen(self, height, width_px, stretch=1.0):
        """Coverage (0-1) of the digit drawn `height` pixels tall with a round pen, `stretch` times as wide."""
        return pen_mask(self.thin, height, width_px, stretch)

    def pencil(self, height):
        """Coverage of the digit's own grey profile, `height` pixels tall."""
        return pencil_mask(self.image, height)

    def canvas(self, height, width):
        """The scene's size for a digit `height`-ish tall: a digit fits any scene as it is."""
        return height, width

    @property
    def fit(self):
        """The share of the asked-for height it is drawn at (a long number may be drawn smaller)."""
        return 1.0


# ----------------------------------------------------------------------------- scenes

def place(mask, canvas_hw, rng, where="anywhere", margin=0.05):
    """Return a canvas-sized coverage array with `mask` pasted at a random position."""
    height, width = canvas_hw
    mh, mw = mask.shape
    out = np.zeros((height, width), np.float32)
    if mh > height or mw > width:  # a digit drawn to the edge of a 28x28 raster loses its pen margin
        mask = mask[:height, :width]
        mh, mw = mask.shape
    pad_y, pad_x = int(margin * height), int(margin * width)
    if where == "corner":
        top = rng.choice([pad_y, height - mh - pad_y])
        left = rng.choice([pad_x, width - mw - pad_x])
    else:
        top = rng.integers(min(pad_y, height - mh), max(height - mh - pad_y, min(pad_y, height - mh)) + 1)
        left = rng.integers(min(pad_x, width - mw), max(width - mw - pad_x, min(pad_x, width - mw)) + 1)
    top, left = int(np.clip(top, 0, height - mh)), int(np.clip(left, 0, width - mw))
    out[top:top + mh, left:left + mw] = mask
    return out


def paint(coverage, paper, ink):
    """Blend ink onto paper by coverage: HxWx3 float, 0-255."""
    paper = np.broadcast_to(np.asarray(paper, np.float32), coverage.shape + (3,))
    return paper * (1 - coverage[..., None]) + np.asarray(ink, np.float32) * coverage[..., None]


def to_image(rgb):
    return Image.fromarray(np.asarray(rgb).clip(0, 255).round().astype(np.uint8))


def jpeg(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(quality))
    return Image.open(io.BytesIO(buffer.getvalue()))


def blur(image, radius):
    return image.filter(ImageFilter.GaussianBlur(radius))


def add_noise(rgb, rng, sigma):
    return rgb + rng.normal(0, sigma, rgb.shape[:2])[..., None]


def lighting(height, width, rng, depth):
    """A multiplicative light field: a gradient, vignetting and a soft shadow edge."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height - 0.5, x / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1 - depth * 0.5 * (1 + np.cos(angle) * x * 2 + np.sin(angle) * y * 2) / 2
    vignette = 1 - 0.25 * depth * (x ** 2 + y ** 2) * 2
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.15, 0.35)
    distance = np.cos(angle) * x + np.sin(angle) * y - offset
    shadow = 1 - depth * 0.6 * (1 / (1 + np.exp(-distance / 0.03)))
    return gradient * vignette * shadow


def pen_width(rng, height, low=0.07, high=0.14):
    return max(1.0, rng.uniform(low, high) * height)


def sizes(rng, low=100, high=1000):
    side = int(rng.integers(low, high + 1))
    aspect = rng.uniform(0.7, 1.4)
    return int(side), int(np.clip(side * aspect, low, high))


def dark_paper(rng):
    return rng.uniform(215, 255) * np.ones(3) - rng.uniform(0, 10, 3)


def dark_ink(rng):
    return rng.uniform(0, 70) * np.ones(3) + rng.uniform(0, 15, 3)


# Each renderer takes (shape, rng), shape a Digit or a whole number, and returns a PIL image.

def dark_on_light(shape, rng):
    height, width = shape.canvas(*sizes(rng))
    digit_h = rng.uniform(0.3, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    return to_image(paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng)))


def tiny_in_corner(shape, rng):
    width, height = int(rng.integers(600, 1001)), int(rng.integers(200, 451))
    digit_h = rng.uniform(24, 48)
    mask = shape.pen(digit_h, pen_width(rng, digit_h, 0.08, 0.15))
    return to_image(paint(place(mask, (height, width), rng, "corner", 0.03), dark_paper(rng), dark_ink(rng)))


def thin_strokes(shape, rng):
    height, width = shape.canvas(*sizes(rng, 120, 600))
    digit_h = rng.uniform(0.5, 0.85) * min(height, width)
    mask = shape.pen(digit_h, 1)  # a 1-pixel mouse line
    return to_image(paint(place(mask, (height, width), rng), (255, 255, 255), (0, 0, 0)))


def thick_strokes(shape, rng):
    height, width = shape.canvas(*sizes(rng, 120, 800))
    digit_h = rng.uniform(0.45, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h, 0.18, 0.26))  # a fat brush
    return to_image(paint(place(mask, (height, width), rng), (255, 255, 255), dark_ink(rng)))


def blurred(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 700))
    digit_h = rng.uniform(0.35, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    image = to_image(paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng)))
    return blur(image, rng.uniform(0.02, 0.05) * digit_h * shape.fit)  # relative to the digits as drawn


def noisy(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 700))
    digit_h = rng.uniform(0.35, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    rgb = add_noise(paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng)), rng, rng.uniform(10, 30))
    specks = rng.random(rgb.shape[:2]) < 0.002
    rgb[specks] = rng.choice([0.0, 255.0], size=(specks.sum(), 1))
    return to_image(rgb)


def uneven_light(shape, rng):
    height, width = shape.canvas(*sizes(rng, 150, 1000))
    digit_h = rng.uniform(0.35, 0.7) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    rgb = paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng))
    rgb = rgb * lighting(*rgb.shape[:2], rng, rng.uniform(0.3, 0.6))[..., None]
    return to_image(add_noise(rgb, rng, 3))


def jpeg_artefacts(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 800))
    digit_h = rng.uniform(0.35, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    image = to_image(paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng)))
    return jpeg(image, rng.uniform(5, 25))


INKS = [(20, 40, 160), (30, 60, 200), (170, 20, 30), (20, 110, 40), (90, 30, 130), (10, 10, 60)]
PAPERS = [(250, 240, 180), (255, 220, 225), (210, 230, 250), (215, 190, 150), (235, 250, 215), (240, 240, 240)]


def coloured_ink(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 800))
    digit_h = rng.uniform(0.35, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    ink, paper = INKS[rng.integers(len(INKS))], PAPERS[rng.integers(len(PAPERS))]
    rgb = paint(place(mask, (height, width), rng), paper, ink)
    rgb = rgb * lighting(*rgb.shape[:2], rng, 0.15)[..., None]
    return jpeg(to_image(add_noise(rgb, rng, 2)), 85)


def transparent(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 600))
    digit_h = rng.uniform(0.4, 0.8) * min(height, width)
    alpha = place(shape.pen(digit_h, pen_width(rng, digit_h)), (height, width), rng)
    height, width = alpha.shape
    ink = np.array([(0, 0, 0), (255, 255, 255), (20, 40, 200), (200, 30, 30)][rng.integers(4)], np.float32)
    hidden = rng.integers(4)  # what the transparent pixels hold: nothing anyone can see
    if hidden == 0:
        under = np.broadcast_to(ink, (height, width, 3))  # the ink colour itself, as canvases export
    elif hidden == 1:
        under = np.broadcast_to(255 - ink, (height, width, 3))
    elif hidden == 2:
        under = np.zeros((height, width, 3), np.float32)
    else:
        under = rng.uniform(0, 255, (height, width, 3))
    rgb = np.where(alpha[..., None] > 0, ink, under)
    rgba = np.concatenate([rgb, alpha[..., None] * 255], axis=2)
    return Image.fromarray(rgba.round().astype(np.uint8), "RGBA")


def small_raster(shape, rng):
    """A digit from another data set: 12-20 px rasters filled edge to edge, or a 28x28 paint drawing."""
    if rng.random() < 0.5:
        side = int(rng.integers(12, 21))
        height, width = shape.canvas(side, side)
        mask = shape.pencil(side * 4)
        image = Image.fromarray((mask * 255).astype(np.float32), "F")
        scale = min(height / mask.shape[0], width / mask.shape[1])
        image = image.resize((max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale))), Image.BOX)
        coverage = np.zeros((height, width), np.float32)
        small = np.asarray(image) / 255
        top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
        coverage[top:top + small.shape[0], left:left + small.shape[1]] = small
        polarity = rng.integers(2)
        rgb = paint(coverage, (255,) * 3, (0,) * 3) if polarity else paint(coverage, (0,) * 3, (255,) * 3)
        return to_image(rgb).convert("L")
    digit_h = rng.uniform(18, 26)
    scene = shape.canvas(28, 28)
    mask = shape.pen(digit_h, rng.choice([1, 2, 2, 3]))
    return to_image(paint(place(mask, scene, rng, margin=0.0), (255,) * 3, (0,) * 3)).convert("L")


def light_on_dark(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 800))
    digit_h = rng.uniform(0.35, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h, 0.08, 0.16))
    board = [(30, 50, 40), (20, 20, 20), (0, 0, 0), (40, 45, 60)][rng.integers(4)]
    chalk = rng.uniform(190, 255) * np.ones(3)
    rgb = paint(place(mask, (height, width), rng), board, chalk)
    return to_image(add_noise(rgb, rng, rng.uniform(0, 8)))


def pencil_scan(shape, rng):
    height, width = shape.canvas(*sizes(rng, 100, 800))
    digit_h = rng.uniform(0.3, 0.7) * min(height, width)
    mask = shape.pencil(digit_h)
    paper = rng.uniform(200, 240)
    lead = paper - rng.uniform(70, 140)
    rgb = paint(place(mask, (height, width), rng), (paper,) * 3, (lead,) * 3)
    return to_image(add_noise(rgb, rng, rng.uniform(2, 6))).convert("L")


def photo_of_paper(shape, rng):
    """A phone photo: the sheet does not fill the frame, the table shows along an edge or two."""
    height, width = shape.canvas(*sizes(rng, 300, 1000))
    digit_h = rng.uniform(0.3, 0.55) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    rgb = paint(place(mask, (height, width), rng, margin=0.25), dark_paper(rng), dark_ink(rng))
    height, width = rgb.shape[:2]
    table = np.array([(60, 40, 30), (90, 90, 95), (25, 25, 25), (120, 80, 50)][rng.integers(4)], np.float32)
    y, x = np.mgrid[0:height, 0:width]
    tilt = rng.uniform(-0.05, 0.05)
    edges = rng.choice(4, size=rng.integers(1, 3), replace=False)
    off = np.zeros((height, width), bool)
    for edge in edges:
        depth = rng.uniform(0.03, 0.12)
        if edge == 0:
            off |= y < depth * height + tilt * (x - width / 2)
        elif edge == 1:
            off |= y > (1 - depth) * height + tilt * (x - width / 2)
        elif edge == 2:
            off |= x < depth * width + tilt * (y - height / 2)
        else:
            off |= x > (1 - depth) * width + tilt * (y - height / 2)
    rgb[off] = table
    rgb = rgb * lighting(height, width, rng, 0.3)[..., None]
    return jpeg(blur(to_image(add_noise(rgb, rng, 4)), 0.8), 70)


def exif_rotated(shape, rng):
    """A phone photo stored sideways, with an EXIF tag saying how to turn it upright."""
    upright = dark_on_light(shape, rng)
    orientation = int(rng.choice([3, 6, 8]))
    # orientation 6 means "rotate 90 clockwise to view": store the pixels turned the other way
    stored = upright.transpose({3: Image.ROTATE_180, 6: Image.ROTATE_90, 8: Image.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=90, exif=exif)
    return Image.open(io.BytesIO(buffer.getvalue()))


def form_cell(shape, rng):
    """A digit cropped from a scanned form: the cell's ruled lines show along the edges."""
    height, width = shape.canvas(*sizes(rng, 80, 300))
    digit_h = rng.uniform(0.5, 0.75) * min(height, width)
    mask = shape.pen(digit_h, pen_width(rng, digit_h))
    rgb = paint(place(mask, (height, width), rng, margin=0.12), (245,) * 3, dark_ink(rng))
    height, width = rgb.shape[:2]
    line = max(1, round(rng.uniform(0.005, 0.02) * min(height, width)))
    for edge in rng.choice(4, size=rng.integers(1, 5), replace=False):
        at = int(rng.integers(0, 3))
        if edge == 0:
            rgb[at:at + line] = 60
        elif edge == 1:
            rgb[height - at - line:height - at] = 60
        elif edge == 2:
            rgb[:, at:at + line] = 60
        else:
            rgb[:, width - at - line:width - at] = 60
    return to_image(add_noise(rgb, rng, 3)).convert("L")


CONDITIONS = {
    "dark on light, 100-1000 px, off-centre": dark_on_light,
    "tiny digit in a corner of a wide canvas": tiny_in_corner,
    "thin 1-px mouse strokes": thin_strokes,
    "thick brush strokes": thick_strokes,
    "blur": blurred,
    "noise and specks": noisy,
    "uneven light and shadow": uneven_light,
    "strong JPEG artefacts": jpeg_artefacts,
    "coloured ink on tinted paper": coloured_ink,
    "transparent background (RGBA)": transparent,
    "small rasters (12-28 px)": small_raster,
    "light ink on dark board": light_on_dark,
    "soft pencil scan": pencil_scan,
    "photo with table edges": photo_of_paper,
    "EXIF-rotated phone photo": exif_rotated,
    "form cell with ruled lines": form_cell,
}


def stretched_raster(digit, rng):
    """A binarised 16x16 raster with the digit stretched to fill it edge to edge, both ways, as
    some data sets store their digits (Semeion, USPS-like), maybe saved enlarged with hard edges."""
    mask = digit.pencil(64)
    threshold = rng.uniform(0.35, 0.6)
    rows, cols = np.nonzero(mask > threshold)
    box = Image.fromarray(mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]).resize((16, 16), Image.BOX)
    ink = np.asarray(box) > threshold
    image = Image.fromarray(np.where(ink, 0, 255).astype(np.uint8) if rng.random() < 0.5 else ink.astype(np.uint8) * 255)
    side = 16 * int(rng.choice([1, 1, 2, 4, 8]))
    return image.resize((side, side), Image.NEAREST)


def narrow(digit, rng):
    """A digit written very narrow: squeezed to 30-55% of its width, the pen as wide as ever."""
    return squeezed(digit, rng, rng.uniform(0.3, 0.55))


def wide(digit, rng):
    """A digit written very wide: 1.7-2.5 times its width."""
    return squeezed(digit, rng, rng.uniform(1.7, 2.5))


def squeezed(digit, rng, stretch):
    """The digit drawn `stretch` times as wide on light paper, the scene wide enough for it."""
    height, width = sizes(rng, 150, 800)
    width = max(width, height)  # room for a wide one
    digit_h = rng.uniform(0.4, 0.7) * height
    digit_h = min(digit_h, 0.8 * width / max(1.0, stretch * aspect(digit.thin)))
    mask = digit.pen(digit_h, pen_width(rng, digit_h), stretch)
    return to_image(paint(place(mask, (height, width), rng), dark_paper(rng), dark_ink(rng)))


def aspect(thin):
    """Width over height of a skeleton (what pen_mask scales to the height asked for)."""
    points = np.argwhere(thin)
    extent = points.max(axis=0) - points.min(axis=0)
    return float(extent[1]) / max(float(extent[0]), 1.0)


# Digits of shapes the network finds hard, drawn by a condition of their own. Single digits only:
# they are not part of CONDITIONS, which numbers and the not-a-digit data are also drawn in.
SHAPES = {
    "binarised 16x16, stretched to its box": stretched_raster,
    "very narrow (30-55% of its width)": narrow,
    "very wide (1.7-2.5x its width)": wide,
}
RENDERERS = {**CONDITIONS, **SHAPES}  # what generate() draws by name


def generate(images, labels, per_condition=None, conditions=None, seed=0):
    """Yield Samples: each of the first `per_condition` digits under each condition.

    Args:
        images, labels: MNIST arrays (N x 28 x 28 uint8, N).
        per_condition: how many digits per condition (default: all).
        conditions: names from CONDITIONS or SHAPES (default: all of CONDITIONS).
        seed: the generator is deterministic given this.
    """
    count = len(images) if per_condition is None else min(per_condition, len(images))
    names = list(CONDITIONS) if conditions is None else list(conditions)
    traced = {}
    for c, name in enumerate(names):
        render = RENDERERS[name]
        for i in range(count):
            # spread each condition over different digits when only a few are used
            index = (i * len(names) + c) % len(images) if per_condition is not None else i
            if index not in traced:
                traced[index] = Digit(images[index], skeleton(images[index])[1])
            rng = np.random.default_rng([seed, c, index])
            yield Sample(name, render(traced[index], rng), int(labels[index]))

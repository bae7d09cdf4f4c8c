"""Images that are not one digit, to measure predict()'s "not a digit" flag (deterministic, seeded).

    from synthetic.nondigits import KINDS, generate
    for sample in generate("letters", 100, part="held-out"):
        sample.kind, sample.name, sample.image       # image: a PIL image

Kinds:
    letters         Latin letters, half printed in handwriting-like fonts from Debian packages
                    (fonts-*), half drawn stroke by stroke from Hershey single-stroke fonts by a
                    wobbly pen; none that reads as a digit when written alone (DIGIT_LIKE)
    symbols         + = % # @ & ? ! arrows, hearts, stars... the same two ways
    shapes          strokes, shapes, scribbles and doodles, drawn with a wobbly hand
    several digits  2-3 MNIST digits written as a number (synthetic/realistic_numbers.py)
    photos          natural and object photos, crops of scikit-image's sample images

Letters, symbols, shapes and several digits are drawn through synthetic/realistic.py's
conditions (paper, pens, lighting, blur, noise, JPEG...), one condition per image in
turn, exactly as the realistic digits are. The two parts never share a font, a photo,
an MNIST digit or a seed: "dev" (what detector.py's detector learns from) and "held-out"
(the figures).

Fonts and photos come from packages: Hershey-Fonts and scikit-image (requirements.txt;
only scikit-image's image files are read) and, for the printed half of the letters and
symbols, some of FONTS (apt-get install fonts-dkg-handwriting ...; .ci/run does; without
them every letter is drawn from the Hershey fonts). available() says which kinds can be
made here.
"""

import glob
import importlib.util
import io
import math
import os
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from synthetic.realistic import CONDITIONS, Digit, load_digits, skeleton
from synthetic.realistic_numbers import TOUCHING_SHARE, Layout, Number, compose_number

KINDS = ("letters", "symbols", "shapes", "several digits", "photos")
PARTS = ("dev", "held-out")

FONT_FOLDER = "/usr/share/fonts"
# Font files (basenames) by part: a font is in one part only. Handwriting and script fonts,
# and two plain ones (people print letters too).
FONTS = {
    "dev": ("BecauseWeBuild-Regular.otf", "BecauseWeConnect-Regular.otf", "BecauseWeCreate-Regular.otf",
            "ComicNeue-Regular.otf", "DancingScript-Regular.otf", "dkg.ttf", "Humor-Sans.ttf", "Kristi.ttf",
            "Delphine.ttf", "KleeOne-Regular.ttf", "DejaVuSans.ttf"),
    "held-out": ("BecauseWeLearn-Regular.otf", "BecauseWeMentor-Regular.otf", "BecauseWeOrganize-Regular.otf",
                 "ComicNeue-Italic.otf", "KaushanScript-Regular.otf", "Breip.ttf", "Ecolier-court.ttf",
                 "femkeklaver.ttf", "Rufscript010.ttf", "SteveHand.ttf", "TomsonTalks.ttf",
                 "YuseiMagic-Regular.ttf", "dkgBI.ttf", "LiberationSans-Regular.ttf"),
}
FONT_PACKAGES = ("fonts-bwht", "fonts-comic-neue", "fonts-dancingscript", "fonts-dkg-handwriting",
                 "fonts-humor-sans", "fonts-kristi", "fonts-sjfonts", "fonts-klee", "fonts-kaushanscript",
                 "fonts-breip", "fonts-ecolier-court", "fonts-femkeklaver", "fonts-rufscript",
                 "fonts-tomsontalks", "fonts-yusei-magic", "fonts-dejavu-core", "fonts-liberation")
# Letters a person reads as a digit when written alone (O 0, I l 1, Z 2, S 5, b G 6, B 8, g q 9):
# no detector can flag them without flagging digits, so none is generated.
DIGIT_LIKE = set("OoIlZzSsbGBgq")
LETTERS = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in DIGIT_LIKE)
SYMBOLS = "+=%#@&?!$*§€£¥×÷<>~^{}[]→←↑↓↔♥♦♣♠★☆✓✗☺♪∞√∑πΩ"  # no bars or slashes: a lone stroke is a 1
# scikit-image's sample photos by part (a photo is in one part only); the rest of its files are
# microscopy, charts, masks or stereo pairs of the ones here.
# Hershey single-stroke fonts (pip package Hershey-Fonts) by part, for letters and for symbols.
STROKE_FONTS = {"dev": ("futural", "scripts", "timesr", "rowmans"),
                "held-out": ("futuram", "scriptc", "cursive", "timesi", "rowmand")}
SYMBOL_STROKE_FONTS = {"dev": ("symbolic", "meteorology"), "held-out": ("markers", "astrology")}
# Characters that two of the symbol fonts draw as plain text, not as symbols: their letters and
# digits (a 7 is no symbol), and glyphs that are a bracket, a tick or a digit's shape.
ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
TEXT_GLYPHS = {"astrology": ALPHANUMERIC + "()'\"-", "meteorology": ALPHANUMERIC + "![]~"}
PHOTOS = {
    "dev": ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coins.png", "grass.png",
            "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "page.png"),
    "held-out": ("coffee.png", "gravel.png", "horse.png", "ihc.png", "retina.jpg", "rocket.jpg",
                 "text.png", "color.png", "clock_motion.png", "cell.png", "chessboard_GRAY.png", "logo.png"),
}
PART_SEEDS = {"dev": 1, "held-out": 2}


class Sample(NamedTuple):
    kind: str
    name: str  # what it is: the letter and font, the shape, the digits, the photo
    image: Image.Image


def available():
    """The kinds that can be generated here (letters and symbols need Hershey-Fonts, photos scikit-image)."""
    kinds = ["shapes", "several digits"]
    if importlib.util.find_spec("HersheyFonts") is not None:
        kinds[:0] = ["letters", "symbols"]
    if photo_folder() is not None:
        kinds.append("photos")
    return [kind for kind in KINDS if kind in kinds]


def generate(kind, count, part="held-out", seed=0, digits=None, first=0):
    """Yield `count` Samples of one kind, from one part: numbers first .. first + count - 1.

    Args:
        kind: one of KINDS.
        count: how many.
        part: "dev" or "held-out": they share no font, photo, digit or seed.
        seed: the generator is deterministic given this; sample i is the same whatever
            `first` and `count` (so that workers can make parts of one set).
        digits: MNIST digits (N x 28 x 28) for "several digits"; default: the committed
            fixture's training digits for "dev", its test digits for "held-out".
        first: the number of the first sample.
    """
    numbers = range(first, first + count)
    rngs = (np.random.default_rng([seed, PART_SEEDS[part], KINDS.index(kind), i]) for i in numbers)
    if kind == "photos":
        yield from photos(part, rngs)
        return
    if kind == "several digits":
        if digits is None:
            digits = load_digits(split="train" if part == "dev" else "test")[0]
        items = (several_digits(digits, rng) for rng in rngs)
    elif kind in ("letters", "symbols"):
        items = ((name, drawn(raster)) for name, raster in glyphs(LETTERS if kind == "letters" else SYMBOLS, part, rngs))
    else:
        items = ((name, drawn(raster)) for name, raster in (doodle(rng) for rng in rngs))
    renderers = list(CONDITIONS.items())
    for i, (name, shape) in zip(numbers, items):
        condition, render = renderers[(i + PART_SEEDS[part]) % len(renderers)]
        image = render(shape, np.random.default_rng([seed, PART_SEEDS[part], KINDS.index(kind), i, 7]))
        yield Sample(kind, f"{name}, {condition}", image)


# ----------------------------------------------------------------------------- letters and symbols

def font_files(part):
    """The installed font files of one part."""
    wanted = set(FONTS[part])
    found = {}
    for path in sorted(glob.glob(os.path.join(FONT_FOLDER, "**", "*.[ot]tf"), recursive=True)):
        if os.path.basename(path) in wanted:
            found.setdefault(os.path.basename(path), path)
    return [found[name] for name in FONTS[part] if name in found]


def glyphs(characters, part, rngs):
    """(name, raster) of a character per rng, each in a random font of the part that has it: half
    printed by an installed font, half drawn stroke by stroke from a Hershey font by a wobbly pen."""
    fonts = [ImageFont.truetype(path, 64) for path in font_files(part)]  # none: all drawn from Hershey fonts
    strokes = list(stroke_fonts(part, symbols=characters is SYMBOLS).items())
    for rng in rngs:
        raster = None
        while raster is None:  # None: the font lacks the character
            if rng.random() < 0.5 and fonts:
                character = characters[rng.integers(len(characters))]
                font = fonts[rng.integers(len(fonts))]
                raster, name = render_glyph(character, font), f"{character!r} in {os.path.basename(font.path)}"
            else:
                font_name, font = strokes[rng.integers(len(strokes))]
                pool = sorted(set(font) & set(characters)) if characters is LETTERS else sorted(font)
                character = pool[rng.integers(len(pool))]
                raster = hand_drawn(font[character], rng, angle=0.15, stretch=(0.8, 1.25))
                name = f"{character!r} in Hershey {font_name}"
        yield name, slant(raster, rng.uniform(-0.25, 0.25))


def stroke_fonts(part, symbols=False):
    """{Hershey font name: {character: strokes in 0-1 units, y down}} of one part (the Hershey-Fonts
    package's single-stroke fonts: letters as a pen draws them). Symbol fonts keep only glyphs of
    two or more strokes: a lone line is a 1, a lone ring a 0."""
    from HersheyFonts import HersheyFonts

    fonts = {}
    for name in (SYMBOL_STROKE_FONTS if symbols else STROKE_FONTS)[part]:
        font = HersheyFonts()
        font.load_default_font(name)
        glyphs = {}
        for character in map(chr, range(33, 127)):
            strokes = [list(stroke) for stroke in font.strokes_for_text(character)]
            points = np.array([point for stroke in strokes for point in stroke], np.float64).reshape(-1, 2)
            if len(points) < 2 or (symbols and (len(strokes) < 2 or character in TEXT_GLYPHS.get(name, ""))) or (
                    not symbols and character in DIGIT_LIKE):
                continue
            low, extent = points.min(axis=0), max(np.ptp(points, axis=0).max(), 1e-6)
            glyphs[character] = [[tuple((np.asarray(point) - low) / extent) for point in stroke] for stroke in strokes]
        fonts[name] = glyphs
    return fonts


def render_glyph(character, font):
    """A character as a grey raster (ink 255 on 0), cropped; None where the font has no glyph for it."""
    def draw(text):
        canvas = Image.new("L", (160, 160), 0)
        ImageDraw.Draw(canvas).text((40, 30), text, font=font, fill=255)
        return np.asarray(canvas)

    pixels = draw(character)
    if not (pixels > 100).any() or np.array_equal(pixels, draw("\U0010fffd")):  # nothing, or the missing-glyph box
        return None
    rows, cols = np.nonzero(pixels > 0)
    return pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def slant(raster, shear):
    """A sheared copy (handwriting leans), on a black field wide enough for it."""
    height, width = raster.shape
    extra = int(abs(shear) * height) + 1
    image = Image.fromarray(np.pad(raster, ((0, 0), (extra, extra))))
    sheared = image.transform(image.size, Image.AFFINE, (1, shear, -shear * height / 2, 0, 1, 0), Image.BILINEAR)
    pixels = np.asarray(sheared)
    rows, cols = np.nonzero(pixels > 0)
    return pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


# ----------------------------------------------------------------------------- shapes and doodles

def circle(cx, cy, rx, ry, start=0.0, turn=1.0, points=40):
    angles = start + np.linspace(0, 2 * np.pi * turn, points)
    return list(zip(cx + rx * np.cos(angles), cy + ry * np.sin(angles)))


def regular(sides, cx=0.5, cy=0.5, r=0.4, start=None, star=False):
    start = -np.pi / 2 if start is None else start
    corners = 2 * sides if star else sides
    out = []
    for k in range(corners + 1):
        radius = r * (0.45 if star and k % 2 else 1.0)
        angle = start + 2 * np.pi * k / corners
        out.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return out


def smooth_walk(rng, steps, reach=0.35):
    """A scribble: a random walk with momentum, kept inside the box."""
    point, velocity, out = np.array([0.5, 0.5]), rng.normal(0, 0.05, 2), []
    for _ in range(steps):
        velocity = 0.8 * velocity + rng.normal(0, 0.04, 2)
        point = np.clip(point + velocity, 0.5 - reach, 0.5 + reach)
        out.append(tuple(point))
    return out


def shape_strokes(name, rng):
    """The strokes (lists of (x, y) in 0-1 units) of one kind of shape or doodle."""
    u = rng.uniform
    if name == "polygon":
        return [regular(int(rng.integers(3, 9)), start=u(0, np.pi))]
    if name == "star":
        return [regular(int(rng.integers(5, 8)), star=True)]
    if name == "rectangle":
        w, h = u(0.25, 0.45), u(0.15, 0.45)
        return [[(0.5 - w, 0.5 - h), (0.5 + w, 0.5 - h), (0.5 + w, 0.5 + h), (0.5 - w, 0.5 + h), (0.5 - w, 0.5 - h)]]
    if name == "spiral":
        turns = u(1.5, 4)
        t = np.linspace(0, 1, 120)
        angle, radius = 2 * np.pi * turns * t, 0.05 + 0.38 * t
        return [list(zip(0.5 + radius * np.cos(angle), 0.5 + radius * np.sin(angle)))]
    if name == "zigzag":
        n = int(rng.integers(3, 7))
        return [[(0.1 + 0.8 * k / n, 0.3 if k % 2 else 0.7) for k in range(n + 1)]]
    if name == "wave":
        x = np.linspace(0.08, 0.92, 60)
        return [list(zip(x, 0.5 + u(0.1, 0.25) * np.sin(2 * np.pi * u(1.5, 3.5) * x)))]
    if name == "cross":
        return [[(0.5, 0.1), (0.5, 0.9)], [(0.1, 0.5), (0.9, 0.5)]] if rng.random() < 0.5 else \
            [[(0.15, 0.15), (0.85, 0.85)], [(0.85, 0.15), (0.15, 0.85)]]
    if name == "arrow":
        return [[(0.1, 0.5), (0.9, 0.5)], [(0.65, 0.25), (0.9, 0.5), (0.65, 0.75)]]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 60)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return [list(zip(0.5 + x / 40, 0.45 - y / 40))]
    if name == "house":
        return [[(0.2, 0.45), (0.2, 0.9), (0.8, 0.9), (0.8, 0.45), (0.5, 0.12), (0.2, 0.45), (0.8, 0.45)],
                [(0.42, 0.9), (0.42, 0.65), (0.58, 0.65), (0.58, 0.9)]]
    if name == "smiley":
        return [circle(0.5, 0.5, 0.4, 0.4), circle(0.36, 0.4, 0.04, 0.05, points=10),
                circle(0.64, 0.4, 0.04, 0.05, points=10), circle(0.5, 0.55, 0.22, 0.16, 0.3, 0.35, 20)]
    if name == "sun":
        rays = [[(0.5 + 0.25 * np.cos(a), 0.5 + 0.25 * np.sin(a)), (0.5 + 0.45 * np.cos(a), 0.5 + 0.45 * np.sin(a))]
                for a in np.linspace(0, 2 * np.pi, int(rng.integers(6, 11)), endpoint=False)]
        return [circle(0.5, 0.5, 0.18, 0.18)] + rays
    if name == "flower":
        petals = int(rng.integers(4, 8))
        t = np.linspace(0, 2 * np.pi, 120)
        r = 0.12 + 0.28 * np.abs(np.cos(petals * t / 2))
        return [list(zip(0.5 + r * np.cos(t), 0.5 + r * np.sin(t))), circle(0.5, 0.5, 0.08, 0.08, points=16)]
    if name == "grid":
        n = int(rng.integers(2, 4))
        lines = [[(0.15 + 0.7 * k / n, 0.1), (0.15 + 0.7 * k / n, 0.9)] for k in range(n + 1)]
        return lines + [[(0.1, 0.15 + 0.7 * k / n), (0.9, 0.15 + 0.7 * k / n)] for k in range(n + 1)]
    if name == "tick":
        return [[(0.15, 0.55), (0.4, 0.85), (0.88, 0.12)]]
    if name == "scribble":
        return [smooth_walk(rng, int(rng.integers(40, 120)))]
    if name == "concentric":
        return [circle(0.5, 0.5, r, r * u(0.8, 1.2)) for r in (0.12, 0.26, 0.4)]
    if name == "lightning":
        return [[(0.55, 0.05), (0.3, 0.5), (0.55, 0.5), (0.4, 0.95), (0.75, 0.4), (0.5, 0.4), (0.7, 0.05)]]
    if name == "stick figure":
        return [circle(0.5, 0.18, 0.1, 0.1), [(0.5, 0.28), (0.5, 0.65)], [(0.25, 0.4), (0.75, 0.4)],
                [(0.3, 0.92), (0.5, 0.65), (0.7, 0.92)]]
    if name == "tree":
        return [[(0.45, 0.95), (0.45, 0.6)], [(0.55, 0.95), (0.55, 0.6)], circle(0.5, 0.38, 0.3, 0.25)]
    if name == "cloud":
        return [[point for k in range(5) for point in circle(0.2 + 0.15 * k, 0.5 + 0.08 * (-1) ** k, 0.13, 0.13, np.pi,
                                                             0.5, 12)] + [(0.2, 0.62), (0.8, 0.62)]]
    if name == "face":  # a cat-like face: head, ears, eyes, whiskers
        return [circle(0.5, 0.55, 0.35, 0.3), [(0.2, 0.4), (0.25, 0.1), (0.4, 0.28)], [(0.6, 0.28), (0.75, 0.1),
                (0.8, 0.4)], circle(0.38, 0.5, 0.04, 0.04, points=8), circle(0.62, 0.5, 0.04, 0.04, points=8),
                [(0.1, 0.62), (0.4, 0.65)], [(0.6, 0.65), (0.9, 0.62)]]
    if name == "hash":
        return [[(0.35, 0.1), (0.3, 0.9)], [(0.68, 0.1), (0.63, 0.9)], [(0.1, 0.35), (0.9, 0.35)], [(0.1, 0.65),
                (0.9, 0.65)]]
    if name == "hatching":
        n = int(rng.integers(4, 9))
        return [[(0.1 + 0.8 * k / n, 0.9), (0.3 + 0.8 * k / n, 0.1)] for k in range(n)]
    raise ValueError(name)


SHAPES = ("polygon", "star", "rectangle", "spiral", "zigzag", "wave", "cross", "arrow", "heart", "house", "smiley",
          "sun", "flower", "grid", "tick", "scribble", "concentric", "lightning", "stick figure", "tree", "cloud",
          "face", "hash", "hatching")


def doodle(rng):
    """(name, raster): a random shape or doodle, wobbly, turned and stretched a little."""
    name = SHAPES[rng.integers(len(SHAPES))]
    return name, hand_drawn(shape_strokes(name, rng), rng)


def hand_drawn(strokes, rng, angle=0.3, stretch=(0.75, 1.3)):
    """A raster of strokes (lists of (x, y) in 0-1 units, y down) drawn by a wobbly hand, turned
    and stretched a little: ink 255 on 0, cropped."""
    angle, stretch = rng.uniform(-angle, angle), rng.uniform(*stretch)
    cos, sin = math.cos(angle), math.sin(angle)
    side = 96
    canvas = Image.new("L", (side + 32, side + 32), 0)
    draw = ImageDraw.Draw(canvas)
    wobble = rng.uniform(0.002, 0.012)
    for stroke in strokes:
        points = np.asarray(stroke, np.float64) - 0.5
        points = points @ np.array([[cos * stretch, sin], [-sin * stretch, cos]]) + 0.5
        points = points + rng.normal(0, wobble, points.shape).cumsum(axis=0) * 0.3
        draw.line([(16 + x * side, 16 + y * side) for x, y in points], fill=255, width=5, joint="curve")
    pixels = np.asarray(canvas)
    rows, cols = np.nonzero(pixels)
    return pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


# ----------------------------------------------------------------------------- several digits

def several_digits(digits, rng):
    """(name, shape): 2 or 3 MNIST digits written as a number (synthetic/realistic_numbers.py: its
    gaps, baseline and slant; a third of them with one touching pair), in a scene wide enough."""
    count = int(rng.integers(2, 4))
    number, _ = compose_number(digits, np.zeros(len(digits), np.int64), rng, touching=rng.random() < TOUCHING_SHARE,
                               length=count)
    return f"{count} digits", number


def drawn(raster):
    """A raster as the conditions draw it: like one digit, in a scene as wide as the raster needs (a
    digit's scene would cut off the ends of a wide one: an arrow, a 'm', a row of shapes)."""
    return Number([Digit(raster, skeleton(raster)[1])], [Layout(size=1.0, drop=0.0, slant=0.0, gap=0.0)], None)


# ----------------------------------------------------------------------------- photos

def photo_folder():
    """scikit-image's folder of sample images, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return folder if os.path.isfile(os.path.join(folder, "camera.png")) else None


def photos(part, rngs):
    """A crop of the part's photos per rng: any size and shape, colour or grey, turned, JPEG-compressed."""
    folder = photo_folder()
    if folder is None:
        raise RuntimeError("the photos need scikit-image's sample images (pip install scikit-image)")
    sources = [(name, ImageOps.exif_transpose(Image.open(os.path.join(folder, name))).convert("RGB"))
               for name in PHOTOS[part] if os.path.isfile(os.path.join(folder, name))]
    for rng in rngs:
        name, photo = sources[rng.integers(len(sources))]
        width, height = photo.size
        share = rng.uniform(0.2, 1.0)
        crop_w = max(8, int(width * share * rng.uniform(0.7, 1.0)))
        crop_h = max(8, int(min(height, crop_w * rng.uniform(0.6, 1.6))))
        crop_w = min(crop_w, width)
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h))
        side = int(rng.integers(28, 1000))
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
        image = image.rotate(90 * int(rng.integers(4)), expand=True)
        if rng.random() < 0.4:
            image = image.convert("L")
        if rng.random() < 0.5:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(rng.integers(40, 95)))
            image = Image.open(io.BytesIO(buffer.getvalue()))
        yield Sample("photos", f"{name} crop {image.width}x{image.height}", image)

"""Read a whole handwritten number: split the image of one number into digits and classify them.

    read(source, classifier) -> NumberReading(text="472", digits=(DigitReading, ...), confidence)

The picture is decoded (decode.py, keeping a wide strip's height) and its ink map
made as for a single digit (preprocess.ink_of). Then:

    strokes     the ink's pixels, without lines along the border (pieces.py) or ruled lines across
    pieces      connected pieces of the strokes (pieces.label_components); specks, edges and
                blobs that are no digit of this number dropped
    atoms       each piece, and the parts of a piece too wide for one digit, cut where its ink
                profile is thin, along the number's slant
    candidates  runs of neighbouring atoms that could be one digit (a 5 and its bar, a broken
                4, one of two touching digits), each brought to MNIST's form with the same
                steps as a single digit (preprocess.crop_to_mnist) and all classified in one batch
    best split  dynamic programming: the split of the atoms into digits with the highest
                score, the sum of each digit's log probability, priors on its height and width,
                a term for each cut through ink, and two learnt scores of its crop: the
                detector's "one digit" and the segment verifier's "a whole digit" (verifier.py)

An image in which only one digit is found is read by the single-digit pipeline
(preprocess.to_mnist), exactly as predict() reads it.
"""

import math
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

import decode
import pieces
import preprocess
from calibration import uncalibrated
from classifier import Prediction, predictions_of, to_predictions
from decode import Picture
from errors import NoDigitError

SHORT_SIDE = 128  # a wide strip is decoded at least this tall (its long side up to decode.STRIP_SIDE)
SMALL_DIGITS = 40  # pixels: smaller digits are decoded again, larger (what MNIST's 20-pixel box needs)
INK_LEVEL = pieces.INK_LEVEL  # a pixel is a stroke's when its ink is this share of its piece's strength...
FAINT_LEVEL = 0.1  # ...pieces connected at this share of the picture's full strength...
WEAKEST = 0.25  # ...counting a piece at least this strong (fainter ones are paper texture, mostly)
CLUSTER_GAP = 1.5  # digit heights: pieces further apart than this belong to different marks, one the number
EDGE_GROWTH = 2  # pixels: a stroke's faint anti-aliased edge joins its piece up to this far
SLANT_RANGE = (-0.4, 0.6)  # the number's slant is taken within this (x shift per pixel up)
LINE_SLOPES = np.linspace(-0.06, 0.06, 13)  # ruled lines: rows per column tried (about +-3.4 degrees)
LINE_TRIES = 4  # of those, the slopes whose fullest rows are searched for runs
LINE_RUN = 0.3  # a ruled line runs this share of the picture's width at least...
LINE_HEIGHTS = 2.5  # ...and this many digit heights, or LINE_CAP of the width (the height may be a line's)
LINE_CAP = 0.6
LINE_THICKNESS = 0.15  # of the digit height: a line's leftover piece is no thicker
EDGE_GAPS = 0.1  # of the picture's height: gaps an upright line (an edge) may have along it
THINNEST_LIMIT = 6.0  # pixels: a line (with its faint edges) may be this thick, whatever the digit height
LINE_MARGIN = 3  # pixels beside a line that go with it (or its own thickness, if more)
VERTICAL_RUN = 0.6  # a vertical line runs this share of the picture's height at least...
VERTICAL_HEIGHTS = 1.3  # ...and this many digit heights
MIN_DIGIT = 6  # pixels: a shorter piece is a speck, whatever the number's size
DIGIT_SPREAD = (0.7, 1.35)  # a number's digits are this much shorter or taller than the one measured
SPECK = 0.25  # of the digit height: a piece smaller than this alone is a speck
BORDER_SHARE = 0.3  # a piece with this share of its pixels in the picture's outer band is an edge
TALLEST = 1.9  # digit heights: a taller piece (an edge, a margin line, a shadow) is no digit
THIN_LINE_LENGTH = 1.4  # digit heights: a piece this tall...
THIN_LINE = 0.2  # ...and this thin on average (of the digit height) is a line, not a 1
HUG = 0.5  # a band touching the border along this share of its length hugs it
SLIVER = 0.15  # of the digit height: a strip at the border this thin and short of a digit is an edge's
EDGE_SPAN = 0.85  # a piece at the border spanning this share of the picture, and thin, is an edge
VERTICAL_JOIN = 0.35  # digit heights: atoms further apart vertically never form one digit
STACKED_OVERLAP = 0.5  # pieces overlapping in x by this share of the narrower one...
STACKED_APART = 0.3  # ...and in y by at most this share of the shorter one are one digit broken across
STACKED_GAP = 0.3  # ...and no further apart than this share of the taller one
STACKED_TALLEST = 1.3  # digit heights: pieces joined one above the other are no taller
THIN_PEN = 0.4  # of the pen width of the number's digits (ink-weighted median): a piece drawn thinner is a line
NEAR = 0.3  # digit heights: a small piece further from every digit is a mark, not part of one
MAX_WIDTH = 1.3  # digit heights: no candidate digit is wider
JOIN_GAP = 0.12  # digit heights: atoms further apart (in x, along the slant) never form one digit
MIN_PART = 0.2  # digit heights: no part cut off a wide piece is narrower
CUT_STEP = 0.05  # digit heights: the columns tried across a wide piece's middle
CUT_APART = 0.04  # digit heights: cuts closer together are one
CUT_RANGE = (0.3, 0.7)  # of a wide piece's width: where columns are tried, beside the thinnest
MAX_CUTS = 24  # per piece
THREE_WIDE = 1.4  # digit heights: a piece this wide may hold three touching digits
MAX_PIECES = 3  # pieces one digit may be written in
WIDE = 0.8  # digit heights: a piece wider than this may hold several digits and gets cut
SHORT = 0.7  # of the digit height: a shorter candidate is probably a fragment
WIDE_DIGIT = 0.9  # of the digit height: a wider candidate may be two digits
NARROW_ONE = 0.35  # of the digit height: a 1 wider than this may be a 1 and a part of its neighbour


class Scoring(NamedTuple):
    """How a split into digits is scored: per digit, its log probability plus these weights
    times its terms (candidate_features), in this order; skip_cost is the DP's own.

    Chosen on numbers composed of MNIST *training* digits, with the segment verifier fitted on
    others (python -m bench.number_accuracy --fit-verifier, then --tune).
    """

    digit_bonus: float = 0.229  # per digit: how readily a wide piece is split
    cut_cost: float = -0.191  # per stroke a cut between two digits goes through (learnt negative beside the verifier)
    part_cost: float = 1.125  # per end of a digit that is a cut (a digit made of part of a piece)
    short_cost: float = 27.357  # per digit height a digit is shorter than SHORT (fragments are short)
    wide_cost: float = 3.259  # per digit height a digit is wider than WIDE_DIGIT (pairs are wide)
    wide_one_cost: float = 0.911  # per digit height a 1 is wider than NARROW_ONE
    margin_weight: float = 0.3  # times the log ratio of the top two probabilities
    join_cost: float = 0.548  # per digit-tall piece joined to another into one digit
    one_digit_weight: float = 0.404  # times the log of the detector's "one digit" score
    segment_weight: float = 1.077  # times the log of the segment verifier's "a whole digit" score
    skip_cost: float = 0.738  # for leaving out an atom shorter than SHORT (a speck, a stray mark)


SCORING = Scoring()


class DigitReading(NamedTuple):
    """One digit of a number."""

    prediction: Prediction
    box: Tuple[int, int, int, int]  # (x0, y0, x1, y1) in the input image's pixels (upright), x1 and y1 exclusive


class NumberReading(NamedTuple):
    """A whole number as read from one image."""

    text: str  # the digits, left to right, leading zeros kept ("0472")
    digits: Tuple[DigitReading, ...]
    confidence: float  # the product of the digits' confidences: the chance that every digit is right


class Atom(NamedTuple):
    """A piece, or a part of one cut off at a column, with its pixels."""

    rows: np.ndarray  # pixel coordinates in the ink map (with faint edges)
    cols: np.ndarray
    left: float  # its span along the slant (x minus slant x height), for ordering and gaps
    right: float
    top: int
    bottom: int  # exclusive
    piece: int  # the piece it is part of
    cut: float  # strokes the cut on its left goes through (0: no cut, a piece's own left end)
    part: int  # which slice of its piece, left to right (0 for a piece not cut)


class Candidate(NamedTuple):
    start: int  # atoms[start:stop] as one digit
    stop: int
    height: float  # its size in digit heights
    width: float  # along the slant
    joins: int  # digit-tall pieces in it beyond the first (a broken 4 has one; two digits side by side too)


class Frame(NamedTuple):
    """Where a work picture lies in the input image: input x = left + x * scale_x, likewise y."""

    left: float
    top: float
    scale_x: float
    scale_y: float
    width: int  # the input image's own size (upright)
    height: int

    def box(self, top, bottom, left, right):
        """(x0, y0, x1, y1) in the input image's pixels of a (top, bottom, left, right) box here."""
        return (max(0, math.floor(self.left + left * self.scale_x)), max(0, math.floor(self.top + top * self.scale_y)),
                min(self.width, math.ceil(self.left + right * self.scale_x)),
                min(self.height, math.ceil(self.top + bottom * self.scale_y)))


def whole(picture):
    """The Frame of a picture that shows the whole input image."""
    scale_x, scale_y = picture.scale()
    height, width = picture.pixels.shape[:2]
    return Frame(0.0, 0.0, scale_x, scale_y, round(width * scale_x), round(height * scale_y))


class Found(NamedTuple):
    """A number located in an ink map: its pieces and digit height."""

    ink: np.ndarray
    strokes: np.ndarray
    pieces: list  # the Pieces that are part of it
    height: float  # its digit height in pixels


@dataclass
class NumberTrace:
    """What read() saw, for pictures (explain.py): the decoded image and each digit's model input."""

    input: Optional[np.ndarray] = None  # the decoded pixels (uint8, HxW or HxWx3)
    scale: Tuple[float, float] = (1.0, 1.0)  # (x, y) factors from those pixels to the input image's
    digits: list = field(default_factory=list)  # each digit's 28x28 model input, left to right


def read(source, classifier, name=None, limits=None, trace=None) -> NumberReading:
    """Read the number in one image.

    Args:
        source: anything decode.decode() takes (a path, bytes, file, PIL image, array or Picture).
        classifier: a batch of 28x28 images -> N x 10 probabilities (classifier.py).
        name: how messages name the input.
        limits: decode.decode()'s keyword limits (max_pixels, max_megabytes, reserve), for every decoding.
        trace: an optional NumberTrace that receives the decoded image and the digits' inputs.
    Raises:
        UnreadableImageError, or NoDigitError when no digit is found.
    """
    if hasattr(source, "read") and not isinstance(source, Picture):
        name = name or str(getattr(source, "filename", "") or getattr(source, "name", "") or "") or None
        source = source.read()  # a file is read once: a small number is decoded again, larger
    trace = NumberTrace() if trace is None else trace
    limits = limits or {}
    picture, found, frame = locate(source, name, limits)
    trace.input, trace.scale = picture.pixels, picture.scale()
    if picture.pixels.shape == (preprocess.SIZE, preprocess.SIZE) and preprocess.mnist_form(picture.pixels[None])[0]:
        return read_single(source, picture, classifier, name, limits, trace)  # one MNIST digit, as it is
    proposal = propose(found, classifier) if found is not None else None
    chosen = best_split(proposal) if proposal is not None else []
    if not chosen:
        raise NoDigitError(f"no digit found in {picture.name}")
    if len(chosen) == 1:
        return read_single(source, picture, classifier, name, limits, trace)
    trace.digits = [proposal.images[i][0] for i in chosen]
    predictions = to_predictions(proposal.probabilities[chosen])
    return reading(predictions, [frame.box(*proposal.images[i][1]) for i in chosen])


def locate(source, name=None, limits=None):
    """Decode an image and find its number: (Picture, Found or None, Frame of the Found's ink map).

    A number whose digits come out smaller than SMALL_DIGITS is decoded again, larger,
    and only its part of the image is worked on.
    """
    limits = limits or {}
    picture = decode.decode(source, name, short_side=SHORT_SIDE, **limits)
    frame = whole(picture)
    found = find_number(preprocess.ink_of(picture))
    if found is not None and found.height < SMALL_DIGITS and not isinstance(source, Picture):
        found, frame = zoom_in(source, picture, found, frame, name, limits) or (found, frame)
    return picture, found, frame


def zoom_in(source, picture, found, frame, name, limits):
    """Decode the number's part of the image again, larger, when its digits came out small.

    Returns (Found, Frame) for the new picture, or None when the image has no more pixels.
    """
    height, width = picture.pixels.shape[:2]
    zoom = min(SMALL_DIGITS * 1.5 / found.height, frame.width / width, frame.height / height)
    if zoom < 1.25:
        return None
    big = decode.decode(source, name, **limits, side=min(decode.STRIP_SIDE * 2, round(max(height, width) * zoom)))
    ratio = big.pixels.shape[1] / width
    margin = found.height
    top = max(0, int((min(p.top for p in found.pieces) - margin) * ratio))
    bottom = min(big.pixels.shape[0], int((max(p.bottom for p in found.pieces) + margin) * ratio) + 1)
    left = max(0, int((min(p.left for p in found.pieces) - margin) * ratio))
    right = min(big.pixels.shape[1], int((max(p.right for p in found.pieces) + margin) * ratio) + 1)
    crop = Picture(np.ascontiguousarray(big.pixels[top:bottom, left:right]), big.name)
    try:
        zoomed = find_number(preprocess.ink_of(crop))
    except NoDigitError:
        return None
    if zoomed is None:
        return None
    scale_x, scale_y = big.scale()
    return zoomed, frame._replace(left=left * scale_x, top=top * scale_y, scale_x=scale_x, scale_y=scale_y)


def read_single(source, picture, classifier, name, limits, trace):
    """One digit: the single-digit pipeline, on the picture predict() decodes."""
    height, width = picture.pixels.shape[:2]
    if not isinstance(source, Picture) and picture.size is not None and (
            decode.long_side(picture.size, (decode.WORK_SIDE, 0)) < max(height, width)):
        picture = decode.decode(source, name, **limits)  # a wide strip: decoded at predict()'s size
    steps = preprocess.Trace()
    image = preprocess.to_mnist(picture, steps)
    box = steps.box or (0, picture.pixels.shape[0], 0, picture.pixels.shape[1])  # already MNIST: all of it
    trace.input, trace.scale, trace.digits = picture.pixels, picture.scale(), [image]
    return reading(predictions_of(classifier, image[None], rivals=[steps.rivals]), [whole(picture).box(*box)])


def reading(predictions, boxes):
    """A NumberReading from each digit's Prediction and box."""
    digits = tuple(DigitReading(p, box) for p, box in zip(predictions, boxes))
    return NumberReading("".join(str(d.prediction.digit) for d in digits), digits,
                         float(np.prod([d.prediction.confidence for d in digits])))


# ----------------------------------------------------------------------------- segmentation

class Proposal(NamedTuple):
    """What a split is chosen from: the atoms, the candidate digits and their classification."""

    atoms: List[Atom]
    candidates: List[Candidate]
    images: list  # per candidate: (28x28 model input, box (top, bottom, left, right) in the ink map)
    probabilities: np.ndarray  # per candidate: ten probabilities
    height: float  # the number's digit height in pixels
    scored: np.ndarray  # the same at the temperature the scoring was tuned at (before calibration)
    digit_scores: Optional[np.ndarray] = None  # per candidate: the detector's "one digit" score (None: no detector)
    segment_scores: Optional[np.ndarray] = None  # per candidate: the verifier's "a whole digit" score (None: none)


def find_number(ink) -> Optional[Found]:
    """Locate the number in an ink map: its pieces (lines, edges, specks dropped) and digit height."""
    strokes = pieces.drop_border_lines(stroke_mask(ink))
    labels = pieces.label_components(strokes)
    height = digit_height(find_pieces(labels, strokes), strokes.shape)
    if height is None:
        return None
    cleaned = drop_ruled_lines(strokes, ink >= FAINT_LEVEL * 255, height)
    if cleaned is not strokes:
        strokes, labels = cleaned, pieces.label_components(cleaned)
        height = digit_height(find_pieces(labels, strokes), strokes.shape)
        if height is None:
            return None
    grown = [p for p in find_pieces(grow_edges(labels, ink > 0), strokes) if p.strokes]
    # junk never joins a digit: an edge's sliver above a digit would take the digit with it
    found = merge_stacked([p for p in grown if not is_junk(p, strokes.shape, height)], height)
    height = digit_height(found, strokes.shape)
    kept = number_pieces(found, strokes, height) if height is not None else []
    return Found(ink, strokes, kept, height) if kept else None


def stroke_mask(ink):
    """The pixels at stroke strength: INK_LEVEL of the strength of the faint piece they lie in.

    Strength is measured per piece (connected at FAINT_LEVEL), not over the picture: a number
    written lightly beside a dark table edge or shadow keeps its strokes.
    """
    faint = ink >= FAINT_LEVEL * 255
    labels = pieces.label_components(faint)
    values, owners = ink[faint], labels[faint]
    order = np.lexsort((values, owners))
    counts = np.bincount(owners, minlength=int(labels.max()) + 1)
    ends = np.cumsum(counts)
    # each piece's 90th percentile: its sorted values, 90% of the way through its run
    picks = np.maximum(ends - 1 - (counts * 0.1).astype(np.int64), ends - counts)
    strength = np.zeros(counts.size, np.float32)
    present = counts > 0
    strength[present] = values[order][picks[present]]
    threshold = INK_LEVEL * np.maximum(strength, WEAKEST * 255)
    strokes = np.zeros_like(faint)
    strokes[faint] = values >= threshold[owners]
    return strokes


def propose(found: Found, classifier) -> Proposal:
    """The atoms of a number and every candidate digit, classified in one batch."""
    slant = estimate_slant(found.pieces, found.height)
    atoms, parts = make_atoms(found.pieces, found.strokes, slant, found.height)
    candidates = list_candidates(atoms, parts, found.height)
    images = [candidate_image(atoms, c, found.ink) for c in candidates]
    batch = np.stack([image for image, _ in images])
    probabilities = classifier(batch)
    digit_scores = classifier.digit_scores(batch) if hasattr(classifier, "digit_scores") else None
    segment_scores = classifier.segment_scores(batch) if hasattr(classifier, "segment_scores") else None
    # SCORING's weights were fitted on the probabilities before calibration
    return Proposal(atoms, candidates, images, probabilities, found.height,
                    uncalibrated(probabilities, getattr(classifier, "temperature", 1.0)), digit_scores, segment_scores)


class Piece(NamedTuple):
    """A connected piece of the strokes."""

    rows: np.ndarray  # its pixels (with their faint edges, once grown)
    cols: np.ndarray
    top: int
    bottom: int  # exclusive
    left: int
    right: int  # exclusive
    strokes: int  # how many of its pixels are at stroke strength


def find_pieces(labels, strokes):
    """A Piece per label of the grid, in label order."""
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max()) + 2)) if flat.size else []
    found = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop > start:
            rows, cols = np.divmod(order[start:stop], labels.shape[1])
            found.append(Piece(rows, cols, int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1,
                               int(np.count_nonzero(strokes[rows, cols]))))
    return found


def digit_height(found, shape):
    """The height of this number's digits in pixels, or None when there is no piece.

    The height shared by the most pieces (within DIGIT_SPREAD of it, each counting the
    square root of its ink), then their median height weighted by ink: a number is several
    pieces of about one height, an edge or a shadow one piece of another, specks are small. Pieces clear of the border
    are measured when there are any (an edge or a table touches it), line-like ones never
    when others remain.
    """
    usable = [p for p in found if p.strokes and p.bottom - p.top >= MIN_DIGIT] or [p for p in found if p.strokes]
    if not usable:
        return None
    shaped = [p for p in usable if not line_like(p, shape) and not along_border(p, shape)] or usable
    clear = [p for p in shaped if not touches_border(p, shape)]
    touching = [p for p in shaped if touches_border(p, shape)]
    if not clear or ink_weight(clear) < 0.25 * ink_weight(touching):
        clear = shaped  # what is clear of the border is only specks and bits: a tight crop
    heights = np.array([p.bottom - p.top for p in clear], np.float64)
    mass = np.array([p.strokes for p in clear], np.float64) + 1
    low, high = DIGIT_SPREAD
    alike = (heights[None, :] >= low * heights[:, None]) & (heights[None, :] <= high * heights[:, None])
    support = alike @ np.sqrt(mass)  # many pieces alike, and big ones: a number's digits, not specks or one edge
    chosen = alike[int(np.argmax(support))]
    return float(weighted_median(heights[chosen], mass[chosen]))


def ink_weight(group):
    """How much a group of pieces counts when the digit height is measured: the square roots of their ink."""
    return float(sum(np.sqrt(p.strokes) for p in group))


def line_like(piece, shape):
    """A piece far wider than tall and long across the picture: a line or an edge, not a digit."""
    width = piece.right - piece.left
    return width >= max(40, LINE_RUN * shape[1]) and piece.bottom - piece.top <= 0.2 * width


def touches_border(piece, shape):
    return piece.top == 0 or piece.left == 0 or piece.bottom == shape[0] or piece.right == shape[1]


def weighted_median(values, weights):
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return values[order][np.searchsorted(cumulative, cumulative[-1] / 2)]


def along_border(piece, shape):
    """Whether a piece lies in the picture's outer band for much of its ink: the edge of a sheet
    or a table, a shadow at the border, a line of a form's cell (never a digit of a tight crop,
    whose strokes only touch the border)."""
    rows_total, cols_total = shape
    if min(shape) < 40:  # a small raster is a tight crop: its digit lies along the border
        return False
    band = max(2, round(0.02 * min(shape)))
    rows, cols = piece.rows, piece.cols
    outer = (rows < band) | (rows >= rows_total - band) | (cols < band) | (cols >= cols_total - band)
    return float(outer.mean()) >= BORDER_SHARE


def drop_ruled_lines(strokes, faint, height):
    """Remove long straight lines (ruled paper, the edge of a sheet or a table, a shadow's edge).

    Lines are found in the faint ink (`faint`, where a faint or broken line is whole). A
    horizontal line is a row, along one of LINE_SLOPES, with more pixels than LINE_RUN of
    the picture's width and LINE_HEIGHTS digit heights, covering most of its span: no row
    through a number's digits does. A vertical one is a column with more than VERTICAL_RUN
    of the picture's height and VERTICAL_HEIGHTS digit heights. The line's pixels leave the
    strokes, except where a stroke meets it (ink right above or right below it): a digit
    crossing the line or resting on it keeps its strokes whole.
    Returns `strokes` itself when there is no line.
    """
    rows_total, cols_total = strokes.shape
    across = max(40.0, LINE_RUN * cols_total, min(LINE_HEIGHTS * height, LINE_CAP * cols_total))
    upright = max(VERTICAL_RUN * rows_total, VERTICAL_HEIGHTS * height)
    thickest = max(THINNEST_LIMIT, LINE_THICKNESS * height)
    out = drop_lines(strokes, faint, across, thickest, 1)
    # an edge may be broken up along its length; no column through a number holds such a run
    out = drop_lines(out.T, faint.T, upright, thickest, max(1, round(EDGE_GAPS * rows_total))).T
    return strokes if np.array_equal(out, strokes) else out


def drop_lines(strokes, faint, need, thickest, gap):
    """drop_ruled_lines for the rows: lines of at least `need` pixels in `faint` (gaps up to
    `gap` bridged), at most `thickest` rows thick, removed from `strokes` (a copy)."""
    line = find_line(faint, need, thickest, gap)
    if line is None:
        return strokes
    slope, band = line
    rows, cols = np.nonzero(strokes)
    sheared = rows - np.round(slope * cols).astype(np.int64) - line_origin(faint.shape, slope)
    inside = (sheared >= 0) & (sheared < band.size)
    on_band = np.zeros(rows.size, bool)
    on_band[inside] = band[sheared[inside]]
    grid = np.zeros((band.size, strokes.shape[1]), bool)
    grid[sheared[inside], cols[inside]] = True
    meeting = np.zeros_like(grid)  # columns where a stroke comes to the line (crosses it, or rests on it)
    for start, stop in pieces.runs(band):
        reach = max(2, stop - start)
        above = grid[max(0, start - reach):start].any(axis=0)
        below = grid[stop:stop + reach].any(axis=0)
        meeting[start:stop] = above | below
    remove = on_band.copy()
    remove[inside] &= ~meeting[sheared[inside], cols[inside]]
    out = strokes.copy()
    out[rows[remove], cols[remove]] = False
    return out


def line_origin(shape, slope):
    """The smallest sheared row of a grid of this shape (row - round(slope x col))."""
    return min(0, -int(np.round(slope * (shape[1] - 1))))


def find_line(mask, need, thickest, gap=1):
    """(slope, band of sheared rows) of the lines in a mask, or None.

    A line's row, along the best of LINE_SLOPES, holds one run of at least `need` pixels
    (gaps up to `gap` bridged); a band of such rows is at most `thickest` thick and comes with
    its softer edges (LINE_MARGIN rows each side). A row through a number's digits is
    broken by the gaps between them.
    """
    rows, cols = np.nonzero(mask)
    if rows.size < need:
        return None
    tried = []
    for slope in LINE_SLOPES:
        sheared = rows - np.round(slope * cols).astype(np.int64) - line_origin(mask.shape, slope)
        counts = np.bincount(sheared)
        if counts.max() >= need:
            tried.append((int(counts.max()), float(slope), sheared, counts))
    best = None
    # along a line's own slope its pixels gather in its row: the slopes with the fullest rows
    for _, slope, sheared, counts in sorted(tried, key=lambda t: -t[0])[:LINE_TRIES]:
        candidates = np.flatnonzero(counts >= need)
        longest = longest_runs(sheared, cols, candidates, counts.size, gap)
        score = (int(longest.max()), -int(np.count_nonzero(longest >= need)))  # longest, then thinnest
        if best is None or score > best[0]:
            best = (score, slope, longest)
    if best is None or best[0][0] < need:
        return None
    _, slope, longest = best
    band = longest >= need
    grown = np.zeros_like(band)
    for start, stop in pieces.runs(band):
        if stop - start <= thickest:  # and the rows beside it, where slivers of an edge's gradient lie
            margin = max(LINE_MARGIN, stop - start)
            grown[max(0, start - margin):stop + margin] = True
    return (slope, grown) if grown.any() else None


def longest_runs(sheared, cols, candidates, size, gap):
    """Per sheared row (of `size`): the longest run of pixels, gaps up to `gap` bridged, for the
    `candidates` rows (0 elsewhere)."""
    chosen = np.isin(sheared, candidates)
    row, col = sheared[chosen], cols[chosen]
    order = np.lexsort((col, row))
    row, col = row[order], col[order]
    breaks = np.flatnonzero((np.diff(row) != 0) | (np.diff(col) > gap + 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [row.size]])
    lengths = col[ends - 1] - col[starts] + 1
    longest = np.zeros(size, np.int64)
    np.maximum.at(longest, row[starts], lengths)
    return longest


def grow_edges(labels, faint):
    """Give the faint anti-aliased edge of each stroke (ink below stroke strength) to its piece."""
    labels = labels.copy()
    for _ in range(EDGE_GROWTH):
        padded = np.pad(labels, 1)
        free = (labels == 0) & faint
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]]
            take = free & (neighbour > 0)
            labels[take] = neighbour[take]
            free &= ~take
    return labels


def is_junk(piece, shape, height):
    """Edges, margin lines, shadows' bands and leftovers of ruled lines: nothing a digit of this number is."""
    rows_total, cols_total = shape
    piece_height, piece_width = piece.bottom - piece.top, piece.right - piece.left
    if along_border(piece, shape) or piece_height > TALLEST * height:
        return True
    if piece_height > THIN_LINE_LENGTH * height and piece.strokes < THIN_LINE * height * piece_height:
        return True  # a thin line, taller than any digit here: a margin or a sheet's edge
    if piece_width > LINE_HEIGHTS * height and piece.strokes < LINE_THICKNESS * height * piece_width:
        return True  # a line left over from ruled paper
    if touches_border(piece, shape):  # the edge of a sheet or a table, across the picture
        across = piece_width >= EDGE_SPAN * cols_total and piece_height < 0.5 * height
        upright = (piece_height >= EDGE_SPAN * rows_total and height < 0.6 * rows_total
                   and piece_width < 0.5 * height)
        return across or upright or is_sliver(piece, shape, height) or hugs_border(piece, shape)
    return False


def hugs_border(piece, shape):
    """A band along one side of the picture: touching that side's outer band over most of its
    length and a quarter of the side at least, never reaching the opposite side (as every
    digit of a tight crop does). A shadow's or a table's edge the paper's estimate missed."""
    rows_total, cols_total = shape
    if min(shape) < 40:  # a small raster is a tight crop: its digit lies along the border
        return False
    band = max(2, round(0.02 * min(shape)))
    rows, cols = piece.rows, piece.cols
    for near, far, along, extent in ((rows < band, piece.bottom == rows_total, cols, cols_total),
                                     (rows >= rows_total - band, piece.top == 0, cols, cols_total),
                                     (cols < band, piece.right == cols_total, rows, rows_total),
                                     (cols >= cols_total - band, piece.left == 0, rows, rows_total)):
        if far or not near.any():
            continue
        touching = np.unique(along[near]).size
        length = along.max() - along.min() + 1
        if touching >= HUG * length and length >= 0.25 * extent:
            return True
    return False


def is_sliver(piece, shape, height):
    """A short thin strip at the border, along it: what is left of a sheet's or a table's edge."""
    rows_total, cols_total = shape
    piece_height, piece_width = piece.bottom - piece.top, piece.right - piece.left
    upright = (piece_width < SLIVER * height and piece_height < 0.7 * height
               and min(piece.left, cols_total - piece.right) <= 0.1 * cols_total)
    across = (piece_height < SLIVER * height and piece_width < 0.7 * height
              and min(piece.top, rows_total - piece.bottom) <= 0.1 * rows_total)
    return upright or across


def number_pieces(found, strokes, height):
    """The pieces that are part of the number: no junk, specks or marks off the number's line.

    A small piece inside a digit-tall piece's box joins it (a speck or a broken-off bit
    inside a digit belongs to that digit); one beside the digits, on their line, stays a
    piece of its own (a 5's bar, a 7's crossbar), to be joined or left out when splitting.
    A piece drawn far thinner than the number's pen (THIN_PEN) is the line of a shadow, an
    edge or a cell, however digit-like its shape.
    """
    shape = strokes.shape
    found = [p for p in found if p.strokes and not is_junk(p, shape, height)]
    main = [p for p in found if p.bottom - p.top >= 0.5 * height]
    if not main:
        return []
    pen = weighted_median(np.array([pen_width(p, strokes) for p in main]), np.array([ink_weight([p]) for p in main]))
    found = [p for p in found if pen_width(p, strokes) >= THIN_PEN * pen]
    main = [p for p in found if p.bottom - p.top >= 0.5 * height]  # never empty: the median piece stays
    small = {}
    for piece in found:
        if piece.bottom - piece.top >= 0.5 * height:
            continue
        host = inside_a_digit(piece, main, height)
        if host is not None:
            small.setdefault(host, []).append(piece)
        elif (max(piece.bottom - piece.top, piece.right - piece.left) >= SPECK * height
              and on_line(piece, main, height) and near_a_digit(piece, main, height)):
            main.append(piece)
    kept = [merge(p, small[i]) if i in small else p for i, p in enumerate(main)]
    return main_cluster(kept, height)


def pen_width(piece, strokes):
    """The width of the pen a piece was drawn with, in pixels (preprocess.stroke_width of its strokes)."""
    inked = strokes[piece.rows, piece.cols]
    box = np.zeros((piece.bottom - piece.top, piece.right - piece.left), np.uint8)
    box[piece.rows[inked] - piece.top, piece.cols[inked] - piece.left] = 255
    return preprocess.stroke_width(box)


def merge_stacked(found, height):
    """Join pieces that lie one above the other, close and overlapping in x: the parts of one
    broken digit (a 5 and its bar, the loops of an 8), never two digits of a number on one line,
    nor a digit and a mark above it (together taller than STACKED_TALLEST digit heights).
    Specks (under MIN_DIGIT) join nothing."""
    specks = [p for p in found if max(p.bottom - p.top, p.right - p.left) < MIN_DIGIT]
    found = sorted((p for p in found if max(p.bottom - p.top, p.right - p.left) >= MIN_DIGIT), key=lambda p: p.left)
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(found):
            for j in range(i + 1, len(found)):
                b = found[j]
                if b.left >= a.right:
                    break
                overlap_x = min(a.right, b.right) - max(a.left, b.left)
                overlap_y = min(a.bottom, b.bottom) - max(a.top, b.top)
                narrow = min(a.right - a.left, b.right - b.left)
                short = min(a.bottom - a.top, b.bottom - b.top)
                tall = max(a.bottom - a.top, b.bottom - b.top)
                joined = max(a.bottom, b.bottom) - min(a.top, b.top)
                if (overlap_x >= STACKED_OVERLAP * narrow and overlap_y <= STACKED_APART * short
                        and -overlap_y <= STACKED_GAP * tall and joined <= STACKED_TALLEST * height):
                    found[i] = merge(a, [b])
                    del found[j]
                    merged = True
                    break
            if merged:
                break
    return found + specks


def near_a_digit(piece, main, height):
    """Whether a small piece lies within NEAR digit heights (in x) of a digit-tall piece."""
    return any(piece.left - p.right <= NEAR * height and p.left - piece.right <= NEAR * height for p in main)


def merge(piece, parts):
    """One piece holding a piece's pixels and its parts'."""
    rows = np.concatenate([piece.rows] + [p.rows for p in parts])
    cols = np.concatenate([piece.cols] + [p.cols for p in parts])
    return Piece(rows, cols, int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1,
                 piece.strokes + sum(p.strokes for p in parts))


def on_line(piece, main, height):
    """Whether a piece lies within the number's line: in the rows of the main piece nearest to it."""
    centre = (piece.left + piece.right) / 2
    nearest = min(main, key=lambda p: abs((p.left + p.right) / 2 - centre))
    return piece.bottom > nearest.top - 0.3 * height and piece.top < nearest.bottom + 0.3 * height


def inside_a_digit(piece, main, height):
    """The index of the digit-tall piece whose box (grown by a tenth of the digit height) holds this one, or None."""
    margin = 0.1 * height
    for index, p in enumerate(main):
        if (piece.left >= p.left - margin and piece.right <= p.right + margin
                and piece.top >= p.top - margin and piece.bottom <= p.bottom + margin):
            return index
    return None


def main_cluster(kept, height):
    """The number: of the groups of pieces separated by gaps wider than CLUSTER_GAP digit heights,
    the one with the most ink in digit-tall pieces (an edge or a mark far from it is left out)."""
    kept = sorted(kept, key=lambda p: p.left)
    groups, right = [], -np.inf
    for piece in kept:
        if piece.left - right > CLUSTER_GAP * height:
            groups.append([])
        groups[-1].append(piece)
        right = max(right, piece.right)
    return max(groups, key=lambda g: sum(p.strokes for p in g if p.bottom - p.top >= 0.5 * height))


def estimate_slant(kept, height):
    """The number's slant (x shift per pixel of height, positive leaning right).

    Each digit-tall piece's slant from its second moments (as MNIST's deskewing measures
    it: the covariance of x and y over the variance of y), their median weighted by ink.
    """
    slants, weights = [], []
    for piece in kept:
        if piece.bottom - piece.top >= 0.5 * height:
            y, x = piece.rows.astype(np.float64), piece.cols.astype(np.float64)
            spread = float(np.var(y))
            if spread > 0:
                slants.append(-float(np.mean((x - x.mean()) * (y - y.mean()))) / spread)
                weights.append(piece.rows.size)
    if not slants:
        return 0.0
    return float(np.clip(weighted_median(np.array(slants), np.array(weights, np.float64)), *SLANT_RANGE))


def make_atoms(kept, strokes, slant, height):
    """Atoms in order along the line, and the parts each cut piece may be split into.

    A piece no wider than WIDE digit heights (along the slant) is one atom. A wider one is
    cut into slices at candidate columns (cut_positions); the runs of slices that may be a
    digit are its parts: left of a cut, right of one, or between two of its thinnest.
    Returns (atoms, {piece: (slice count, set of (first, stop) slice runs)}).
    """
    base = max(p.bottom for p in kept)
    atoms, parts = [], {}
    for index, piece in enumerate(kept):
        x = piece.cols - slant * (base - piece.rows)  # positions along the slant
        if x.max() - x.min() <= WIDE * height:
            atoms.append(make_atom(piece.rows, piece.cols, x, index, 0.0, 0))
            parts[index] = (1, set())
            continue
        cuts = nonempty(cut_positions(piece, x, strokes, height), x)
        edges = [-np.inf] + [c.position for c in cuts] + [np.inf]
        costs = [0.0] + [c.crossings for c in cuts]
        count = 0
        for (low, high), cost in zip(zip(edges, edges[1:]), costs):
            inside = (x >= low) & (x < high)
            atoms.append(make_atom(piece.rows[inside], piece.cols[inside], x[inside], index, cost, count))
            count += 1
        parts[index] = (count, piece_parts(cuts, x.max() - x.min(), height))
    atoms.sort(key=lambda a: (a.left + a.right) / 2)
    return atoms, parts


def make_atom(rows, cols, x, piece, cut, part):
    return Atom(rows, cols, float(x.min()), float(x.max()) + 1, int(rows.min()), int(rows.max()) + 1, piece, cut, part)


class Cut(NamedTuple):
    position: float  # along the slant
    crossings: float  # strokes the cut goes through
    thinnest: bool  # a local minimum of the ink profile (else a column tried between them)


def cut_positions(piece, x, strokes, height):
    """Where a wide piece may be cut, left to right: the local minima of its ink profile along
    the slant (where two touching digits usually meet), and columns every CUT_STEP digit heights
    across its middle (where they meet otherwise), no part narrower than MIN_PART."""
    on = strokes[piece.rows, piece.cols]
    columns = np.floor(x - x.min()).astype(np.int64)
    profile = np.bincount(columns[on], minlength=columns.max() + 1).astype(np.float64)
    smooth = np.convolve(profile, np.ones(3) / 3, mode="same")
    width = len(smooth)
    margin = max(2, int(MIN_PART * height))
    minima = [c for c in range(margin, width - margin) if is_local_minimum(smooth, c)]
    step = max(1, int(CUT_STEP * height))
    tried = list(range(int(CUT_RANGE[0] * width), int(CUT_RANGE[1] * width) + 1, step))
    chosen = []
    for column in sorted(minima, key=lambda c: smooth[c]) + tried:  # the thinnest first, the rest if apart
        if all(abs(column - c) >= max(2, CUT_APART * height) for c, _ in chosen):
            chosen.append((column, column in minima))
    cuts = []
    for column, thinnest in sorted(chosen):
        crossing = np.sort(piece.rows[on & (columns == column)])
        runs = 1 + int(np.count_nonzero(np.diff(crossing) > 1)) if crossing.size else 0
        cuts.append(Cut(float(x.min() + column), float(runs), thinnest))
    return cuts[:MAX_CUTS]


def nonempty(cuts, x):
    """The cuts that leave ink on both sides of them, between their neighbours."""
    kept, previous = [], -np.inf
    for cut in cuts:
        if np.any((x >= previous) & (x < cut.position)):
            kept.append(cut)
            previous = cut.position
    while kept and not np.any(x >= kept[-1].position):
        kept.pop()
    return kept


def piece_parts(cuts, width, height):
    """The runs of slices (first, stop) a cut piece may be split into: left or right of any cut,
    between two of its thinnest (a middle digit of three touching)."""
    count = len(cuts) + 1
    parts = {(0, k) for k in range(1, count)} | {(k, count) for k in range(1, count)}
    if width >= THREE_WIDE * height:
        thinnest = [k + 1 for k, c in enumerate(cuts) if c.thinnest]
        parts |= {(a, b) for a in thinnest for b in thinnest if a < b}
    return parts


def is_local_minimum(profile, column):
    return profile[column] <= profile[max(0, column - 1)] and profile[column] <= profile[min(len(profile) - 1, column + 1)]


def list_candidates(atoms, parts, height):
    """Every run of neighbouring atoms that could be one digit: whole pieces (up to MAX_PIECES of
    them close together, a digit written in several strokes), or one part of a cut piece with
    them. A whole piece is always one, however wide (a digit written wide)."""
    candidates = []
    for start in range(len(atoms)):
        left, right = atoms[start].left, atoms[start].right
        top, bottom = atoms[start].top, atoms[start].bottom
        joined = set()  # the pieces in the run
        for stop in range(start + 1, len(atoms) + 1):
            atom = atoms[stop - 1]
            joined.add(atom.piece)
            if len(joined) > MAX_PIECES:
                break  # however many slices each was cut into
            if stop > start + 1:
                same_piece = atom.piece == atoms[stop - 2].piece
                if atom.left - right > JOIN_GAP * height and not same_piece:
                    break  # too far from the rest to be part of the same digit
                if max(atom.top - bottom, top - atom.bottom) > VERTICAL_JOIN * height:
                    break  # above or below the rest: a mark of its own
                left, right = min(left, atom.left), max(right, atom.right)
                top, bottom = min(top, atom.top), max(bottom, atom.bottom)
            # a digit taller than the number's measured height (a 5 whose detached bar rises above
            # it) may be as much wider
            if right - left > MAX_WIDTH * max(height, bottom - top):
                break
            if is_digit_run(atoms[start:stop], parts):
                candidates.append(make_candidate(atoms, start, stop, height))
    listed = {(c.start, c.stop) for c in candidates}
    for piece in {a.piece for a in atoms}:
        members = [i for i, a in enumerate(atoms) if a.piece == piece]
        span = (members[0], members[-1] + 1)
        if span not in listed and is_digit_run(atoms[span[0]:span[1]], parts):
            candidates.append(make_candidate(atoms, *span, height))
    return candidates


def make_candidate(atoms, start, stop, height):
    group = atoms[start:stop]
    top, bottom = min(a.top for a in group), max(a.bottom for a in group)
    left, right = min(a.left for a in group), max(a.right for a in group)
    tall = {a.piece for a in group if a.bottom - a.top >= 0.5 * height}
    return Candidate(start, stop, (bottom - top) / height, (right - left) / height, max(0, len(tall) - 1))


def is_digit_run(group, parts):
    """Whether these atoms may be one digit: whole pieces, at most one of them only a part of a cut piece."""
    slices = {}
    for atom in group:
        slices.setdefault(atom.piece, []).append(atom.part)
    if len(slices) > MAX_PIECES:
        return False
    partial = 0
    for piece, taken in slices.items():
        count, allowed = parts[piece]
        if len(taken) == count:
            continue
        first, stop = min(taken), max(taken) + 1
        if len(taken) != stop - first or (first, stop) not in allowed:
            return False
        partial += 1
    return partial <= 1


def candidate_features(proposal, index):
    """Candidate `index`'s terms, in the order of Scoring's weights (costs negative):
    (1 per digit, strokes cut at its left, ends that are cuts, shortness, wideness, a wide 1's
    wideness, log ratio of its top two probabilities, digit-tall pieces joined, log of the
    detector's "one digit" score)."""
    atoms, candidate, probabilities = proposal.atoms, proposal.candidates[index], proposal.scored[index]
    top_two = np.sort(probabilities)[-2:]
    cut_left = atoms[candidate.start].cut
    cut_right = atoms[candidate.stop].cut if candidate.stop < len(atoms) else 0.0
    # two touching digits read as one (a 5 and a 6 as an 8) are what the detector learnt to flag
    one_digit = 0.0 if proposal.digit_scores is None else math.log(max(float(proposal.digit_scores[index]), 1e-4))
    segment = 0.0 if proposal.segment_scores is None else math.log(max(float(proposal.segment_scores[index]), 1e-4))
    return np.array([1.0, -cut_left, -float((cut_left > 0) + (cut_right > 0)),
                     -max(0.0, SHORT - candidate.height), -max(0.0, candidate.width - WIDE_DIGIT),
                     -float(probabilities.argmax() == 1) * max(0.0, candidate.width - NARROW_ONE),
                     math.log(max(float(top_two[1]), 1e-6) / max(float(top_two[0]), 1e-6)),
                     -float(candidate.joins), one_digit, segment])


def candidate_score(proposal, index, scoring):
    """Candidate `index`'s score: its log probability plus the Scoring's weights times its terms."""
    weights = np.array(scoring[:-1])  # all but skip_cost
    confidence = math.log(max(float(proposal.scored[index].max()), 1e-6))
    return confidence + float(weights @ candidate_features(proposal, index))


def candidate_image(atoms, candidate, ink):
    """The candidate's 28x28 model input and its box (top, bottom, left, right) in the ink map."""
    group = atoms[candidate.start:candidate.stop]
    rows = np.concatenate([a.rows for a in group])
    cols = np.concatenate([a.cols for a in group])
    top, bottom, left, right = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    crop = np.zeros((bottom - top, right - left), np.float32)
    crop[rows - top, cols - left] = ink[rows, cols]
    return preprocess.crop_to_mnist(crop), (top, bottom, left, right)


def best_split(proposal: Proposal, scoring=SCORING):
    """The candidates (indices) that cover the atoms in order with the highest total score.

    Dynamic programming over the atoms: every atom is part of one digit, or left out (at
    skip_cost) when it is too short to be a digit on its own.
    """
    atoms, candidates, height = proposal.atoms, proposal.candidates, proposal.height
    count = len(atoms)
    ending = [[] for _ in range(count + 1)]
    for index, candidate in enumerate(candidates):
        ending[candidate.stop].append(index)
    best = np.full(count + 1, -np.inf)
    best[0] = 0.0
    back = [-1] * (count + 1)
    for stop in range(1, count + 1):
        atom = atoms[stop - 1]
        skipped = best[stop - 1] - scoring.skip_cost
        if atom.bottom - atom.top < SHORT * height and skipped > best[stop]:
            best[stop], back[stop] = skipped, None  # left out as a stray mark
        for index in ending[stop]:
            candidate = candidates[index]
            if np.isfinite(best[candidate.start]):
                score = best[candidate.start] + candidate_score(proposal, index, scoring)
                if score > best[stop]:
                    best[stop], back[stop] = score, index
    if not np.isfinite(best[count]):
        return []
    chosen, stop = [], count
    while stop > 0:
        if back[stop] is None:
            stop -= 1
            continue
        chosen.append(back[stop])
        stop = candidates[back[stop]].start
    return chosen[::-1]

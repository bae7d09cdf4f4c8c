"""Find the digit's pieces in an ink map: which strokes are the digit, which are specks or junk.

    find_digit(ink) -> DigitPieces(keep, box, rivals), or None when only specks and lines are there

Pieces are the connected parts of the strokes, found on a coarse grid (max-pooled, so
thin strokes survive and a broken stroke joins up). The digit is the heaviest piece
that is not a line hugging the border (a paper edge, a form's cell line, a table in a
photo); nearby pieces big enough to be strokes join it, specks do not. Pieces left out that
could have been a digit themselves (more digits, or writing beside it) are its rivals: their
ink, as a share of the digit's, is what tells "one digit" from "a digit among others".
"""

from typing import NamedTuple

import numpy as np

GRID = 160  # pieces are found on a grid at most this big (cheap, joins broken strokes)
INK_LEVEL = 0.3  # a pixel belongs to a stroke when its ink is this share of the full strength
RIVAL_MASS = 0.15  # a left-out piece with this share of the digit's ink could be a digit (or a letter) too


class Piece(NamedTuple):
    label: int  # its value in the label grid
    mass: float  # the ink it holds
    box: tuple  # (top, bottom, left, right) in grid cells, bottom and right exclusive
    tier: int  # 0: clear of the border; 1: touches it; 2: runs along it (an edge, a shadow)
    line: bool  # a thin line lying along the border (a ruled line, a paper edge): never the digit


class DigitPieces(NamedTuple):
    keep: np.ndarray  # HxW bool: the pixels of the digit's pieces
    box: tuple  # (top, bottom, left, right) of the kept pixels, bottom and right exclusive
    rivals: float  # ink of the digit-sized pieces left out, as a share of the digit's ink (0: none)


def find_digit(ink):
    """Return the digit's pixels and bounding box in an HxW ink map (0-255), or None if there is none."""
    height, width = ink.shape
    strokes = drop_border_lines(ink >= INK_LEVEL * 255)
    cell = max(1, int(np.ceil(max(height, width) / GRID)))
    occupied = pool(strokes, cell, np.logical_or)
    mass = pool(np.where(strokes, ink, 0), cell, np.add)
    labels = label_components(occupied)
    pieces = describe_pieces(labels, mass)
    main = choose_main(pieces, cell, height, width)
    if main is None:
        return None
    group = grow_group(main, pieces)
    rivals = rival_share(group, pieces, cell, height, width)
    chosen = np.isin(labels, [p.label for p in group])
    # a cell's margin keeps the anti-aliased edges, but not the pieces left out
    cells = grid_filter(chosen, np.max) & ((labels == 0) | chosen)
    keep = enlarge(cells, cell)[:height, :width] & (ink > 0)
    if cell > 1:
        keep &= ~(strokes & ~enlarge(chosen, cell)[:height, :width])
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    if rows.size == 0:
        return None
    return DigitPieces(keep, (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1), rivals)


def enlarge(grid, cell):
    """Each grid cell as a cell x cell block of pixels."""
    return grid if cell == 1 else np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)


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


def pool(array, cell, combine):
    """Combine (np.maximum, np.add) each cell x cell block into one value: a grid `cell` times smaller."""
    if cell == 1:
        return array
    height, width = array.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), array.dtype)
    padded[:height, :width] = array
    # a strided view per position in the block: ten times faster than reducing a 4-D reshape
    views = [padded[dy::cell, dx::cell] for dy in range(cell) for dx in range(cell)]
    pooled = views[0].copy()
    for view in views[1:]:
        combine(pooled, view, out=pooled)
    return pooled


def label_components(mask):
    """Label the 8-connected components of a boolean array (0 = background, then 1, 2, ...).

    Works on runs (row segments of True): runs in neighbouring rows that overlap or
    touch diagonally are joined with a union-find. A stroke picture has a few hundred
    runs, so this takes a millisecond where a per-pixel method would take tens.
    """
    rows, cols = mask.shape
    steps = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    run_rows, starts = np.nonzero(steps == 1)  # runs in row-major order; each is [start, end)
    ends = np.nonzero(steps == -1)[1]
    first = np.searchsorted(run_rows, np.arange(rows + 1)).tolist()
    starts_list, ends_list = starts.tolist(), ends.tolist()
    parent = list(range(len(starts_list)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for row in range(1, rows):
        above, below = first[row - 1], first[row]
        above_end, below_end = below, first[row + 1]
        while above < above_end and below < below_end:
            if starts_list[below] <= ends_list[above] and starts_list[above] <= ends_list[below]:
                parent[root(below)] = root(above)
            if ends_list[above] < ends_list[below]:
                above += 1
            else:
                below += 1
    roots = np.array([root(i) for i in range(len(parent))], np.int64)
    dense = np.unique(roots, return_inverse=True)[1].reshape(-1) + 1
    labels = np.zeros(rows * cols + 1, np.int32)
    # paint each run: +label at its start, -label at its end, then a running sum along the row
    flat_start = run_rows * cols + starts
    flat_end = run_rows * cols + ends
    np.add.at(labels, flat_start, dense)
    np.add.at(labels, flat_end, -dense)
    labels = np.cumsum(labels[:-1]).reshape(rows, cols)
    return labels.astype(np.int32)


def describe_pieces(labels, mass):
    """Return a Piece per component: label, mass, bounding box and tier.

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
        height, width = r.max() - r.min() + 1, c.max() - c.min() + 1
        along_rows = max((r == 0).sum(), (r == rows - 1).sum()) / cols  # lying on the top or bottom edge
        along_cols = max((c == 0).sum(), (c == cols - 1).sum()) / rows  # on the left or right edge
        spans = height >= 0.9 * rows or width >= 0.9 * cols
        touches = r.min() == 0 or c.min() == 0 or r.max() == rows - 1 or c.max() == cols - 1
        # a line: a tenth of the picture thick at most, in a picture with room for a digit beside it
        line = ((along_rows >= 1 / 3 and height <= max(1, 0.1 * rows) and rows >= 8)
                or (along_cols >= 1 / 3 and width <= max(1, 0.1 * cols) and cols >= 8))
        pieces.append(Piece(index + 1, float(mass.ravel()[members].sum()),
                            (int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1),
                            2 if max(along_rows, along_cols) >= 1 / 3 or spans else int(touches), bool(line)))
    return pieces


def choose_main(pieces, cell, height, width):
    """Return the piece most likely to be the digit, or None when there are only specks.

    Pieces away from the border come first, then pieces that merely touch it, last
    those that run along it (a table or the sheet's edge in a photo, a shadow): a
    tight crop's digit touches the border, but then nothing else competes with it.
    """
    pieces = [p for p in pieces if not p.line]
    if not pieces:  # only specks and lines along the border
        return None
    heaviest = max(pieces, key=lambda p: p.mass)
    # a candidate must be digit-sized, and not a speck next to a much bigger piece
    sized = [p for p in pieces if is_digit_sized([p], cell, height, width)
             and (p.mass >= 0.25 * heaviest.mass or extent(p.box) >= 0.25 * extent(heaviest.box))]
    clear = [p for p in sized if p.tier == 0]
    touching = [p for p in sized if p.tier == 1]
    if clear and (not touching or max(p.mass for p in clear) >= 0.25 * max(p.mass for p in touching)):
        return max(clear, key=lambda p: p.mass)
    for candidates in (touching, sized):
        if candidates:
            return max(candidates, key=lambda p: p.mass)
    return None


def grow_group(main, pieces):
    """Return the main piece plus the pieces near it that are big enough to be strokes."""
    group, box = [main], main.box
    others = [p for p in pieces if p is not main]
    changed = True
    while changed:
        changed = False
        reach = 0.3 * extent(box) + 1
        for piece in list(others):
            # edges and lines along the border never join; when the digit is clear of
            # the border (a photo or scan with margins), nothing touching the border does
            if piece.tier == 2 or piece.tier > main.tier:
                continue
            joined = (min(box[0], piece.box[0]), max(box[1], piece.box[1]),
                      min(box[2], piece.box[2]), max(box[3], piece.box[3]))
            inside = joined == box and piece.mass >= 0.01 * main.mass
            # a stroke the pen lifted from, not a frame or a line around the digit
            near = (box_gap(box, piece.box) <= reach and piece.mass >= 0.04 * main.mass
                    and extent(joined) <= 1.6 * extent(box))
            if inside or near:
                group.append(piece)
                others.remove(piece)
                box = joined
                changed = True
    return group


def rival_share(group, pieces, cell, height, width):
    """The ink of the pieces left out that are digit-sized and not along the border, over the group's.

    Only pieces clear of the border with at least RIVAL_MASS of the digit's ink count: specks and dots do not, nor
    lines and edges along the border (a ruled line, a table in a photo).
    """
    digit = sum(p.mass for p in group)
    chosen = {p.label for p in group}
    rivals = [p for p in pieces if p.label not in chosen and not p.line and p.tier == 0
              and p.mass >= RIVAL_MASS * digit and is_digit_sized([p], cell, height, width)]
    return float(sum(p.mass for p in rivals) / max(digit, 1e-9))


def extent(box):
    return max(box[1] - box[0], box[3] - box[2])


def box_gap(a, b):
    """Chebyshev distance between two boxes (0 when they touch or overlap)."""
    dy = max(0, a[0] - b[1] + 1, b[0] - a[1] + 1)
    dx = max(0, a[2] - b[3] + 1, b[2] - a[3] + 1)
    return max(dy, dx)


def is_digit_sized(group, cell, height, width):
    """A digit is more than a speck: at least 3 pixels and 1.5% of the picture's long side."""
    top = min(p.box[0] for p in group) * cell
    bottom = max(p.box[1] for p in group) * cell
    left = min(p.box[2] for p in group) * cell
    right = max(p.box[3] for p in group) * cell
    extent = max(bottom - top, right - left)
    return extent >= max(3, 0.015 * max(height, width))



def grid_filter(grid, reduce):
    padded = np.pad(grid, 1, mode="edge")
    rows, cols = grid.shape
    stack = [padded[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3)]
    return reduce(stack, axis=0)



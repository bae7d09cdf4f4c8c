"""Hostile and broken inputs: every one must give a Prediction or an ImageError, quickly and in bounded memory.

A catalogue of bad inputs (files built here with Pillow and NumPy, paths that are not
regular files, arrays and Python objects that are not images) goes through each door:

    predict()      a valid Prediction, or an inference.ImageError subclass, nothing else,
                   within TIME_LIMIT seconds (each file case is also run in a forked child
                   that reports its time and peak memory, and is killed if it hangs)
    the CLI        one run over a folder of them plus a good digit: exit code 1, one
                   "error:" line per bad file naming it, the good one still classified
    the web API    200, 400, 413 or 422 with a JSON body; never 500, never HTML

and a seeded Hypothesis fuzzer mutates valid PNG, JPEG, GIF, BMP, TIFF and WebP bytes and sends
them through each door: FUZZ_EXAMPLES images (1,000 by default; CI runs 12,000) through predict() and as many
through the API, and FUZZ_EXAMPLES / 2 through the CLI, FUZZ_BATCH files per run
(FUZZ_EXAMPLES=20000 for a deeper run).
"""

import io
import json
import math
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import decode
import inference
from conftest import ROOT
from inference import Prediction

MODEL = ROOT / "mnist_cnn_int8.tflite"
GOOD = ROOT / "sample_test_image" / "3.png"
TIME_LIMIT = 3.0  # seconds for one input, refused or classified
HANG_LIMIT = 15.0  # past this an input counts as hung, and is abandoned (or its process killed)
PEAK_RSS_MB = 400  # the most memory a process may reach while it reads any one of the catalogue files
REFUSED_GROWTH_MB = 50  # an image refused from its header ("nothing was decoded") may not cost more than this
GROWTH_MB = 200  # the most the test process's own peak may grow for one in-process input
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ_BATCH = 50  # mutated files per CLI run in the CLI fuzzer

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"no model file at {MODEL}")

# What each case must give. Every case may only ever give a Prediction or an ImageError;
# these narrow it where the contract (errors.py, decode.py) says which.
ANY = "a Prediction or an ImageError"
PREDICTION = "a Prediction"
UNREADABLE = "UnreadableImageError"  # or its subclass ImageTooLargeError
TOO_LARGE = "ImageTooLargeError"
NO_DIGIT = "NoDigitError"
NO_DIGIT_OR_PREDICTION = "NoDigitError or a Prediction"


# ----------------------------------------------------------------------------- building blocks

def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@lru_cache(maxsize=None)
def digit(size=200):
    """The sample 3 as a scan would hold it: dark ink on white paper, `size` pixels square (L)."""
    with Image.open(GOOD) as image:
        pixels = 255 - np.asarray(image.convert("L"), np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)


def digit_array(size=200):
    return np.asarray(digit(size))


def chunk(kind, data):
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ihdr(width, height, depth=8, colour=0, interlace=0):
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))


def zeros_zlib(size):
    """A valid zlib stream of `size` zero bytes, built without holding them: a few KB for any size.

    A deflate block of zeros ended by a full flush refers to nothing before it, so one
    block is repeated; the Adler-32 of n zero bytes is (n mod 65521) << 16 | 1.
    """
    block_size = 1 << 20
    repeats, rest = divmod(size, block_size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(block_size)) + compressor.flush(zlib.Z_FULL_FLUSH)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH)
    return b"\x78\xda" + block * repeats + tail + struct.pack(">I", (size % 65521) << 16 | 1)


def zero_png(width, height, depth, colour, channels):
    """A complete, valid PNG of zeros (black) of any size, a few KB long."""
    row = 1 + (width * channels * depth + 7) // 8  # the filter byte and the packed samples
    return (PNG_SIGNATURE + ihdr(width, height, depth, colour) + chunk(b"IDAT", zeros_zlib(row * height))
            + chunk(b"IEND", b""))


def png_chunks(data):
    """[(offset, kind, length)] of a PNG's chunks."""
    found, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        found.append((offset, kind, length))
        offset += 12 + length
    return found


def good_png():
    return encode(digit(200), "PNG")


def png_with(before_idat=b"", after_idat=b""):
    """The good PNG with extra chunks inserted before its first IDAT and before IEND."""
    data = good_png()
    spots = png_chunks(data)
    idat = next(offset for offset, kind, _ in spots if kind == b"IDAT")
    iend = next(offset for offset, kind, _ in spots if kind == b"IEND")
    return data[:idat] + before_idat + data[idat:iend] + after_idat + data[iend:]


def flipped(data, start, count, seed=0):
    """`data` with `count` bytes from `start` replaced by random ones."""
    rng = np.random.default_rng(seed)
    data = bytearray(data)
    data[start:start + count] = rng.integers(0, 256, len(data[start:start + count]), np.uint8).tobytes()
    return bytes(data)


def idat_middle(data):
    offset, _, length = next(spot for spot in png_chunks(data) if spot[1] == b"IDAT")
    return offset + 8 + length // 2


def png_bad_crc(kind):
    data = bytearray(good_png())
    offset, _, length = next(spot for spot in png_chunks(bytes(data)) if spot[1] == kind)
    data[offset + 8 + length] ^= 0xFF
    return bytes(data)


def png_patched_ihdr(**fields):
    """The good PNG with IHDR fields replaced (CRC recomputed, so only the values are wrong)."""
    data = good_png()
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    values = dict(width=width, height=height, depth=depth, colour=colour, compression=compression,
                  filtering=filtering, interlace=interlace)
    values.update(fields)
    body = struct.pack(">IIBBBBB", *values.values())
    return data[:8] + chunk(b"IHDR", body) + data[33:]


def png_huge_chunk_length():
    """A chunk after IHDR whose length field says 2 GB."""
    data = good_png()
    return data[:33] + struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"x" * 16 + data[33:]


def text_bomb():
    """A zTXt chunk that inflates to 256 MB of zeros (Pillow caps text chunks; it must stay a cap)."""
    return png_with(before_idat=chunk(b"zTXt", b"Comment\x00\x00" + zeros_zlib(1 << 28)))


def icc_bomb():
    """An iCCP chunk (a colour profile) that inflates to 256 MB of zeros."""
    return png_with(before_idat=chunk(b"iCCP", b"icc\x00\x00" + zeros_zlib(1 << 28)))


def apng_bogus():
    """An APNG whose acTL claims two billion frames and whose fcTL is nonsense."""
    actl = chunk(b"acTL", struct.pack(">II", 0x7FFFFFFF, 0))
    fctl = chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 60000, 60000, 50000, 50000, 1, 0, 7, 9))
    return png_with(before_idat=actl + fctl)


def exif_entry(tag, kind, count, value):
    """A big-endian EXIF (TIFF) block with one IFD entry, as it sits in a PNG's eXIf chunk."""
    return b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHI", tag, kind, count) + value + bytes(4)


def png_exif(exif_bytes, where="before"):
    body = chunk(b"eXIf", exif_bytes)
    return png_with(before_idat=body) if where == "before" else png_with(after_idat=body)


def jpeg(image=None, **options):
    return encode(image if image is not None else digit(200), "JPEG", quality=options.pop("quality", 90), **options)


def jpeg_markers(data):
    """{marker byte: offset} of the first occurrence of each marker in a JPEG's header."""
    found, offset = {}, 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        found.setdefault(marker, offset)
        if marker == 0xDA:
            break
        offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]
    return found


def jpeg_sof_size(width, height):
    """A small real JPEG whose SOF says it is width x height (the scan data is for 200x200)."""
    data = bytearray(jpeg())
    sof = jpeg_markers(bytes(data))[0xC0]
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_scan_garbage():
    data = jpeg()
    start = jpeg_markers(data)[0xDA] + 20
    middle = start + (len(data) - start) // 2
    return flipped(data, middle, 64, seed=3)


def jpeg_header_garbage():
    data = jpeg()
    dqt = jpeg_markers(data)[0xDB]
    return flipped(data, dqt + 6, 40, seed=4)


def jpeg_with_exif(orientation=None, raw=None):
    image = digit(200)
    if raw is not None:
        return jpeg(image, exif=raw)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(image, exif=exif.tobytes())


def jpeg_8000x6000():
    """A real 8000x6000 JPEG (48 megapixels): a big dark 3 on white."""
    canvas = Image.new("L", (8000, 6000), 255)
    canvas.paste(digit(28).resize((4000, 4000), Image.Resampling.BILINEAR), (2000, 1000))
    return jpeg(canvas, quality=75)


def gif_animated():
    frames = [digit(100).convert("P")] + [Image.new("P", (100, 100), i * 40) for i in range(1, 5)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def gif_screen(width, height):
    """A 1x1 GIF whose logical screen says width x height."""
    data = bytearray(encode(Image.new("L", (1, 1), 255), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def tiff(image, **options):
    return encode(image, "TIFF", **options)


def tiff_multipage():
    pages = [digit(100), Image.new("L", (300, 50), 255), Image.new("RGB", (10, 10), "red")]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def tiff_header(width, height, bits=8, samples=1, data=b"\x00" * 16):
    """A little-endian TIFF whose IFD says width x height, with only a few bytes of strip data."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, samples), (278, 4, 1, height),
               (279, 4, 1, width * height * samples * bits // 8 & 0xFFFFFFFF)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_offset
        body += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                          else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + data


def bmp_header(width, height, bits=24, data=b"\x00" * 64):
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(data), 0, 0, 14 + len(info)) + info + data


def webp_animated():
    frames = [digit(100)] + [Image.new("L", (100, 100), 40 * i) for i in range(1, 4)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)


def noise(size=200, seed=1):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), np.uint8))


def ruled_line(where, size=200, thickness=2):
    image = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(image)
    last = size - 1
    boxes = {"top": (0, 0, last, thickness - 1), "bottom": (0, size - thickness, last, last),
             "left": (0, 0, thickness - 1, last), "right": (size - thickness, 0, last, last),
             "frame": None, "middle": (0, size // 2, last, size // 2 + thickness - 1)}
    if where == "frame":
        draw.rectangle((0, 0, last, last), outline=0, width=thickness)
    else:
        draw.rectangle(boxes[where], fill=0)
    return image


def float_image(values):
    return Image.fromarray(np.asarray(values, np.float32))


def with_nan_inf(array):
    array = np.asarray(array, np.float32).copy()
    array[::7, ::5] = np.nan
    array[3::11, 2::9] = np.inf
    array[5::13, 1::7] = -np.inf
    return array


def cmyk_jpeg_tiff():
    return tiff(digit(100).convert("CMYK"), compression="jpeg")


def tga_rle():
    return encode(digit(100), "TGA", compression="tga_rle")


def ppm_plain_junk():
    return b"P2\n# a comment\n4 4\n255\n0 0 0 0\n0 255 x 0\n0 255 255\n"


def truncated(data, at):
    return data[:at]


# ----------------------------------------------------------------------------- the catalogue
# File cases: file name -> (a function that returns its bytes, what predict() must give).

FILE_CASES = {
    "empty.png": (lambda: b"", UNREADABLE),
    "random.png": (lambda: np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes(), UNREADABLE),
    "random_after_png_signature.png": (
        lambda: PNG_SIGNATURE + np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes(), UNREADABLE),
    "text.png": (lambda: b"This is not an image, only some text saved with a .png name.\n" * 20, UNREADABLE),
    "svg_text.png": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
                             b'<text x="5" y="20">3</text></svg>', UNREADABLE),
    "html.png": (lambda: b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", UNREADABLE),
    "eps_postscript.png": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n", UNREADABLE),
    "pdf.png": (lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", UNREADABLE),
    "ico_format.png": (lambda: encode(digit(32), "ICO"), UNREADABLE),  # not a format read here
    "jpeg2000_format.png": (lambda: encode(digit(64).convert("RGB"), "JPEG2000"), UNREADABLE),
    "zeros_4k.png": (lambda: bytes(4096), UNREADABLE),
    # PNG: truncated, corrupted, lying headers
    "png_truncated_4.png": (lambda: truncated(good_png(), 4), UNREADABLE),
    "png_truncated_8.png": (lambda: truncated(good_png(), 8), UNREADABLE),
    "png_truncated_20.png": (lambda: truncated(good_png(), 20), UNREADABLE),
    "png_truncated_33.png": (lambda: truncated(good_png(), 33), UNREADABLE),
    "png_truncated_45.png": (lambda: truncated(good_png(), 45), UNREADABLE),
    "png_truncated_mid_idat.png": (lambda: truncated(good_png(), idat_middle(good_png())), UNREADABLE),
    "png_truncated_no_iend.png": (lambda: truncated(good_png(), len(good_png()) - 12), ANY),
    "png_truncated_last_byte.png": (lambda: truncated(good_png(), len(good_png()) - 1), ANY),
    "png_bad_ihdr_crc.png": (lambda: png_bad_crc(b"IHDR"), ANY),
    "png_bad_idat_crc.png": (lambda: png_bad_crc(b"IDAT"), ANY),
    "png_idat_flipped.png": (lambda: flipped(good_png(), idat_middle(good_png()), 32, seed=2), ANY),
    "png_idat_zlib_header_broken.png": (
        lambda: flipped(good_png(), next(o for o, k, _ in png_chunks(good_png()) if k == b"IDAT") + 8, 2, 5), ANY),
    "png_no_idat.png": (lambda: PNG_SIGNATURE + ihdr(100, 100) + chunk(b"IEND", b""), UNREADABLE),
    "png_width_0.png": (lambda: png_patched_ihdr(width=0), UNREADABLE),
    "png_depth_3.png": (lambda: png_patched_ihdr(depth=3), UNREADABLE),
    "png_colour_type_5.png": (lambda: png_patched_ihdr(colour=5), UNREADABLE),
    "png_interlace_9.png": (lambda: png_patched_ihdr(interlace=9), ANY),
    "png_ihdr_says_rgb.png": (lambda: png_patched_ihdr(colour=2), ANY),  # data is for grey: too short
    "png_ihdr_says_taller.png": (lambda: png_patched_ihdr(height=3000), ANY),
    "png_chunk_length_2gb.png": (png_huge_chunk_length, ANY),
    "png_ztxt_bomb.png": (text_bomb, ANY),
    "png_iccp_bomb.png": (icc_bomb, ANY),
    "png_apng_bogus_actl.png": (apng_bogus, ANY),
    "png_exif_garbage.png": (lambda: png_exif(b"MM\x00*garbage-garbage"), ANY),
    "png_exif_after_idat_orientation_99.png": (
        lambda: png_exif(exif_entry(0x0112, 3, 1, b"\x00\x63\x00\x00"), "after"), ANY),
    "png_exif_orientation_entry_points_past_end.png": (
        lambda: png_exif(exif_entry(0x0112, 3, 1000, b"\x7f\xff\xff\xff")), ANY),
    "png_adam7_interlaced.png": (lambda: png_interlaced(), PREDICTION),
    # decompression bombs and headers over the pixel budget: refused from the header
    "png_bomb_1bit_20000x20000.png": (lambda: zero_png(20000, 20000, 1, 0, 1), TOO_LARGE),
    "png_16bit_8000x8000.png": (lambda: zero_png(8000, 8000, 16, 0, 1), TOO_LARGE),
    "png_rgba_10000x10000.png": (lambda: zero_png(10000, 10000, 8, 6, 4), TOO_LARGE),
    "png_header_100000x100000.png": (
        lambda: PNG_SIGNATURE + ihdr(100000, 100000) + chunk(b"IDAT", zlib.compress(bytes(1000)))
        + chunk(b"IEND", b""), TOO_LARGE),
    "png_header_7000x7000_no_data.png": (
        lambda: PNG_SIGNATURE + ihdr(7000, 7000) + chunk(b"IDAT", zlib.compress(bytes(100)))
        + chunk(b"IEND", b""), TOO_LARGE),
    # JPEG
    "jpeg_truncated_header.jpg": (lambda: truncated(jpeg(), 100), UNREADABLE),
    "jpeg_truncated_half.jpg": (lambda: truncated(jpeg(), len(jpeg()) // 2), ANY),
    "jpeg_truncated_no_eoi.jpg": (lambda: truncated(jpeg(), len(jpeg()) - 2), ANY),
    "jpeg_garbage_in_scan.jpg": (jpeg_scan_garbage, ANY),
    "jpeg_garbage_in_tables.jpg": (jpeg_header_garbage, ANY),
    "jpeg_progressive_truncated.jpg": (lambda: truncated(jpeg(progressive=True), len(jpeg(progressive=True)) // 3),
                                       ANY),
    "jpeg_cmyk.jpg": (lambda: jpeg(digit(100).convert("CMYK")), ANY),
    "jpeg_sof_says_8000x6000.jpg": (lambda: jpeg_sof_size(8000, 6000), ANY),
    "jpeg_sof_says_65000x65000.jpg": (lambda: jpeg_sof_size(65000, 65000), UNREADABLE),
    "jpeg_sof_says_0x0.jpg": (lambda: jpeg_sof_size(0, 0), UNREADABLE),
    "jpeg_exif_orientation_99.jpg": (lambda: jpeg_with_exif(99), PREDICTION),
    "jpeg_exif_orientation_0.jpg": (lambda: jpeg_with_exif(0), PREDICTION),
    "jpeg_exif_orientation_65535.jpg": (lambda: jpeg_with_exif(65535), PREDICTION),
    "jpeg_exif_orientation_text.jpg": (
        lambda: jpeg_with_exif(raw=b"Exif\x00\x00" + exif_entry(0x0112, 2, 2, b"6\x00\x00\x00")), PREDICTION),
    "jpeg_exif_orientation_rational.jpg": (
        lambda: jpeg_with_exif(raw=b"Exif\x00\x00" + exif_entry(0x0112, 5, 1, b"\x00\x00\x00\x1a") + bytes(8)),
        PREDICTION),
    "jpeg_exif_garbage.jpg": (lambda: jpeg_with_exif(raw=b"Exif\x00\x00MM\x00*\xff\xff\xff\xffjunk"), ANY),
    "jpeg_8000x6000.jpg": (jpeg_8000x6000, ANY),
    "jpeg_1x1.jpg": (lambda: jpeg(Image.new("L", (1, 1), 0)), ANY),
    # GIF
    "gif_animated.gif": (gif_animated, ANY),
    "gif_truncated.gif": (lambda: truncated(gif_animated(), len(gif_animated()) // 2), ANY),
    "gif_screen_60000x60000.gif": (lambda: gif_screen(60000, 60000), TOO_LARGE),
    "gif_screen_8000x8000.gif": (lambda: gif_screen(8000, 8000), TOO_LARGE),
    "gif_screen_0x0.gif": (lambda: gif_screen(0, 0), ANY),
    # TIFF
    "tiff_multipage.tif": (tiff_multipage, ANY),
    "tiff_I16.tif": (lambda: tiff(Image.fromarray(digit_array(100).astype(np.uint16) * 257)), ANY),
    "tiff_I32_negative.tif": (lambda: tiff(Image.fromarray(digit_array(100).astype(np.int32) * -70000)), ANY),
    "tiff_F_nan_inf.tif": (lambda: tiff(float_image(with_nan_inf(digit_array(100) / 255.0))), ANY),
    "tiff_F_all_nan.tif": (lambda: tiff(float_image(np.full((50, 50), np.nan))), NO_DIGIT),
    "tiff_F_huge.tif": (lambda: tiff(float_image(digit_array(100) * np.float32(1e35))), ANY),
    "tiff_cmyk_jpeg.tif": (cmyk_jpeg_tiff, ANY),
    "tiff_group4.tif": (lambda: tiff(digit(200).convert("1"), compression="group4"), ANY),
    "tiff_lzw_corrupt_strip.tif": (  # libtiff says "Using code not yet in table" on stderr
        lambda: flipped(tiff(digit(200), compression="tiff_lzw"), 7277, 16, seed=2), ANY),
    "tiff_lzw_truncated.tif": (lambda: truncated(tiff(digit(200), compression="tiff_lzw"), 300), ANY),
    "tiff_header_60000x60000.tif": (lambda: tiff_header(60000, 60000), TOO_LARGE),
    "tiff_header_8000x8000.tif": (lambda: tiff_header(8000, 8000), TOO_LARGE),
    "tiff_header_0x0.tif": (lambda: tiff_header(0, 0), UNREADABLE),
    "tiff_header_bits_13.tif": (lambda: tiff_header(100, 100, bits=13), ANY),
    # BMP, WebP, PNM, TGA
    "bmp_truncated.bmp": (lambda: truncated(encode(digit(100), "BMP"), 500), ANY),
    "bmp_header_8000x8000.bmp": (lambda: bmp_header(8000, 8000), TOO_LARGE),
    "bmp_header_negative_height.bmp": (lambda: bmp_header(100, -100), ANY),
    "bmp_header_0x0.bmp": (lambda: bmp_header(0, 0), UNREADABLE),
    "bmp_header_bits_7.bmp": (lambda: bmp_header(10, 10, bits=7), UNREADABLE),
    "webp_truncated.webp": (lambda: truncated(encode(digit(100), "WEBP"), 60), ANY),
    "webp_animated.webp": (webp_animated, ANY),
    "webp_garbage.webp": (lambda: flipped(encode(digit(100), "WEBP", quality=80), 40, 30, seed=6), ANY),
    "pgm_16bit.pgm": (lambda: encode(Image.fromarray(digit_array(100).astype(np.uint16) * 257), "PPM"), ANY),
    "pgm_header_8000x8000.pgm": (lambda: b"P5\n8000 8000\n255\n" + bytes(64), TOO_LARGE),
    "pgm_header_huge.pgm": (lambda: b"P5 1000000 1000000 65535\n" + bytes(64), TOO_LARGE),
    "pgm_plain_junk.pgm": (ppm_plain_junk, ANY),
    "ppm_maxval_0.ppm": (lambda: b"P6\n4 4\n0\n" + bytes(48), ANY),
    "tga_rle.tga": (tga_rle, ANY),
    "tga_truncated.tga": (lambda: truncated(tga_rle(), 40), ANY),
    # odd shapes and modes
    "1x1.png": (lambda: encode(Image.new("L", (1, 1), 0), "PNG"), ANY),
    "1x1_white.png": (lambda: encode(Image.new("L", (1, 1), 255), "PNG"), ANY),
    "1x500.png": (lambda: encode(Image.new("L", (1, 500), 0), "PNG"), ANY),
    "500x1.png": (lambda: encode(Image.new("L", (500, 1), 0), "PNG"), ANY),
    "3x5000_line_digit.png": (lambda: encode(digit(100).resize((3, 5000)), "PNG"), ANY),
    "palette_transparent.png": (lambda: encode(palette_transparent(), "PNG"), ANY),
    "palette_all_transparent.png": (lambda: encode(palette_transparent(everything=True), "PNG"), ANY),
    "la.png": (lambda: encode(Image.merge("LA", (digit(100), digit(100))), "PNG"), ANY),
    "rgba_all_transparent.png": (lambda: encode(Image.new("RGBA", (100, 100), (0, 0, 0, 0)), "PNG"), ANY),
    "png_16bit_rgba.png": (lambda: png_16bit_rgba(), ANY),
    "png_1bit.png": (lambda: encode(digit(200).convert("1"), "PNG"), ANY),
    # no digit in it
    "blank_white.png": (lambda: encode(Image.new("L", (200, 200), 255), "PNG"), NO_DIGIT),
    "blank_black.png": (lambda: encode(Image.new("L", (200, 200), 0), "PNG"), NO_DIGIT),
    "uniform_grey.png": (lambda: encode(Image.new("L", (200, 200), 128), "PNG"), NO_DIGIT),
    "uniform_grey_rgb.jpg": (lambda: jpeg(Image.new("RGB", (300, 200), (120, 130, 140))), NO_DIGIT),
    "noise.png": (lambda: encode(noise(), "PNG"), NO_DIGIT_OR_PREDICTION),
    "noise_rgb.jpg": (lambda: jpeg(Image.merge("RGB", [noise(seed=s) for s in (1, 2, 3)])), NO_DIGIT_OR_PREDICTION),
    "ruled_line_top.png": (lambda: encode(ruled_line("top"), "PNG"), NO_DIGIT),
    "ruled_line_bottom.png": (lambda: encode(ruled_line("bottom"), "PNG"), NO_DIGIT),
    "ruled_line_left.png": (lambda: encode(ruled_line("left"), "PNG"), NO_DIGIT),
    "ruled_line_right_1px.png": (lambda: encode(ruled_line("right", thickness=1), "PNG"), NO_DIGIT),
    "ruled_line_top_28px.png": (lambda: encode(ruled_line("top", size=28, thickness=1), "PNG"), NO_DIGIT),
    "ruled_frame.png": (lambda: encode(ruled_line("frame"), "PNG"), NO_DIGIT),
    "ruled_line_middle.png": (lambda: encode(ruled_line("middle"), "PNG"), NO_DIGIT_OR_PREDICTION),
}


def png_interlaced():
    """The good digit as an Adam7-interlaced PNG (Pillow writes none, so the passes are built here)."""
    pixels = digit_array(200)
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    raw = b"".join(b"".join(b"\x00" + row.tobytes() for row in pixels[top::dy, left::dx])
                   for top, left, dy, dx in passes if pixels[top::dy, left::dx].size)
    return (PNG_SIGNATURE + ihdr(200, 200, interlace=1) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def palette_transparent(everything=False):
    image = digit(100).convert("P")
    image.info["transparency"] = bytes(256) if everything else 0
    return image


def png_16bit_rgba():
    pixels = np.repeat(digit_array(64)[..., None].astype(">u2") * 257, 4, axis=2)
    pixels[..., 3] = 65535
    return PNG_SIGNATURE + ihdr(64, 64, 16, 6) + chunk(
        b"IDAT", zlib.compress(b"".join(b"\x00" + row.tobytes() for row in pixels))) + chunk(b"IEND", b"")


# Path cases: a name -> (a function of the catalogue folder that returns a path, expectation).
# Those named *.png also sit in the catalogue folder, for the CLI.

def make_fifo(folder):
    path = folder / "fifo.png"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def make_socket(folder):
    path = folder / "socket.png"
    if not path.exists():
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    return str(path)


def make_link(folder, name, target):
    path = folder / name
    if not os.path.lexists(path):
        os.symlink(target, path)
    return str(path)


def make_folder(folder):
    path = folder / "folder.png"
    path.mkdir(exist_ok=True)
    return str(path)


PATH_CASES = {
    "fifo.png": (make_fifo, UNREADABLE),
    "socket.png": (make_socket, UNREADABLE),
    "link_loop.png": (lambda folder: make_link(folder, "link_loop.png", "link_loop.png"), UNREADABLE),
    "link_dangling.png": (lambda folder: make_link(folder, "link_dangling.png", "nowhere.png"), UNREADABLE),
    "link_to_dev_zero.png": (lambda folder: make_link(folder, "link_to_dev_zero.png", "/dev/zero"), UNREADABLE),
    "folder.png": (make_folder, UNREADABLE),
    "folder path": (lambda folder: str(folder), UNREADABLE),
    "missing file": (lambda folder: str(folder / "no such file.png"), UNREADABLE),
    "empty string": (lambda folder: "", UNREADABLE),
    "NUL byte in path": (lambda folder: str(folder / "a\0b.png"), UNREADABLE),
    "name over 255 bytes": (lambda folder: str(folder / ("x" * 300 + ".png")), UNREADABLE),
    "path over 4096 bytes": (lambda folder: "/" + "a/" * 3000 + "x.png", UNREADABLE),
    "/dev/zero": (lambda folder: "/dev/zero", UNREADABLE),
    "/dev/null": (lambda folder: "/dev/null", UNREADABLE),
    "/dev/urandom": (lambda folder: "/dev/urandom", UNREADABLE),
    "/proc/self/status (a file of size 0)": (lambda folder: "/proc/self/status", UNREADABLE),
    "/ (the root folder)": (lambda folder: "/", UNREADABLE),
}


# In-memory cases: a name -> (a function that returns the input, expectation).

class ReadFails(io.RawIOBase):
    def readable(self):
        return True

    def readinto(self, buffer):
        raise OSError("the disk went away")


class Unseekable(io.RawIOBase):
    """A stream that cannot seek (a socket or a pipe), of a valid PNG."""

    def __init__(self, data):
        self.inner = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        return self.inner.readinto(buffer)

    def seekable(self):
        return False

    def seek(self, *args):
        raise io.UnsupportedOperation("seek")

    def tell(self):
        raise io.UnsupportedOperation("tell")


def closed_file():
    stream = io.BytesIO(good_png())
    stream.close()
    return stream


def lazy_pil(data):
    """A PIL image opened lazily on broken bytes: nothing decoded until someone loads it."""
    return Image.open(io.BytesIO(data))


def closed_pil():
    image = Image.open(io.BytesIO(good_png()))
    image.close()
    return image


def pil_from_array(mode, array):
    return Image.fromarray(np.ascontiguousarray(array)).convert(mode) if mode else Image.fromarray(array)


MEMORY_CASES = {
    # Python objects that are not images
    "None": (lambda: None, UNREADABLE),
    "int 42": (lambda: 42, UNREADABLE),
    "float": (lambda: 3.5, UNREADABLE),
    "True": (lambda: True, UNREADABLE),
    "dict": (lambda: {"image": "3.png"}, UNREADABLE),
    "set": (lambda: {1, 2, 3}, UNREADABLE),
    "object()": (lambda: object(), UNREADABLE),
    "a generator": (lambda: (b for b in [good_png()]), UNREADABLE),
    "a class": (lambda: Image.Image, UNREADABLE),
    # bytes-like and streams
    "empty bytes": (lambda: b"", UNREADABLE),
    "bytearray of garbage": (lambda: bytearray(b"\x00\xff" * 500), UNREADABLE),
    "memoryview of a PNG": (lambda: memoryview(good_png()), ANY),
    "empty BytesIO": (lambda: io.BytesIO(), UNREADABLE),
    "text stream": (lambda: io.StringIO("not an image"), UNREADABLE),
    "text stream of PNG-looking text": (lambda: io.StringIO(good_png().decode("latin-1")), UNREADABLE),
    "closed file object": (closed_file, UNREADABLE),
    "stream whose read fails": (lambda: io.BufferedReader(ReadFails()), UNREADABLE),
    "unseekable stream of a PNG": (lambda: Unseekable(good_png()), ANY),
    "BytesIO at its end": (lambda: seek_to_end(io.BytesIO(good_png())), ANY),
    # PIL images: odd modes, empty, closed, lazily opened on broken data
    "PIL PA": (lambda: Image.merge("PA", (digit(100).convert("P"), digit(100))), ANY),
    "PIL RGBa": (lambda: Image.merge("RGBA", (*[digit(100)] * 3, digit(100))).convert("RGBa"), ANY),
    "PIL La": (lambda: Image.merge("LA", (digit(100), digit(100))).convert("La"), ANY),
    "PIL LA transparent": (lambda: Image.new("LA", (100, 100), (0, 0)), ANY),
    "PIL P with transparency": (palette_transparent, ANY),
    "PIL I;16B": (lambda: Image.frombytes("I;16B", (100, 100),
                                          (digit_array(100).astype(">u2") * 257).tobytes()), ANY),
    "PIL I negative": (
        lambda: Image.fromarray((digit_array(100).astype(np.int64) * 8_000_000 - 2**31 + 1).astype(np.int32)), ANY),
    "PIL F with NaN and inf": (lambda: float_image(with_nan_inf(digit_array(100))), ANY),
    "PIL F all inf": (lambda: float_image(np.full((40, 40), np.inf)), NO_DIGIT),
    "PIL HSV": (lambda: digit(100).convert("RGB").convert("HSV"), ANY),
    "PIL LAB": (lambda: Image.merge("LAB", (digit(100),) * 3), ANY),
    "PIL YCbCr": (lambda: digit(100).convert("YCbCr"), ANY),
    "PIL CMYK": (lambda: digit(100).convert("CMYK"), ANY),
    "PIL 1": (lambda: digit(100).convert("1"), ANY),
    "PIL 0x0": (lambda: Image.new("L", (0, 0)), UNREADABLE),
    "PIL 0x50": (lambda: Image.new("L", (0, 50)), UNREADABLE),
    "PIL 1x1": (lambda: Image.new("L", (1, 1)), ANY),
    "PIL 7000x6000 (over the budget)": (lambda: Image.new("L", (7000, 6000), 255), TOO_LARGE),
    "PIL closed image": (closed_pil, UNREADABLE),
    "PIL lazily opened truncated PNG": (lambda: lazy_pil(truncated(good_png(), idat_middle(good_png()))), ANY),
    "PIL lazily opened PNG with damaged IDAT": (
        lambda: lazy_pil(flipped(good_png(), idat_middle(good_png()), 32, seed=2)), ANY),
    "PIL lazily opened 16-bit 8000x8000 PNG": (lambda: lazy_pil(zero_png(8000, 8000, 16, 0, 1)), TOO_LARGE),
    "PIL lazily opened truncated JPEG": (lambda: lazy_pil(truncated(jpeg(), len(jpeg()) // 2)), ANY),
    "PIL animated GIF seeked to its last frame": (
        lambda: seek_to_frame(lazy_pil(gif_animated()), lazy_pil(gif_animated()).n_frames - 1), ANY),
    # NumPy arrays
    "array 0x0": (lambda: np.zeros((0, 0)), UNREADABLE),
    "array 0x28": (lambda: np.zeros((0, 28), np.uint8), UNREADABLE),
    "array 28x28x0": (lambda: np.zeros((28, 28, 0), np.uint8), UNREADABLE),
    "array 0-d": (lambda: np.array(5), UNREADABLE),
    "array 1-d": (lambda: np.zeros(784, np.uint8), UNREADABLE),
    "array 5-d": (lambda: np.zeros((1, 1, 1, 28, 28), np.uint8), UNREADABLE),
    "array 4-d 2x30x30x3": (lambda: np.zeros((2, 30, 30, 3), np.uint8), UNREADABLE),
    "array 28x28x5": (lambda: np.zeros((28, 28, 5), np.uint8), UNREADABLE),
    "array complex": (lambda: digit_array(100).astype(np.complex128), UNREADABLE),
    "array object of numbers": (lambda: digit_array(100).astype(object), UNREADABLE),
    "array object of objects": (lambda: np.array([[object()] * 28] * 28, dtype=object), UNREADABLE),
    "array of strings": (lambda: np.full((28, 28), "ink"), UNREADABLE),
    "array of bytes": (lambda: np.full((28, 28), b"ink"), UNREADABLE),
    "array datetime64": (lambda: np.zeros((28, 28), "datetime64[s]"), UNREADABLE),
    "array timedelta64": (lambda: np.zeros((28, 28), "timedelta64[s]"), ANY),
    "array structured": (lambda: np.zeros((28, 28), [("a", np.uint8), ("b", np.float32)]), UNREADABLE),
    "array void": (lambda: np.zeros((28, 28), "V4"), UNREADABLE),
    "array bool digit": (lambda: digit_array(100) < 128, ANY),
    "array bool all True": (lambda: np.ones((50, 50), bool), NO_DIGIT),
    "array float NaN and inf": (lambda: with_nan_inf(digit_array(100) / 255.0), ANY),
    "array float all NaN": (lambda: np.full((50, 50), np.nan), NO_DIGIT),
    "array float all -inf": (lambda: np.full((50, 50), -np.inf), NO_DIGIT),
    "array float64 1e308": (lambda: digit_array(100) * 1e306, ANY),
    "array float64 denormal": (lambda: digit_array(100) * 1e-320, ANY),
    "array float16": (lambda: (digit_array(100) / 255.0).astype(np.float16), ANY),
    "array float big-endian": (lambda: digit_array(100).astype(">f8"), ANY),
    "array longdouble": (lambda: digit_array(100).astype(np.longdouble), ANY),
    "array int64 huge": (lambda: digit_array(100).astype(np.int64) * 2**54, ANY),
    "array int64 extremes": (lambda: np.where(digit_array(100) < 128, np.iinfo(np.int64).min,
                                              np.iinfo(np.int64).max), ANY),
    "array uint64 max": (lambda: np.where(digit_array(100) < 128, 0, np.iinfo(np.uint64).max).astype(np.uint64),
                         ANY),
    "array int8 negative": (lambda: (digit_array(100) // 2 - 128).astype(np.int8), ANY),
    "array int16 negative": (lambda: -digit_array(100).astype(np.int16), ANY),
    "array non-contiguous": (lambda: digit_array(200)[::2, ::-2], ANY),
    "array masked": (lambda: np.ma.masked_less(digit_array(100), 10), ANY),
    "array 1x1": (lambda: np.zeros((1, 1), np.uint8), ANY),
    "array 1x5000": (lambda: np.zeros((1, 5000), np.uint8), ANY),
    "array 5000x1": (lambda: np.full((5000, 1), 255, np.uint8), ANY),
    "array 2x2000000 noise": (lambda: np.random.default_rng(2).integers(0, 256, (2, 2_000_000), np.uint8), ANY),
    "array HxWx2 transparent": (lambda: np.zeros((50, 50, 2), np.uint8), ANY),
    "array HxWx4 float alpha NaN": (lambda: np.dstack([digit_array(50) / 255.0] * 3 + [np.full((50, 50), np.nan)]),
                                    ANY),
    "array noise": (lambda: np.asarray(noise()), NO_DIGIT_OR_PREDICTION),
    "array uniform": (lambda: np.full((100, 100), 77, np.uint8), NO_DIGIT),
    "stack 3x28x28 complex": (lambda: np.zeros((3, 28, 28), np.complex64), UNREADABLE),
    "stack 3x28x28 float NaN": (lambda: np.full((3, 28, 28), np.nan, np.float32), ANY),
    "stack 2x28x28 int64 huge": (lambda: np.full((2, 28, 28), 2**62, np.int64), ANY),
    "stack 0x28x28": (lambda: np.zeros((0, 28, 28), np.uint8), ANY),
    "list with None": (lambda: [str(GOOD), None], UNREADABLE),
    "list with a folder": (lambda: [str(GOOD), str(ROOT)], UNREADABLE),
}


def seek_to_end(stream):
    stream.seek(0, io.SEEK_END)
    return stream


def seek_to_frame(image, frame):
    image.seek(frame)
    return image


# ----------------------------------------------------------------------------- fixtures and checks

@pytest.fixture(scope="session")
def catalogue(tmp_path_factory):
    """A folder with every file case and every path case named *.png; {case name: path}."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, (build, _) in FILE_CASES.items():
        (folder / name).write_bytes(build())
        paths[name] = str(folder / name)
    for name, (make, _) in PATH_CASES.items():
        paths[name] = make(folder)
    return folder, paths


@pytest.fixture(scope="session")
def warm_model():
    inference.get_classifier(None)  # the first call loads the model: not part of any case's time


def check_prediction(prediction):
    assert isinstance(prediction, Prediction), f"not a Prediction: {prediction!r}"
    assert isinstance(prediction.digit, int) and 0 <= prediction.digit <= 9
    assert len(prediction.probabilities) == 10
    assert all(isinstance(p, float) and math.isfinite(p) and 0 <= p <= 1 for p in prediction.probabilities)
    assert sum(prediction.probabilities) == pytest.approx(1, abs=1e-3)
    assert prediction.confidence == max(prediction.probabilities) == prediction.probabilities[prediction.digit]


def kind_of(result):
    """'prediction', 'predictions' or the error's class name."""
    if isinstance(result, BaseException):
        return type(result).__name__
    return "predictions" if isinstance(result, list) else "prediction"


def matches(result, expect):
    """Whether a result (a Prediction, a list of them, or an exception) is what `expect` allows."""
    if isinstance(result, (Prediction, list)):
        return expect in (ANY, PREDICTION, NO_DIGIT_OR_PREDICTION)
    errors = {ANY: inference.ImageError, UNREADABLE: inference.UnreadableImageError,
              TOO_LARGE: inference.ImageTooLargeError, NO_DIGIT: inference.NoDigitError,
              NO_DIGIT_OR_PREDICTION: inference.NoDigitError, PREDICTION: ()}[expect]
    return isinstance(result, errors)


def run_predict(source, unblock=None):
    """predict(source) in a thread: (result or exception, seconds, traceback text, peak growth in MB).

    A call still running after HANG_LIMIT seconds fails the test (`unblock`, if given, is
    called first, to free a thread stuck on a FIFO, so that it does not stay stuck).
    """
    import traceback

    box = {}

    def call():
        start = time.perf_counter()
        try:
            box["result"] = inference.predict(source)
        except BaseException as error:  # noqa: B036 - anything at all is reported
            box["result"] = error
            box["traceback"] = traceback.format_exc()
        box["seconds"] = time.perf_counter() - start

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(HANG_LIMIT)
    if thread.is_alive():
        if unblock is not None:
            unblock()
        pytest.fail(f"predict({source!r:.80}) still running after {HANG_LIMIT} s: it hangs")
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    return box["result"], box["seconds"], box.get("traceback", ""), growth


def check_outcome(label, result, seconds, trace, growth, expect):
    if isinstance(result, BaseException) and not isinstance(result, inference.ImageError):
        pytest.fail(f"{label}: predict() raised {type(result).__name__}, not an ImageError:\n{trace}")
    if isinstance(result, list):
        for item in result:
            check_prediction(item)
    elif isinstance(result, Prediction):
        check_prediction(result)
    else:
        message = str(result)
        assert message.strip() and "\n" not in message, f"{label}: the message is not one line: {message!r}"
    assert matches(result, expect), (
        f"{label}: expected {expect}, got {kind_of(result)}: {result}")
    assert seconds < TIME_LIMIT, f"{label}: took {seconds:.2f} s"
    assert growth < GROWTH_MB, f"{label}: the process's peak memory grew by {growth:.0f} MB"


def unblock_fifo(path):
    def unblock():
        try:  # a reader stuck in open() is released by a writer that opens and closes
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    return unblock


# ----------------------------------------------------------------------------- predict()

@pytest.mark.parametrize("name", list(FILE_CASES) + list(PATH_CASES))
def test_predict_file(name, catalogue, warm_model):
    _, paths = catalogue
    path = paths[name]
    expect = FILE_CASES[name][1] if name in FILE_CASES else PATH_CASES[name][1]
    result, seconds, trace, growth = run_predict(path, unblock_fifo(path) if name == "fifo.png" else None)
    check_outcome(name, result, seconds, trace, growth, expect)


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_predict_bytes(name, catalogue, warm_model):
    """The same files as bytes, as the web app and a caller with an upload hold them."""
    data = Path(catalogue[1][name]).read_bytes()
    result, seconds, trace, growth = run_predict(data)
    check_outcome(f"{name} (bytes)", result, seconds, trace, growth, FILE_CASES[name][1])


@pytest.mark.parametrize("name", list(MEMORY_CASES))
def test_predict_in_memory(name, warm_model):
    build, expect = MEMORY_CASES[name]
    result, seconds, trace, growth = run_predict(build())
    check_outcome(name, result, seconds, trace, growth, expect)


def test_unreadable_folder(tmp_path, warm_model):
    if os.geteuid() == 0:
        pytest.skip("root reads any folder: permissions cannot be tested")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "3.png").write_bytes(GOOD.read_bytes())
    unreadable = tmp_path / "unreadable.png"
    unreadable.write_bytes(GOOD.read_bytes())
    locked.chmod(0)
    unreadable.chmod(0)
    try:
        for path in (locked / "3.png", unreadable):
            result, seconds, trace, growth = run_predict(str(path))
            check_outcome(str(path), result, seconds, trace, growth, UNREADABLE)
    finally:
        locked.chmod(0o755)
        unreadable.chmod(0o644)


def test_predict_each_goes_on_past_every_bad_input(catalogue, warm_model):
    """One predict_each() over every hostile path and the good sample: one Outcome each, in order."""
    _, paths = catalogue
    sources = [paths[name] for name in FILE_CASES] + [str(GOOD)]
    outcomes = list(inference.predict_each(sources, workers=1))
    assert [outcome.source for outcome in outcomes] == sources
    for outcome in outcomes:
        assert (outcome.prediction is None) != (outcome.error is None), outcome
        assert outcome.error is None or isinstance(outcome.error, inference.ImageError), outcome
    assert outcomes[-1].prediction is not None and outcomes[-1].prediction.digit == 3


# ----------------------------------------------------------------------------- time and memory, each in its own process

FORK_RUNNER = r"""
import json, os, resource, select, signal, sys, time, traceback
import inference  # run with the repository as the working folder, as `python -c` puts it first on the path

def child(path):
    inference.get_classifier(None)  # loaded in the child: the parent's LiteRT threads do not fork
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        inference.predict(path)
        kind, text = "prediction", ""
    except inference.ImageError as error:
        kind, text = type(error).__name__, str(error)
    except BaseException as error:
        kind, text = "crash " + type(error).__name__, traceback.format_exc()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(kind=kind, text=text, seconds=seconds, growth_mb=(peak - base) / 1024, peak_mb=peak / 1024)

for name, path in json.loads(sys.stdin.read()):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            os.write(write_end, json.dumps(child(path)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    start, chunks, hung = time.monotonic(), [], False
    while True:
        left = float(sys.argv[1]) - (time.monotonic() - start)
        if left <= 0 or not select.select([read_end], [], [], left)[0]:
            hung = True
            os.kill(pid, signal.SIGKILL)
            break
        data = os.read(read_end, 1 << 16)
        if not data:
            break
        chunks.append(data)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if hung:
        result = dict(kind="hung")
    elif not chunks:
        result = dict(kind=f"died (wait status {status})")
    else:
        result = json.loads(b"".join(chunks))
    print(json.dumps(dict(name=name, **result)), flush=True)
"""


@pytest.fixture(scope="session")
def forked_results(catalogue):
    """Each catalogue path read by predict() in a fresh forked process: {name: result}."""
    _, paths = catalogue
    cases = [(name, paths[name]) for name in list(FILE_CASES) + list(PATH_CASES)]
    done = subprocess.run([sys.executable, "-c", FORK_RUNNER, str(HANG_LIMIT)], cwd=ROOT,
                          input=json.dumps(cases), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    return {result["name"]: result for result in results}


@pytest.mark.parametrize("name", list(FILE_CASES) + list(PATH_CASES))
def test_time_and_memory_in_own_process(name, forked_results):
    result = forked_results[name]
    kind = result["kind"]
    assert not kind.startswith(("crash", "hung", "died")), f"{name}: {kind}\n{result.get('text', '')}"
    assert result["seconds"] < TIME_LIMIT, f"{name}: took {result['seconds']:.2f} s"
    assert result["peak_mb"] < PEAK_RSS_MB, (
        f"{name}: the process reached {result['peak_mb']:.0f} MB (grew {result['growth_mb']:.0f} MB): {kind}")
    if kind == "ImageTooLargeError":
        assert result["growth_mb"] < REFUSED_GROWTH_MB, (
            f"{name}: refused as too large, but only after {result['growth_mb']:.0f} MB "
            f"and {result['seconds']:.2f} s: the pixels were decoded before the header was checked")


# ----------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="session")
def cli_run(catalogue, tmp_path_factory):
    folder, paths = catalogue
    run_folder = tmp_path_factory.mktemp("cli")
    for name in FILE_CASES:  # the catalogue's files, copied
        (run_folder / name).write_bytes((folder / name).read_bytes())
    for name, (make, _) in PATH_CASES.items():
        if name.endswith(".png"):
            make(run_folder)
    good = run_folder / "zz_good_3.png"
    good.write_bytes(GOOD.read_bytes())
    extra = [str(run_folder / "folder.png"), "/dev/zero", str(run_folder / "no such file.png")]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "inference.py", str(run_folder), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return run_folder, extra, done, time.perf_counter() - start


def test_cli_over_the_catalogue(cli_run):
    folder, extra, done, seconds = cli_run
    assert "Traceback" not in done.stderr, done.stderr[-5000:]
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    good = str(folder / "zz_good_3.png")
    assert re.search(rf"^{re.escape(good)}: 3 \(", done.stdout, re.M), done.stdout[-3000:]
    names = sorted(name for name in os.listdir(folder)
                   if os.path.splitext(name)[1].lower() in decode.SUFFIXES
                   and not os.path.isdir(folder / name))
    inputs = [str(folder / name) for name in names] + extra

    def mentions(line, path):
        return re.search(re.escape(path) + r"(?=$|[:\s)])", line) is not None

    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    other = [line for line in done.stderr.splitlines() if not line.startswith("error: ")]
    for line in errors:
        assert any(mentions(line, path) for path in inputs), f"this error line names no input: {line}"
    for path in inputs:
        reported = [line for line in errors if mentions(line, path)]
        classified = [line for line in done.stdout.splitlines() if line.startswith(path + ": ")]
        assert len(reported) + len(classified) == 1, (path, reported, classified)
    assert len(other) == 1 and re.match(r"^\d+ images, \d+ errors, ", other[0]), (
        f"stderr holds more than error lines and the summary: {other[:10]}")
    count, failed = map(int, re.match(r"^(\d+) images, (\d+) errors", other[0]).groups())
    assert failed == len(errors)
    assert count == len(inputs) - 1  # the folder given as an argument is reported, not counted as an image


def test_cli_agrees_with_predict(cli_run, catalogue, warm_model):
    """A file the CLI reports as an error is one predict() refuses, and the other way round."""
    folder, _, done, _ = cli_run
    _, paths = catalogue
    for name in FILE_CASES:
        if os.path.splitext(name)[1] not in decode.SUFFIXES:
            continue  # the CLI does not look at it in a folder
        path = str(folder / name)
        failed = any(line.startswith("error: ") and path in line for line in done.stderr.splitlines())
        try:
            inference.predict(paths[name])
            refused = False
        except inference.ImageError:
            refused = True
        except Exception:
            continue  # reported by test_predict_file
        assert failed == refused, (name, failed, refused)


# ----------------------------------------------------------------------------- the web API

@pytest.fixture(scope="module")
def client():
    import app as webapp

    return webapp.create_app(str(MODEL)).test_client()


def check_response(label, response):
    assert response.status_code in (200, 400, 413, 422), (
        f"{label}: HTTP {response.status_code}: {response.get_data(as_text=True)[:500]}")
    assert response.is_json, f"{label}: not JSON ({response.content_type}): {response.get_data(as_text=True)[:200]}"
    body = response.get_json()
    if response.status_code == 200:
        assert 0 <= body["digit"] <= 9 and len(body["probabilities"]) == 10, body
    else:
        assert isinstance(body.get("error"), str) and body["error"], body


EXPECTED_STATUS = {UNREADABLE: {400, 413}, TOO_LARGE: {413}, NO_DIGIT: {422}, PREDICTION: {200},
                   NO_DIGIT_OR_PREDICTION: {200, 422}, ANY: {200, 400, 413, 422}}


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_api_raw_body(name, client, catalogue):
    data = Path(catalogue[1][name]).read_bytes()
    start = time.perf_counter()
    response = client.post("/api/predict", data=data, content_type="image/png")
    seconds = time.perf_counter() - start
    check_response(name, response)
    assert response.status_code in EXPECTED_STATUS[FILE_CASES[name][1]] | {413}, (
        name, response.status_code, response.get_json())
    assert seconds < TIME_LIMIT, f"{name}: took {seconds:.2f} s"


@pytest.mark.parametrize("name", ["empty.png", "random.png", "png_truncated_mid_idat.png", "blank_white.png",
                                  "png_bomb_1bit_20000x20000.png", "jpeg_8000x6000.jpg", "gif_animated.gif",
                                  "tiff_F_nan_inf.tif", "ruled_line_top.png"])
def test_api_multipart(name, client, catalogue):
    data = Path(catalogue[1][name]).read_bytes()
    response = client.post("/api/predict", data={"image": (io.BytesIO(data), name)},
                           content_type="multipart/form-data")
    check_response(f"{name} (multipart)", response)


def test_api_odd_requests(client):
    png = good_png()
    requests = {
        "no body": dict(),
        "empty multipart": dict(data={}, content_type="multipart/form-data"),
        "multipart with a text field only": dict(data={"image": "not a file"}, content_type="multipart/form-data"),
        "multipart with an empty file": dict(data={"image": (io.BytesIO(b""), "x.png")},
                                             content_type="multipart/form-data"),
        "broken multipart": dict(data=b"--xyz\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n" + png[:50],
                                 content_type="multipart/form-data; boundary=xyz"),
        "multipart without a boundary": dict(data=png, content_type="multipart/form-data"),
        "form-urlencoded": dict(data=b"image=%89PNG", content_type="application/x-www-form-urlencoded"),
        "json": dict(data=b'{"image": "3.png"}', content_type="application/json"),
        "a PNG as text/plain": dict(data=png, content_type="text/plain; charset=utf-8"),
        "a PNG with no content type": dict(data=png),
        "a body over the limit": dict(data=bytes(3 * 1024 * 1024), content_type="image/png"),
    }
    for label, options in requests.items():
        check_response(label, client.post("/api/predict", **options))


# ----------------------------------------------------------------------------- fuzzing

@lru_cache(maxsize=None)
def seeds():
    """Valid small images of the digit in each format, to be mutated."""
    image = digit(48)
    return {
        "PNG": encode(image, "PNG"),
        "PNG RGBA": encode(Image.merge("RGBA", (image,) * 3 + (image.point(lambda v: 255 - v),)), "PNG"),
        "JPEG": encode(image, "JPEG", quality=80),
        "JPEG progressive": encode(image.convert("RGB"), "JPEG", quality=80, progressive=True),
        "GIF": encode(image.convert("P"), "GIF"),
        "BMP": encode(image, "BMP"),
        "TIFF": encode(image, "TIFF"),
        "TIFF LZW": encode(image, "TIFF", compression="tiff_lzw"),
        "WebP": encode(image, "WEBP", quality=80),
        "WebP lossless": encode(image, "WEBP", lossless=True),
    }


@st.composite
def mutated_images(draw):
    fmt = draw(st.sampled_from(sorted(seeds())))
    data = bytearray(seeds()[fmt])
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        size = len(data)
        # headers decide the most, so positions near the start are drawn as often as any other
        at = draw(st.one_of(st.integers(0, min(size, 64)), st.integers(0, size)))
        if operation == "flip" and at < size:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and at < size:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif operation == "truncate":
            del data[at:]
    return fmt, bytes(data)


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_images())
def test_fuzz_mutated_images(warm_model, case):
    fmt, data = case
    start = time.perf_counter()
    try:
        result = inference.predict(data)
    except inference.ImageError as error:
        assert str(error).strip()
    else:
        check_prediction(result)
    seconds = time.perf_counter() - start
    assert seconds < TIME_LIMIT, f"a mutated {fmt} took {seconds:.2f} s"


@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(mutated_images())
def test_fuzz_api(client, case):
    fmt, data = case
    check_response(f"a mutated {fmt}", client.post("/api/predict", data=data, content_type="application/octet-stream"))


SUFFIX = {"PNG": ".png", "PNG RGBA": ".png", "JPEG": ".jpg", "JPEG progressive": ".jpg", "GIF": ".gif",
          "BMP": ".bmp", "TIFF": ".tif", "TIFF LZW": ".tiff", "WebP": ".webp", "WebP lossless": ".webp"}


@settings(max_examples=max(1, FUZZ_EXAMPLES // 2 // FUZZ_BATCH), derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_images(), min_size=FUZZ_BATCH, max_size=FUZZ_BATCH))
def test_fuzz_cli(tmp_path_factory, cases):
    """FUZZ_BATCH mutated files in one CLI run: each gets a digit line or an error line naming it."""
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for i, (fmt, data) in enumerate(cases):
        paths.append(folder / f"{i:03d}{SUFFIX[fmt]}")
        paths[-1].write_bytes(data)
    done = subprocess.run([sys.executable, "inference.py", "--format", "csv", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-3000:]
    rows = done.stdout.splitlines()[1:]
    assert len(rows) == len(paths), (len(rows), done.stderr[-2000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    for path, row in zip(paths, rows):
        fields = row.split(",")
        assert fields[0] == str(path)
        if fields[1]:
            assert 0 <= int(fields[1]) <= 9 and math.isclose(sum(map(float, fields[3:13])), 1, abs_tol=1e-4)
        else:
            assert any(str(path) in line for line in errors), (path, errors[:5])
    assert done.returncode == (1 if errors else 0)

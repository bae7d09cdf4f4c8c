"""The two ways an image can fail to give a digit, as exception types every entry point maps.

    ImageError               the base: str() is one line that names the input and the reason
    ├── UnreadableImageError the input cannot be decoded (missing, not a regular file, corrupt,
    │   │                    an unsupported format or array)             -> CLI error line, HTTP 400
    │   └── ImageTooLargeError  more pixels than the caller's budget     -> CLI error line, HTTP 413
    └── NoDigitError         it decodes, but holds no digit (blank, uniform, noise, only specks
                             or ruled lines)                             -> CLI error line, HTTP 422

    BusyError                not about the image: a server's decoding budget is taken by other
                             requests just now                           -> HTTP 503, try again
"""


class ImageError(ValueError):
    """An input image cannot be classified; the message names the input."""


class UnreadableImageError(ImageError):
    """The input cannot be read as an image."""


class ImageTooLargeError(UnreadableImageError):
    """The image has more pixels than may be decoded; its header said so, nothing was decoded."""


class NoDigitError(ImageError):
    """The image was read, but no digit was found in it."""


class BusyError(RuntimeError):
    """The memory set aside for decoding is in use by other requests; try again shortly."""

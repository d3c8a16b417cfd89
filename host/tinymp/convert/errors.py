"""Errors shared by every converter."""

import re

# terminal colour / control sequences some libraries put in their messages (onnxruntime does)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def shown(text) -> str:
    """A name or text from a model file as it may appear in a one-line message: bytes decoded
    (invalid UTF-8 replaced), control characters (a newline in a node name, an escape
    sequence) written as escapes, so that a damaged or hostile name can neither break the
    message into several lines nor drive the terminal."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(text) -> str:
    """``text`` as one line: colour sequences dropped, lines joined with a space, remaining
    control characters escaped (see :func:`shown`)."""
    text = _ANSI.sub("", str(text))
    return shown(" ".join(part.strip() for part in text.splitlines() if part.strip()))


def detail(e: BaseException, limit: int = 300) -> str:
    """A library's exception as a short part of a message: its type and its text on one line,
    cut after ``limit`` characters (onnxruntime and protobuf messages can run to pages)."""
    text = one_line(e)
    if len(text) > limit:
        text = text[:limit - 3].rstrip() + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class ConversionError(ValueError):
    """A model cannot be converted to .tmpm. The message names the operator, the layer (node name or
    index) and a hint, e.g.
    "tinymp convert: layer 'features.3.conv.1' (op HARD_SWISH) is not supported: replace it with ReLU6"

    The message is always one line (the command prints it as its only line of error output):
    newlines and control characters that reach it from a model file or a library's message are
    joined or escaped here.
    """

    def __init__(self, message=""):
        super().__init__(one_line(message))


def check_classes(n: int) -> None:
    """Refuse a model with fewer than two outputs: tinymp trains with softmax cross-entropy over
    the outputs, which is 0 for a single one, so nothing would ever train."""
    if n < 2:
        raise ConversionError(
            f"tinymp convert: the model has {n} output; tinymp trains classifiers with softmax "
            "cross-entropy, which needs at least 2 classes (with one output the loss is always 0). "
            "A binary classifier with one sigmoid logit z gives the same probabilities as two "
            "logits (0, z): give the last layer 2 outputs")

"""Errors shared by every converter."""


class ConversionError(ValueError):
    """A model cannot be converted to .tmpm. The message names the operator, the layer (node name or
    index) and a hint, e.g.
    "tinymp convert: layer 'features.3.conv.1' (op HARD_SWISH) is not supported: replace it with ReLU6"
    """


def check_classes(n: int) -> None:
    """Refuse a model with fewer than two outputs: tinymp trains with softmax cross-entropy over
    the outputs, which is 0 for a single one, so nothing would ever train."""
    if n < 2:
        raise ConversionError(
            f"tinymp convert: the model has {n} output; tinymp trains classifiers with softmax "
            "cross-entropy, which needs at least 2 classes (with one output the loss is always 0). "
            "A binary classifier with one sigmoid logit z gives the same probabilities as two "
            "logits (0, z): give the last layer 2 outputs")

"""Errors shared by every converter."""


class ConversionError(ValueError):
    """A model cannot be converted to .tmpm. The message names the operator, the layer (node name or
    index) and a hint, e.g.
    "tinymp convert: layer 'features.3.conv.1' (op HARD_SWISH) is not supported: replace it with ReLU6"
    """

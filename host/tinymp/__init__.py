"""tinymp: on-device CNN personalisation for microcontrollers — the PC package.

`Model` comes from the C extension built from the same portable C core that runs on the board,
so on-board scripts run unchanged here. Helpers (tinymp.reference, .builder, .zoo, .datasets,
.cli) are imported on demand, e.g. `import tinymp.zoo`.
"""
try:
    from ._tinymp import Model, Plan, Trainer, crc32, __version__
except ImportError as e:  # pragma: no cover - depends on the build
    raise ImportError(
        "tinymp: the C extension is not built; run `pip install -e .` (%s)" % e
    ) from e

__all__ = ["Model", "Plan", "Trainer", "crc32", "__version__"]

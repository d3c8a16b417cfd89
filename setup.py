"""Build of the C extension tinymp._tinymp: the binding plus the portable core that runs on the
board, compiled warning-free. Metadata lives in pyproject.toml.

Extra flags for a sanitizer build, e.g.:
    TINYMP_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -O1 -g" \
    TINYMP_LDFLAGS="-fsanitize=address,undefined" pip install -e .
"""
import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

CORE = os.path.join("micropython_modules", "tinymp", "core")
SOURCES = [os.path.join("host", "tinymp", "_tinymp.c")] + sorted(
    glob.glob(os.path.join(CORE, "**", "*.c"), recursive=True)
)
HEADERS = sorted(glob.glob(os.path.join(CORE, "**", "*.h"), recursive=True))
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror"]


class BuildExt(build_ext):
    """gcc/clang get the core's warning flags; MSVC its own defaults."""

    def build_extensions(self):
        if self.compiler.compiler_type != "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = WARN + os.environ.get("TINYMP_CFLAGS", "").split()
                ext.extra_link_args = os.environ.get("TINYMP_LDFLAGS", "").split()
        super().build_extensions()


class BuildPy(build_py):
    """Package data from outside host/: the board profiles (boards/<NAME>/profile.json, read by
    tinymp.boards and the simulated board) install as tinymp/board_profiles/<NAME>/profile.json."""

    def run(self):
        super().run()
        for src in sorted(glob.glob(os.path.join("boards", "*", "profile.json"))):
            dst = os.path.join(self.build_lib, "tinymp", "board_profiles",
                               os.path.relpath(src, "boards"))
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst)


setup(
    package_dir={"": "host"},
    ext_modules=[
        Extension(
            "tinymp._tinymp",
            sources=SOURCES,
            depends=HEADERS,
            include_dirs=[CORE],
        )
    ],
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)

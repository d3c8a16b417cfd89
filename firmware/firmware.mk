# tinymp — MicroPython firmware with the tinymp user C module built in.
# Included by the top-level Makefile; paths are relative to the repository root.
#
#   make firmware BOARD=UNIX          unix port, double-precision floats  -> build/unix/micropython
#   make firmware BOARD=UNIX_FLOAT    unix port, single-precision floats  -> build/unix-float/micropython
#                                     (as on the OpenMV Cam H7)
#   make firmware BOARD=QEMU_M7       qemu port, MPS2_AN500 (Cortex-M7)   -> build/qemu-m7/firmware.elf
#   make firmware BOARD=QEMU_M7_FLOAT the same with single-precision floats (the OpenMV Cam H7's
#                                     setting)                           -> build/qemu-m7-float/firmware.elf
#   make firmware-test BOARD=...      build, then run MicroPython's tests/run-tests.py on tests/device
#
# MICROPY_DIR: a MicroPython source tree (default build/micropython, cloned at MICROPY_VERSION when
# absent; set it to an existing tree to build offline). None of the ports above needs a git
# submodule with the options used here. FW_PYTHON runs run-tests.py (QEMU_M7 needs pyserial).

MICROPY_VERSION ?= v1.28.0
MICROPY_REPO ?= https://github.com/micropython/micropython
MICROPY_DIR ?= build/micropython
BOARD ?= UNIX
FW_PYTHON ?= python3
FW_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

FW_MODULES := $(abspath micropython_modules)
FW_MP := $(abspath $(MICROPY_DIR))
FW_TESTS := $(abspath tests/device)

# Options shared by both unix builds: no network stack, no btree, no ffi (so no submodule), no
# frozen modules (so no micropython-lib).
FW_UNIX_OPTS := MICROPY_PY_SSL=0 MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 FROZEN_MANIFEST=

# Per BOARD: the build directory, the output, the sub-make arguments and the run-tests target.
ifeq ($(BOARD),UNIX)
FW_BUILD := $(abspath build/unix)
FW_OUT := $(FW_BUILD)/micropython
FW_MAKE := -C $(FW_MP)/ports/unix $(FW_UNIX_OPTS)
FW_RUN_TESTS := MICROPY_MICROPYTHON=$(FW_OUT) $(FW_PYTHON) ./run-tests.py -t unix
else ifeq ($(BOARD),UNIX_FLOAT)
FW_BUILD := $(abspath build/unix-float)
FW_OUT := $(FW_BUILD)/micropython
FW_MAKE := -C $(FW_MP)/ports/unix $(FW_UNIX_OPTS) \
    CFLAGS_EXTRA=-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT
FW_RUN_TESTS := MICROPY_MICROPYTHON=$(FW_OUT) $(FW_PYTHON) ./run-tests.py -t unix
else ifneq ($(filter QEMU_M7 QEMU_M7_FLOAT,$(BOARD)),)
FW_BUILD := $(abspath build/$(if $(filter QEMU_M7,$(BOARD)),qemu-m7,qemu-m7-float))
FW_OUT := $(FW_BUILD)/firmware.elf
FW_MAKE := -C $(FW_MP)/ports/qemu BOARD=MPS2_AN500 FROZEN_MANIFEST= \
    $(if $(filter QEMU_M7_FLOAT,$(BOARD)),MICROPY_FLOAT_IMPL=float)
FW_QEMU := qemu-system-arm -machine mps2-an500 -nographic -monitor null -semihosting
FW_RUN_TESTS := $(FW_PYTHON) ./run-tests.py -t execpty:"$(FW_QEMU) -serial pty -kernel $(FW_OUT)"
else
FW_BAD_BOARD := 1
endif

.PHONY: firmware firmware-test micropython-tree

micropython-tree:
	@if [ -f "$(FW_MP)/py/mkenv.mk" ]; then \
	  true; \
	elif [ "$(MICROPY_DIR)" != "build/micropython" ]; then \
	  echo "error: MICROPY_DIR=$(MICROPY_DIR) is not a MicroPython source tree (no py/mkenv.mk)"; exit 1; \
	else \
	  echo "cloning MicroPython $(MICROPY_VERSION) into $(MICROPY_DIR)"; \
	  mkdir -p $(dir $(FW_MP)); \
	  git clone --depth 1 --branch $(MICROPY_VERSION) $(MICROPY_REPO) $(FW_MP) || { \
	    rm -rf $(FW_MP); \
	    echo "error: could not clone $(MICROPY_REPO) at $(MICROPY_VERSION) (no network?)."; \
	    echo "       Point MICROPY_DIR at an existing MicroPython $(MICROPY_VERSION) tree:"; \
	    echo "       make firmware BOARD=$(BOARD) MICROPY_DIR=/path/to/micropython"; \
	    exit 1; }; \
	fi

# The sub-makes get all their variables on their own command line: `env -u MAKEFLAGS` keeps this
# make's command-line variables (BOARD=UNIX, ...) away from MicroPython's Makefiles.
firmware: micropython-tree
ifdef FW_BAD_BOARD
	@echo "error: unknown BOARD=$(BOARD); use UNIX, UNIX_FLOAT, QEMU_M7 or QEMU_M7_FLOAT"; exit 1
else
	@if [ -n "$(filter QEMU_%,$(BOARD))" ] && ! command -v arm-none-eabi-gcc >/dev/null; then \
	  echo "error: BOARD=QEMU_M7 needs arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"; \
	  exit 1; fi
	env -u MAKEFLAGS $(MAKE) -j$(FW_JOBS) -C $(FW_MP)/mpy-cross
	env -u MAKEFLAGS $(MAKE) -j$(FW_JOBS) $(FW_MAKE) USER_C_MODULES=$(FW_MODULES) BUILD=$(FW_BUILD)
	@echo "firmware BOARD=$(BOARD): $(FW_OUT)"
endif

# run-tests.py runs every tests/device/*.py on the target and compares with its .py.exp
# (make_models.py is the generator of the embedded models, not a test).
firmware-test: firmware
	cd $(FW_MP)/tests && $(FW_RUN_TESTS) -r $(FW_BUILD)/test-results -e make_models -d $(FW_TESTS)

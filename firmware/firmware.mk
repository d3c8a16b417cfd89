# tinymp — MicroPython firmware with the tinymp user C module built in, flashing, and the native
# module. Included by the top-level Makefile; paths are relative to the repository root.
#
#   make firmware BOARD=UNIX            unix port, double-precision floats  -> build/unix/micropython
#   make firmware BOARD=UNIX_FLOAT      unix port, single-precision floats  -> build/unix-float/micropython
#                                       (as on the OpenMV Cam H7)
#   make firmware BOARD=QEMU_M7         qemu port, MPS2_AN500 (Cortex-M7)   -> build/qemu-m7/firmware.elf
#   make firmware BOARD=QEMU_M7_FLOAT   the same with single-precision floats (the OpenMV Cam H7's
#                                       setting)                           -> build/qemu-m7-float/firmware.elf
#   make firmware BOARD=NUCLEO_H743ZI2  stm32 port, board folder boards/NUCLEO_H743ZI2
#                                                                -> build/nucleo-h743zi2/firmware.{elf,bin,dfu}
#   make firmware BOARD=OPENMV_H7       OpenMV's firmware (OPENMV_VERSION, OPENMV_DIR) with tinymp
#                                       built in                         -> build/openmv-h7/firmware.bin
#   make firmware BOARD=ESP32_S3        esp32 port (CMake, ESP-IDF), board folder boards/ESP32_S3
#                                                                -> build/esp32-s3/firmware.bin
#   make firmware-test BOARD=...        build, then run MicroPython's tests/run-tests.py on tests/device
#                                       (UNIX, UNIX_FLOAT, QEMU_M7, QEMU_M7_FLOAT)
#   make firmware-size BOARD=NUCLEO_H743ZI2   arm-none-eabi-size, flash/RAM use and tinymp's share
#   make flash BOARD=NUCLEO_H743ZI2     DFU (FLASH_TOOL=pydfu|dfu-util|st-flash)
#   make flash BOARD=ESP32_S3 PORT=/dev/ttyACM0   esptool
#   make flash BOARD=OPENMV_H7          prints what to do in OpenMV IDE (or FLASH_TOOL=dfu-util)
#   make natmod ARCH=armv7emsp|x64      tinymp.mpy, a dynamic native module -> build/natmod-ARCH/tinymp.mpy
#
# MICROPY_DIR: a MicroPython source tree (default build/micropython, cloned at MICROPY_VERSION when
# absent; set it to an existing tree of that version to build offline). Nothing is written into
# that tree: the outputs, and mpy-cross (which MicroPython builds inside its own tree by default),
# go under BUILD (default build/), and MicroPython's Python tools write no __pycache__ there.
# The unix and qemu builds need no git submodule with the options used here; NUCLEO_H743ZI2 needs
# lib/stm32lib, lib/tinyusb and lib/micropython-lib, ESP32_S3 lib/berkeley-db-1.xx and
# lib/micropython-lib (FW_SUBMODULES): in the cloned tree the Makefile fetches them, in a tree of
# yours it names the command. FW_PYTHON runs MicroPython's Python tools (run-tests.py and pydfu
# need pyserial / pyusb; mpy_ld.py for natmod needs pyelftools). DRY_RUN=1 prints the commands of
# firmware/flash for NUCLEO_H743ZI2, OPENMV_H7 and ESP32_S3 instead of running them (no tree,
# toolchain or device needed).

MICROPY_VERSION ?= v1.28.0
MICROPY_REPO ?= https://github.com/micropython/micropython
MICROPY_DIR ?= build/micropython
BOARD ?= UNIX
# FW_PYTHON runs MicroPython's Python tools: the project's virtualenv (make venv) when there is one,
# so that what is installed there (pyusb, esptool, pyelftools, pyserial) is what they find.
FW_PYTHON ?= $(if $(wildcard $(or $(VENV),.venv)/bin/python),$(or $(VENV),.venv)/bin/python,python3)
FW_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# FW_PYTHON as an absolute path when it is a path (recipes cd into the MicroPython tree)
FW_PY := $(if $(findstring /,$(FW_PYTHON)),$(abspath $(FW_PYTHON)),$(FW_PYTHON))

FW_MODULES := $(abspath micropython_modules)
FW_MP := $(abspath $(MICROPY_DIR))
# MICROPY_DIR as the errors name it: with the folder it resolved to when that reads differently
# (a relative path is taken from the checkout, also under make -C)
FW_MP_NAMED := MICROPY_DIR=$(MICROPY_DIR)$(if $(filter-out $(MICROPY_DIR),$(FW_MP)), (that is $(FW_MP)))
# Every output under BUILD (the top-level Makefile's, default build): a firmware in a folder per
# board, mpy-cross (MicroPython's cross-compiler, which freezing needs) in mpy-cross/.
FW_OUTDIR := $(abspath $(or $(BUILD),build))
FW_MPYCROSS_BUILD := $(FW_OUTDIR)/mpy-cross
FW_MPYCROSS := $(FW_MPYCROSS_BUILD)/mpy-cross
# The sub-makes: none of this make's command-line variables (MAKEFLAGS), no __pycache__ written
# into MICROPY_DIR by its Python tools, and our mpy-cross (MICROPY_MPYCROSS: py/mkenv.mk, the
# esp32 port's CMake and tools/makemanifest.py read it from the environment).
FW_SUBMAKE := env -u MAKEFLAGS PYTHONDONTWRITEBYTECODE=1 MICROPY_MPYCROSS=$(FW_MPYCROSS) $(MAKE)
FW_TESTS := $(abspath tests/device)
FW_BOARDS := UNIX UNIX_FLOAT QEMU_M7 QEMU_M7_FLOAT NUCLEO_H743ZI2 OPENMV_H7 ESP32_S3

# DRY_RUN=1: echo a command instead of running it.
FW_DRY := $(filter 1 yes true,$(DRY_RUN))
FW_RUN := $(if $(FW_DRY),@echo,)

# Options shared by both unix builds: no network stack, no btree, no ffi (so no submodule), no
# frozen modules (so no micropython-lib).
FW_UNIX_OPTS := MICROPY_PY_SSL=0 MICROPY_PY_BTREE=0 MICROPY_PY_FFI=0 FROZEN_MANIFEST=

# Per BOARD: the build directory, the output, the sub-make arguments (FW_MAKE; the user C modules
# are added by the recipe as FW_USERMOD), the MicroPython submodules it needs and the run-tests
# target.
FW_USERMOD := $(FW_MODULES)
FW_SUBMODULES :=
FW_KIND := micropython
ifeq ($(BOARD),UNIX)
FW_BUILD := $(FW_OUTDIR)/unix
FW_OUT := $(FW_BUILD)/micropython
FW_MAKE := -C $(FW_MP)/ports/unix $(FW_UNIX_OPTS)
FW_RUN_TESTS := MICROPY_MICROPYTHON=$(FW_OUT) $(FW_PY) ./run-tests.py -t unix
else ifeq ($(BOARD),UNIX_FLOAT)
FW_BUILD := $(FW_OUTDIR)/unix-float
FW_OUT := $(FW_BUILD)/micropython
FW_MAKE := -C $(FW_MP)/ports/unix $(FW_UNIX_OPTS) \
    CFLAGS_EXTRA=-DMICROPY_FLOAT_IMPL=MICROPY_FLOAT_IMPL_FLOAT
FW_RUN_TESTS := MICROPY_MICROPYTHON=$(FW_OUT) $(FW_PY) ./run-tests.py -t unix
else ifneq ($(filter QEMU_M7 QEMU_M7_FLOAT,$(BOARD)),)
FW_BUILD := $(FW_OUTDIR)/$(if $(filter QEMU_M7,$(BOARD)),qemu-m7,qemu-m7-float)
FW_OUT := $(FW_BUILD)/firmware.elf
FW_MAKE := -C $(FW_MP)/ports/qemu BOARD=MPS2_AN500 FROZEN_MANIFEST= \
    $(if $(filter QEMU_M7_FLOAT,$(BOARD)),MICROPY_FLOAT_IMPL=float)
FW_QEMU := qemu-system-arm -machine mps2-an500 -nographic -monitor null -semihosting
FW_RUN_TESTS := $(FW_PY) ./run-tests.py -t execpty:"$(FW_QEMU) -serial pty -kernel $(FW_OUT)"
FW_NEEDS_ARM := 1
FW_TEST_NEEDS_QEMU := 1
else ifeq ($(BOARD),NUCLEO_H743ZI2)
# stm32 port with our out-of-tree board folder (flash layout with a ROMFS partition, frozen
# helpers). No networking: stm32lib, tinyusb and micropython-lib (which freezing always checks for)
# are the only submodules needed.
FW_BUILD := $(FW_OUTDIR)/nucleo-h743zi2
FW_OUT := $(FW_BUILD)/firmware.dfu
FW_MAKE := -C $(FW_MP)/ports/stm32 BOARD_DIR=$(abspath boards/NUCLEO_H743ZI2)
FW_SUBMODULES := lib/stm32lib lib/tinyusb lib/micropython-lib
FW_NEEDS_ARM := 1
else ifeq ($(BOARD),ESP32_S3)
# esp32 port (CMake under ESP-IDF's idf.py): USER_C_MODULES names the top-level CMake file.
FW_BUILD := $(FW_OUTDIR)/esp32-s3
FW_OUT := $(FW_BUILD)/firmware.bin
FW_MAKE := -C $(FW_MP)/ports/esp32 BOARD_DIR=$(abspath boards/ESP32_S3)
FW_USERMOD := $(FW_MODULES)/micropython.cmake
FW_SUBMODULES := lib/berkeley-db-1.xx lib/micropython-lib
else ifeq ($(BOARD),OPENMV_H7)
FW_KIND := openmv
else
FW_BAD_BOARD := 1
endif

.PHONY: firmware firmware-test firmware-size flash natmod micropython-tree micropython-submodules \
    fw-paths

# make splits words at spaces: a checkout, MICROPY_DIR, BUILD or OPENMV_DIR with a space in its
# path would be taken as two paths (a failed clone's clean-up once removed the folder named by the
# part before the space). Every firmware target refuses such a path first. (The top-level
# Makefile stops at a BUILD with a space as it reads it; the check here is for this file alone.)
FW_SPACED = $(strip $(if $(word 2,$(CURDIR)),this checkout ($(CURDIR))) \
    $(foreach v,MICROPY_DIR BUILD OPENMV_DIR,$(if $(word 2,$($(v))),$(v)=$($(v)))))
fw-paths:
	@if [ -n "$(FW_SPACED)" ]; then \
	  echo "error: $(FW_SPACED): a path with a space in it, which make cannot build with: use a path without spaces (e.g. move the folder, or a symbolic link to it)"; exit 1; fi

# MICROPY_DIR must be the MicroPython release the board folders and the binding are written for
# (MICROPY_VERSION, read from its py/mpconfig.h); MICROPY_VERSION_CHECK=0 builds with another one
# anyway, at your own risk.
MICROPY_VERSION_CHECK ?= 1
FW_WANT_VERSION := $(patsubst v%,%,$(MICROPY_VERSION))

micropython-tree: fw-paths
	@if [ -f "$(FW_MP)/py/mkenv.mk" ] && [ -f "$(FW_MP)/py/mpconfig.h" ]; then \
	  true; \
	elif [ "$(MICROPY_DIR)" != "build/micropython" ]; then \
	  echo "error: $(FW_MP_NAMED) is not a MicroPython source tree (no py/mkenv.mk): point it at a MicroPython $(MICROPY_VERSION) checkout"; exit 1; \
	elif [ -e "$(FW_MP)" ]; then \
	  echo "error: $(MICROPY_DIR) is there but is not a MicroPython source tree (no py/mkenv.mk; a clone cut short?): remove it (rm -rf $(MICROPY_DIR)), then make clones MicroPython $(MICROPY_VERSION) there again"; exit 1; \
	else \
	  echo "cloning MicroPython $(MICROPY_VERSION) into $(MICROPY_DIR)"; \
	  mkdir -p "$(dir $(FW_MP))"; \
	  git clone --depth 1 --branch $(MICROPY_VERSION) $(MICROPY_REPO) "$(FW_MP)" || { \
	    rm -rf "$(FW_MP)"; \
	    echo "error: could not clone $(MICROPY_REPO) at $(MICROPY_VERSION) (no network?): point MICROPY_DIR at a MicroPython $(MICROPY_VERSION) tree, make firmware BOARD=$(BOARD) MICROPY_DIR=/path/to/micropython"; \
	    exit 1; }; \
	fi
	@v=$$(awk '$$1 ~ /define$$/ && $$2 ~ /^MICROPY_VERSION_(MAJOR|MINOR|MICRO)$$/ { v = v s $$3; s = "." } \
	          $$1 ~ /define$$/ && $$2 == "MICROPY_VERSION_PRERELEASE" && $$3 != "0" { p = "-preview" } \
	          END { print v p }' $(FW_MP)/py/mpconfig.h); \
	if [ "$$v" = "$(FW_WANT_VERSION)" ] || [ "$(MICROPY_VERSION_CHECK)" = 0 ]; then \
	  true; \
	elif [ "$(MICROPY_DIR)" = "build/micropython" ]; then \
	  echo "error: $(MICROPY_DIR) holds MicroPython $$v, not $(MICROPY_VERSION): remove it (rm -rf $(MICROPY_DIR)) and make clones $(MICROPY_VERSION)"; exit 1; \
	else \
	  echo "error: $(FW_MP_NAMED) is MicroPython $$v, tinymp builds against $(MICROPY_VERSION): check that out (git -C $(FW_MP) checkout $(MICROPY_VERSION)), or MICROPY_VERSION_CHECK=0 to try $$v"; exit 1; \
	fi

# The submodules a port needs: fetched into the tree the Makefile cloned; in a tree of yours, the
# missing ones are named with the command that fetches them.
micropython-submodules: micropython-tree
	@missing=""; for s in $(FW_SUBMODULES); do \
	  [ -n "$$(ls -A $(FW_MP)/$$s 2>/dev/null)" ] || missing="$$missing $$s"; \
	done; \
	if [ -z "$$missing" ]; then \
	  true; \
	elif [ "$(MICROPY_DIR)" = "build/micropython" ]; then \
	  echo "fetching MicroPython submodules:$$missing"; \
	  git -C $(FW_MP) submodule update --init --depth 1 $$missing || { \
	    echo "error: could not fetch$$missing (no network?)"; exit 1; }; \
	else \
	  echo "error: BOARD=$(BOARD) needs the MicroPython submodules$$missing in $(FW_MP_NAMED): git -C $(FW_MP) submodule update --init$$missing"; \
	  exit 1; \
	fi

# The sub-makes get all their variables on their own command line: `env -u MAKEFLAGS` keeps this
# make's command-line variables (BOARD=UNIX, ...) from being re-read as MicroPython's own (make
# still exports them to the environment, which the sub-makes' command lines override).
ifdef FW_BAD_BOARD
firmware firmware-test firmware-size flash:
	@echo "error: unknown BOARD=$(BOARD); use one of $(FW_BOARDS)"; exit 1
else ifeq ($(FW_KIND),openmv)
include firmware/openmv.mk
else

# The compilers a board's build needs, checked before a MicroPython tree is cloned or fetched:
# the host's (mpy-cross, the unix port), arm-none-eabi-gcc with its C library (the stm32 and qemu
# ports include newlib's headers), ESP-IDF.
.PHONY: firmware-tools
firmware-tools:
	@command -v gcc >/dev/null || { \
	  echo "error: BOARD=$(BOARD) needs the host's C compiler for mpy-cross (apt-get install gcc)"; exit 1; }
ifdef FW_NEEDS_ARM
	@$(call arm_cc_check,BOARD=$(BOARD),arm-none-eabi-gcc)
endif
ifeq ($(BOARD),ESP32_S3)
	@command -v idf.py >/dev/null || { \
	  echo "error: BOARD=ESP32_S3 needs ESP-IDF v5.5.1 (idf.py): install it (README, ESP32-S3 camera boards), then run '. <esp-idf>/export.sh' in this shell"; \
	  exit 1; }
endif

# under firmware-test, what the tests need is checked before the build (a prerequisite of the
# build, not beside it, so that make -j keeps the order)
FW_TEST_FIRST := $(if $(FW_RUN_TESTS),$(if $(filter firmware-test,$(MAKECMDGOALS)),firmware-test-tools))
firmware: fw-paths $(FW_TEST_FIRST) $(if $(FW_DRY),,firmware-tools micropython-submodules)
	$(FW_RUN) $(FW_SUBMAKE) -j$(FW_JOBS) -C $(FW_MP)/mpy-cross BUILD=$(FW_MPYCROSS_BUILD) USER_C_MODULES=
	$(FW_RUN) $(FW_SUBMAKE) -j$(FW_JOBS) $(FW_MAKE) USER_C_MODULES=$(FW_USERMOD) BUILD=$(FW_BUILD) \
	    MICROPY_MPYCROSS=$(FW_MPYCROSS)
	@echo "firmware BOARD=$(BOARD): $(FW_OUT)$(if $(FW_DRY), (DRY_RUN: not built))"

# run-tests.py runs every tests/device/*.py on the target and compares with its .py.exp
# (make_models.py is the generator of the embedded models, not a test).
ifdef FW_RUN_TESTS
# what run-tests.py needs to reach a qemu board (it talks to it through pyboard.py, which needs
# pyserial), checked before the build
.PHONY: firmware-test-tools
firmware-test-tools: fw-paths
ifdef FW_TEST_NEEDS_QEMU
	@command -v qemu-system-arm >/dev/null || { \
	  echo "error: firmware-test BOARD=$(BOARD) needs qemu-system-arm (apt-get install qemu-system-arm)"; exit 1; }
	@$(FW_PY) -c "import serial" 2>/dev/null || { \
	  echo "error: firmware-test BOARD=$(BOARD) needs pyserial for MicroPython's run-tests.py: $(FW_PY) -m pip install pyserial (or make venv)"; exit 1; }
endif

FW_TEST_CMD = cd $(FW_MP)/tests && PYTHONDONTWRITEBYTECODE=1 $(FW_RUN_TESTS) -r $(FW_BUILD)/test-results -e make_models -d $(FW_TESTS)
firmware-test: firmware-test-tools firmware
	$(if $(FW_DRY),@echo '$(FW_TEST_CMD)',$(FW_TEST_CMD))
else
firmware-test:
	@echo "error: firmware-test runs on UNIX, UNIX_FLOAT, QEMU_M7 and QEMU_M7_FLOAT (BOARD=$(BOARD) needs its device)"; exit 1
endif

# Flash and RAM use of a built firmware, and tinymp's share of it (from the linker map).
firmware-size: fw-paths
ifneq ($(filter UNIX UNIX_FLOAT,$(BOARD)),)
	@echo "error: firmware-size reports on a Cortex-M firmware (BOARD=NUCLEO_H743ZI2, OPENMV_H7, QEMU_M7, QEMU_M7_FLOAT); BOARD=$(BOARD) is a program for this computer"; exit 1
endif
ifeq ($(BOARD),ESP32_S3)
	@echo "error: firmware-size reports on a Cortex-M firmware (BOARD=NUCLEO_H743ZI2, OPENMV_H7, QEMU_M7, QEMU_M7_FLOAT), read with arm-none-eabi's tools; for BOARD=ESP32_S3, ESP-IDF's idf.py size in the build folder"; exit 1
endif
	@test -f $(FW_BUILD)/firmware.elf || { \
	  echo "error: $(FW_BUILD)/firmware.elf not found: make firmware BOARD=$(BOARD) first"; exit 1; }
	@$(FW_PY) firmware/fw_size.py --board $(BOARD) $(FW_BUILD)/firmware.elf

include firmware/flash.mk
endif

# ------------------------------------------------------------------ dynamic native module

ARCH ?= armv7emsp
NATMOD_BUILD := $(FW_OUTDIR)/natmod-$(ARCH)
NATMOD_MAKEFILE := $(abspath micropython_modules/tinymp/natmod/Makefile)

# The compiler of ARCH (py/dynruntime.mk: gcc for x64/x86, arm-none-eabi-gcc for the armv* ones;
# other architectures' compilers are left to that build to name) and pyelftools, checked before
# a MicroPython tree is cloned.
NATMOD_CC := $(if $(filter x64 x86,$(ARCH)),gcc,$(if $(filter armv%,$(ARCH)),arm-none-eabi-gcc))
.PHONY: natmod-tools
natmod-tools:
ifneq ($(NATMOD_CC),)
	@command -v $(NATMOD_CC) >/dev/null || { \
	  echo "error: ARCH=$(ARCH) needs $(NATMOD_CC) (apt-get install $(if $(filter gcc,$(NATMOD_CC)),gcc,gcc-arm-none-eabi))"; exit 1; }
endif
	@$(FW_PY) -c "import elftools" 2>/dev/null || { \
	  echo "error: MicroPython's mpy_ld.py needs pyelftools: $(FW_PY) -m pip install pyelftools"; exit 1; }

natmod: fw-paths natmod-tools micropython-tree
	@mkdir -p $(NATMOD_BUILD)
	$(FW_SUBMAKE) -C $(NATMOD_BUILD) -f $(NATMOD_MAKEFILE) MPY_DIR=$(FW_MP) ARCH=$(ARCH) \
	    PYTHON=$(FW_PY) BUILD=obj
	@echo "natmod ARCH=$(ARCH): $(NATMOD_BUILD)/tinymp.mpy"

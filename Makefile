# tinymp — top-level make targets. `make help` lists them.
#
# Host side: a virtualenv in .venv with the PC package installed in editable mode.
# Cortex-M7 side: Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm.

# Every path in the make files is relative to the checkout: make runs there (`make -f
# elsewhere/Makefile` from another folder would not find the files they name).
ifeq ($(wildcard firmware/firmware.mk),)
$(error make runs in the tinymp checkout, whose files these make files name: make -C $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST)))) $(MAKECMDGOALS))
endif

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
CORE := micropython_modules/tinymp/core
CORE_SRC := $(sort $(wildcard $(CORE)/*.c $(CORE)/*/*.c))
BUILD := build
ifneq ($(word 2,$(BUILD)),)
# make splits words at spaces: its rules cannot name such a folder (firmware/firmware.mk checks
# the other paths)
$(error BUILD=$(BUILD): a path with a space in it, which make cannot build with: use a path without spaces)
endif
ARM_CC ?= arm-none-eabi-gcc
ARM_SIZE ?= arm-none-eabi-size
M7_FLAGS := -mcpu=cortex-m7 -mthumb -mfpu=fpv5-sp-d16 -mfloat-abi=hard
CORE_WARN := -std=c99 -Wall -Wextra -Werror
DEBIAN_PKGS := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm

.PHONY: help venv debian-deps test demo plan bench-plan size core-check fuzz clean distclean

help:
	@echo "make test        install what is needed (venv, Debian packages when root) and run every test"
	@echo "make demo        the whole personalisation session against a simulated OpenMV Cam H7"
	@echo "make bench-push  push rate of a 500 KB model to the simulated board"
	@echo "make plan        inference arena of every zoo model"
	@echo "make bench-plan  training memory and backward MACs of every method on MobileNetV2 / MCUNet"
	@echo "make bench       every method on an emulated Cortex-M7: instructions, peak SRAM (bench/RESULTS.md)"
	@echo "make size        Cortex-M7 code size of the core (arm-none-eabi-gcc)"
	@echo "make core-check  host -Werror build of the core and the no-allocator check (nm)"
	@echo "make fuzz        the model-parser fuzz test under AddressSanitizer + UBSan"
	@echo "make venv        only .venv: the PC package with its test extras (mpremote, esptool, pyelftools)"
	@echo "make experiment  personalisation accuracy of every method (about 11 min; experiments/RESULTS.md)"
	@echo "make clean       remove build outputs (keeps .venv and the MicroPython and OpenMV clones in build/)"
	@echo "make distclean   remove build/ and .venv entirely"
	@echo "make bench-kernels / kernel-check   every kernel (forward and backward) on the emulated Cortex-M7 (firmware/bench)"
	@echo "make bench-train-elf   only the bench program (build/bench/bench_train.elf), which tinymp bench runs"
	@echo ""
	@echo "MicroPython firmware with tinymp built in (README, 'import tinymp on MicroPython'):"
	@echo "make firmware BOARD=NAME   NAME: $(FW_BOARDS) (default UNIX)"
	@echo "                           (it prints the output's path, e.g. build/nucleo-h743zi2/firmware.dfu);"
	@echo "                           MICROPY_DIR=<a MicroPython $(MICROPY_VERSION) tree> builds offline,"
	@echo "                           else it is cloned into build/micropython"
	@echo "make firmware-test BOARD=UNIX|UNIX_FLOAT|QEMU_M7|QEMU_M7_FLOAT   build, then tests/device on it"
	@echo "make firmware-size BOARD=NUCLEO_H743ZI2   flash and RAM use, tinymp's share"
	@echo "make flash BOARD=NUCLEO_H743ZI2|ESP32_S3|OPENMV_H7 [FLASH_TOOL=...] [PORT=...]   load it"
	@echo "make natmod ARCH=armv7emsp|x64   tinymp.mpy, the native module (inference only, no reflash)"
	@echo "DRY_RUN=1 prints the firmware/flash commands instead of running them"

$(VENV)/.installed: pyproject.toml setup.py $(CORE_SRC) $(wildcard $(CORE)/*.h) host/tinymp/_tinymp.c
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The Cortex-M7 tests need three Debian packages. As root we install them; otherwise we say which.
debian-deps:
	@if command -v $(ARM_CC) >/dev/null && command -v qemu-system-arm >/dev/null \
	    && echo 'int main(void){return 0;}' | $(ARM_CC) $(M7_FLAGS) --specs=nano.specs -x c - -o /dev/null -lc -lnosys 2>/dev/null; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(DEBIAN_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PKGS) >/dev/null; \
	else \
	  echo "note: install $(DEBIAN_PKGS) (as root: apt-get install $(DEBIAN_PKGS)); the Cortex-M7 build tests will skip"; \
	fi

# pytest exits 5 when it collected nothing: that is a broken checkout, not a pass.
test: venv debian-deps
	@$(VPY) -m pytest tests -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

demo: venv
	$(VPY) -m tinymp.cli demo --session $(BUILD)/demo

# push rate of a 500 KB model to the simulated board (target: at least 200 KB/s)
.PHONY: bench-push
bench-push: venv
	$(VPY) tools/bench_push.py

plan: venv
	$(VPY) -m tinymp.cli plan --zoo

# Peak training SRAM (with its breakdown) and backward MACs of every method on MobileNetV2-w0.35
# and MCUNet at 128x128, and issue 3's targets for tinymp in 256 KB (planner figures).
bench-plan: venv
	$(VPY) tools/bench_plan.py

# The personalisation-accuracy harness (issue 6, docs/EXPERIMENT.md): every training method on
# shifted and new-class digits, about 11 min of a 2-core machine; writes experiments/RESULTS.md
.PHONY: experiment
experiment: venv
	$(VPY) -m tinymp.cli experiment --out experiments --notes experiments/READING.md

CORE_HDR := $(wildcard $(CORE)/*.h $(CORE)/*/*.h)

# $(call arm_cc_check,WHO,COMPILER): a shell command that names a missing cross compiler or its C
# library (newlib: the core and the ports include its string.h) in one line, "error: WHO needs ..."
arm_cc_check = command -v $(2) >/dev/null || { \
  echo "error: $(1) needs $(2) (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"; exit 1; }; \
  echo '\#include <string.h>' | $(2) -E -x c - -o /dev/null 2>/dev/null || { \
  echo "error: $(1) needs $(2)'s C library (apt-get install libnewlib-arm-none-eabi)"; exit 1; }

# the cross compiler and arm-none-eabi-size, named before the first compile
.PHONY: m7-tools
m7-tools:
	@$(call arm_cc_check,the Cortex-M7 build,$(ARM_CC))
	@command -v $(ARM_SIZE) >/dev/null || { \
	  echo "error: make size needs $(ARM_SIZE) (apt-get install gcc-arm-none-eabi)"; exit 1; }

$(BUILD)/m7/%.o: $(CORE)/%.c $(CORE_HDR) | m7-tools
	@mkdir -p $(dir $@)
	$(ARM_CC) $(CORE_WARN) -O2 $(M7_FLAGS) -ffunction-sections -fdata-sections -I$(CORE) -c $< -o $@

M7_OBJ := $(patsubst $(CORE)/%.c,$(BUILD)/m7/%.o,$(CORE_SRC))

size: $(M7_OBJ)
	@$(ARM_SIZE) -t $(M7_OBJ)

core-check:
	@mkdir -p $(BUILD)/host
	@for f in $(CORE_SRC); do \
	  gcc $(CORE_WARN) -O2 -I$(CORE) -c $$f -o $(BUILD)/host/$$(basename $$f .c).o || exit 1; \
	done
	@if nm -u $(BUILD)/host/*.o | grep -E '\b(malloc|calloc|realloc|free)\b'; then \
	  echo "core references an allocator"; exit 1; else echo "core: warning-free, no allocator"; fi

fuzz: venv
	$(VPY) -m pytest tests/test_fuzz.py -q -ra

# clean keeps what took the network to get: the MicroPython and OpenMV clones (build/micropython,
# build/openmv) and .venv; distclean removes them too
clean:
	@if [ -d "$(BUILD)" ]; then find "$(BUILD)" -mindepth 1 -maxdepth 1 ! -name micropython ! -name openmv -exec rm -rf {} +; fi
	rm -rf *.egg-info host/*.egg-info

distclean: clean
	rm -rf $(BUILD) $(VENV)

include firmware/firmware.mk
include firmware/bench/bench.mk

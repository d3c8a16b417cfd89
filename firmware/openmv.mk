# tinymp — BOARD=OPENMV_H7: OpenMV's own firmware (sensor, image, ml, ...) with tinymp built in.
# Included by firmware/firmware.mk when BOARD=OPENMV_H7.
#
#   make firmware BOARD=OPENMV_H7 [OPENMV_DIR=~/openmv]   -> build/openmv-h7/firmware.bin
#   make flash BOARD=OPENMV_H7                            says what to do in OpenMV IDE
#   make flash BOARD=OPENMV_H7 FLASH_TOOL=dfu-util        recovery through the STM32 ROM DFU
#
# OPENMV_DIR: an OpenMV checkout (default build/openmv, cloned at OPENMV_VERSION with its
# submodules when absent). OpenMV's build brings its own toolchain: `make sdk` in OPENMV_DIR
# downloads the OpenMV SDK (ARM GCC, CMake, Python; into ~/openmv-sdk-<version>, see OpenMV's
# SDK_VERSION file), which this target runs first (a no-op once installed). Network is needed
# for the clone and the SDK.
#
# How tinymp gets in: OpenMV builds MicroPython with USER_C_MODULES set to its top folder, so a
# folder `tinymp` there holding a micropython.mk is compiled in. The target links
# OPENMV_DIR/tinymp to this repository's micropython_modules/tinymp (a symbolic link; nothing of
# OpenMV is edited or copied), and passes FROZEN_MANIFEST=boards/OPENMV_H7/manifest.py, which
# includes OpenMV's own board manifest and adds tinymp's on-board helpers.

OPENMV_VERSION ?= v5.0.0
OPENMV_REPO ?= https://github.com/openmv/openmv
OPENMV_DIR ?= build/openmv
OPENMV_TARGET ?= OPENMV4
OPENMV_ABS := $(abspath $(OPENMV_DIR))
OPENMV_BIN := $(OPENMV_ABS)/build/$(OPENMV_TARGET)/bin
OPENMV_MANIFEST := $(abspath boards/OPENMV_H7/manifest.py)
OPENMV_LINK := $(OPENMV_ABS)/tinymp
FW_BUILD := $(FW_OUTDIR)/openmv-h7
FW_OUT := $(FW_BUILD)/firmware.bin

# OpenMV's firmware.bin is linked behind its bootloader, at OMV_FIRM_ADDR of boards/OPENMV4.
OPENMV_FIRM_ADDR ?= 0x08040000
FLASH_TOOL ?= ide
DFU_UTIL ?= dfu-util

.PHONY: openmv-tree

openmv-tree: fw-paths
	@if [ -f "$(OPENMV_ABS)/Makefile" ] && [ -d "$(OPENMV_ABS)/boards/$(OPENMV_TARGET)" ]; then \
	  true; \
	elif [ "$(OPENMV_DIR)" != "build/openmv" ]; then \
	  echo "error: OPENMV_DIR=$(OPENMV_DIR) is not an OpenMV checkout with boards/$(OPENMV_TARGET)"; exit 1; \
	elif [ -f "$(OPENMV_ABS)/Makefile" ]; then \
	  echo "error: $(OPENMV_DIR) has no boards/$(OPENMV_TARGET): OPENMV_TARGET names a board of OpenMV $(OPENMV_VERSION) (OPENMV4 is the OpenMV Cam H7)"; exit 1; \
	elif [ -e "$(OPENMV_ABS)" ]; then \
	  echo "error: $(OPENMV_DIR) is there but is not an OpenMV checkout with boards/$(OPENMV_TARGET) (a clone cut short?): remove it (rm -rf $(OPENMV_DIR)), then make clones OpenMV $(OPENMV_VERSION) there again"; exit 1; \
	else \
	  echo "cloning OpenMV $(OPENMV_VERSION) into $(OPENMV_DIR) (with submodules)"; \
	  mkdir -p "$(dir $(OPENMV_ABS))"; \
	  { git clone --depth 1 --branch $(OPENMV_VERSION) $(OPENMV_REPO) "$(OPENMV_ABS)" && \
	    git -C "$(OPENMV_ABS)" submodule update --init --depth 1 && \
	    git -C "$(OPENMV_ABS)/lib/micropython" submodule update --init --depth 1; } || { \
	    rm -rf "$(OPENMV_ABS)"; \
	    echo "error: could not clone $(OPENMV_REPO) at $(OPENMV_VERSION) (no network?)."; \
	    echo "       Point OPENMV_DIR at an OpenMV checkout with its submodules."; exit 1; }; \
	fi

firmware: fw-paths $(if $(FW_DRY),,openmv-tree)
ifndef FW_DRY
	@if [ -e "$(OPENMV_LINK)" ] && [ ! -L "$(OPENMV_LINK)" ]; then \
	  echo "error: $(OPENMV_LINK) exists and is not our link; move it away"; exit 1; fi
endif
	$(FW_RUN) env -u MAKEFLAGS $(MAKE) -C $(OPENMV_ABS) sdk
	$(FW_RUN) ln -sfn $(abspath micropython_modules/tinymp) $(OPENMV_LINK)
	$(FW_RUN) env -u MAKEFLAGS $(MAKE) -j$(FW_JOBS) -C $(OPENMV_ABS)/lib/micropython/mpy-cross
	$(FW_RUN) env -u MAKEFLAGS $(MAKE) -j$(FW_JOBS) -C $(OPENMV_ABS) TARGET=$(OPENMV_TARGET) \
	    FROZEN_MANIFEST=$(OPENMV_MANIFEST)
	$(FW_RUN) mkdir -p $(FW_BUILD)
	$(FW_RUN) cp $(OPENMV_BIN)/firmware.bin $(OPENMV_BIN)/firmware.elf $(FW_BUILD)/
	@echo "firmware BOARD=OPENMV_H7: $(FW_OUT)"

firmware-test:
	@echo "error: firmware-test runs on UNIX, UNIX_FLOAT, QEMU_M7 and QEMU_M7_FLOAT"; exit 1

firmware-size: fw-paths
	@test -f $(FW_BUILD)/firmware.elf || { \
	  echo "error: $(FW_BUILD)/firmware.elf not found: make firmware BOARD=OPENMV_H7 first"; exit 1; }
	@$(FW_PY) firmware/fw_size.py --board OPENMV_H7 $(FW_BUILD)/firmware.elf

# The OpenMV Cam is flashed by OpenMV IDE through OpenMV's USB bootloader; there is no command
# line tool for that bootloader, so by default this prints the steps.
ifeq ($(FLASH_TOOL),ide)
flash: fw-paths
ifndef FW_DRY
	@test -f $(FW_OUT) || { echo "error: $(FW_OUT) not found: make firmware BOARD=OPENMV_H7 first"; exit 1; }
endif
	@echo "Flash $(FW_OUT) with OpenMV IDE (https://openmv.io/pages/download):"
	@echo "  1. Unplug the camera. In OpenMV IDE: Tools > Run Bootloader (Load Firmware)."
	@echo "  2. Select $(FW_OUT); leave 'Erase internal file system' unticked to keep your files."
	@echo "  3. Click Run, then plug the camera in when the IDE asks (it flashes over USB, ~1 min)."
	@echo "  4. Connect (the plug icon), open the serial terminal and check: import tinymp"
else ifeq ($(FLASH_TOOL),dfu-util)
flash: fw-paths
ifndef FW_DRY
	@test -f $(FW_OUT) || { echo "error: $(FW_OUT) not found: make firmware BOARD=OPENMV_H7 first"; exit 1; }
	@command -v $(DFU_UTIL) >/dev/null || { \
	  echo "error: FLASH_TOOL=dfu-util needs $(DFU_UTIL) (apt-get install dfu-util); or flash with OpenMV IDE (make flash BOARD=OPENMV_H7)"; exit 1; }
	@echo "Recovery only: the camera must be in the STM32 ROM DFU bootloader (BOOT pin to 3.3 V at reset),"
	@echo "and OpenMV's bootloader at 0x08000000 must be intact (this writes the firmware behind it)."
endif
	$(FW_RUN) $(DFU_UTIL) -a 0 -d 0483:df11 -s $(OPENMV_FIRM_ADDR):leave -D $(FW_OUT)
else
flash:
	@echo "error: FLASH_TOOL=$(FLASH_TOOL) for BOARD=OPENMV_H7: use ide (default) or dfu-util"; exit 1
endif

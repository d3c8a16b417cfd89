# tinymp — `make flash BOARD=...`: load the built firmware onto a board. Included by
# firmware/firmware.mk (FW_BUILD, FW_MP, FW_RUN are set there). With DRY_RUN=1 the command is
# printed, not run, and the firmware need not exist (the tests check the command lines this way).
#
# NUCLEO_H743ZI2 (STM32H743's ROM bootloader over USB DFU, user USB connector CN13):
#   FLASH_TOOL=pydfu     MicroPython's tools/pydfu.py (needs pyusb: pip install pyusb)   [default]
#   FLASH_TOOL=dfu-util  dfu-util (apt-get install dfu-util)
#   FLASH_TOOL=st-flash  through the on-board ST-LINK (USB connector CN1; apt-get install stlink-tools)
# ESP32_S3 (ROM bootloader over the USB serial port):
#   PORT=/dev/ttyACM0 (required)  BAUD=460800  ESPTOOL="python3 -m esptool" (pip install esptool)
#
# Before flashing, FLASH_CHECK makes sure the tool is installed and, where it can tell, that a board
# is there to take the image (dfu_probe.py for pydfu, `dfu-util -l`, the serial port's device
# file); each failure is one line naming the fix, not the tool's traceback or usage text.

FLASH_TOOL ?= pydfu
DFU_VID ?= 0x0483
DFU_PID ?= 0xDF11
DFU_UTIL ?= dfu-util
ST_FLASH ?= st-flash
PYDFU ?= $(FW_MP)/tools/pydfu.py
ESPTOOL ?= $(FW_PY) -m esptool
BAUD ?= 460800

DFU_IDS := $(patsubst 0x%,%,$(DFU_VID)):$(patsubst 0x%,%,$(DFU_PID))

ifeq ($(BOARD),NUCLEO_H743ZI2)
FLASH_HINT := The board must be in its DFU bootloader: from MicroPython, machine.bootloader(); \
    on a new board, BOOT0 to VDD (CN11 pin 7 to pin 5) and press RESET (B2). USB cable on CN13.
ifeq ($(FLASH_TOOL),pydfu)
FLASH_FILE := $(FW_BUILD)/firmware.dfu
FLASH_CMD := $(FW_PY) $(PYDFU) --vid $(DFU_VID) --pid $(DFU_PID) -u $(FLASH_FILE)
FLASH_CHECK := test -f $(PYDFU) || { \
    echo "error: $(PYDFU) not found: FLASH_TOOL=pydfu runs MicroPython's tools/pydfu.py; set MICROPY_DIR to the tree the firmware was built with, or use FLASH_TOOL=dfu-util"; exit 1; }; \
  $(FW_PY) $(abspath firmware/dfu_probe.py) $(DFU_VID) $(DFU_PID) "$(FLASH_HINT)"
else ifeq ($(FLASH_TOOL),dfu-util)
FLASH_FILE := $(FW_BUILD)/firmware.dfu
FLASH_CMD := $(DFU_UTIL) -a 0 -d $(DFU_IDS) -D $(FLASH_FILE) -s :leave
FLASH_CHECK := command -v $(DFU_UTIL) >/dev/null || { \
    echo "error: FLASH_TOOL=dfu-util needs $(DFU_UTIL) (apt-get install dfu-util), or use FLASH_TOOL=pydfu"; exit 1; }; \
  $(DFU_UTIL) -l 2>/dev/null | grep -qi '\[$(DFU_IDS)\]' || { \
    echo "error: no board in DFU mode on USB ($(DFU_IDS)). $(FLASH_HINT)"; exit 1; }
else ifeq ($(FLASH_TOOL),st-flash)
FLASH_FILE := $(FW_BUILD)/firmware.bin
FLASH_CMD := $(ST_FLASH) --reset write $(FLASH_FILE) 0x08000000
FLASH_HINT := USB cable on the ST-LINK connector CN1.
FLASH_CHECK := command -v $(ST_FLASH) >/dev/null || { \
    echo "error: FLASH_TOOL=st-flash needs $(ST_FLASH) (apt-get install stlink-tools)"; exit 1; }
else
FLASH_ERROR := FLASH_TOOL=$(FLASH_TOOL) is not one of pydfu, dfu-util, st-flash
endif
else ifeq ($(BOARD),ESP32_S3)
FLASH_FILE := $(FW_BUILD)/firmware.bin
FLASH_CMD := $(ESPTOOL) --chip esp32s3 --port $(PORT) --baud $(BAUD) write_flash 0 $(FLASH_FILE)
FLASH_HINT := If the board does not answer, hold BOOT, press RESET, release BOOT (ROM bootloader).
FLASH_CHECK := test -e $(PORT) || { \
    echo "error: PORT=$(PORT) does not exist: plug the board in, or name its serial port (ls /dev/ttyACM* /dev/ttyUSB*)"; exit 1; }
ifeq ($(ESPTOOL),$(FW_PY) -m esptool)
FLASH_CHECK += ; $(FW_PY) -c "import esptool" 2>/dev/null || { \
    echo "error: flashing BOARD=ESP32_S3 needs esptool: $(FW_PY) -m pip install esptool"; exit 1; }
endif
ifeq ($(PORT),)
FLASH_ERROR := BOARD=ESP32_S3 needs PORT=<serial device>, e.g. make flash BOARD=ESP32_S3 PORT=/dev/ttyACM0
endif
else
FLASH_ERROR := BOARD=$(BOARD) runs on this computer (or in qemu): there is nothing to flash; \
    make flash BOARD=NUCLEO_H743ZI2, ESP32_S3 or OPENMV_H7
endif

flash: fw-paths
ifdef FLASH_ERROR
	@echo "error: $(FLASH_ERROR)"; exit 1
else
ifndef FW_DRY
	@test -f $(FLASH_FILE) || { \
	  echo "error: $(FLASH_FILE) not found: make firmware BOARD=$(BOARD) first"; exit 1; }
	@$(FLASH_CHECK)
	@echo "$(FLASH_HINT)"
endif
	$(FW_RUN) $(FLASH_CMD)
endif

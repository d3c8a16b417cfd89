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

FLASH_TOOL ?= pydfu
DFU_VID ?= 0x0483
DFU_PID ?= 0xDF11
DFU_UTIL ?= dfu-util
ST_FLASH ?= st-flash
PYDFU ?= $(FW_MP)/tools/pydfu.py
ESPTOOL ?= $(FW_PY) -m esptool
BAUD ?= 460800

ifeq ($(BOARD),NUCLEO_H743ZI2)
ifeq ($(FLASH_TOOL),pydfu)
FLASH_FILE := $(FW_BUILD)/firmware.dfu
FLASH_CMD := $(FW_PY) $(PYDFU) --vid $(DFU_VID) --pid $(DFU_PID) -u $(FLASH_FILE)
else ifeq ($(FLASH_TOOL),dfu-util)
FLASH_FILE := $(FW_BUILD)/firmware.dfu
FLASH_CMD := $(DFU_UTIL) -a 0 -d $(patsubst 0x%,%,$(DFU_VID)):$(patsubst 0x%,%,$(DFU_PID)) -D $(FLASH_FILE) -s :leave
else ifeq ($(FLASH_TOOL),st-flash)
FLASH_FILE := $(FW_BUILD)/firmware.bin
FLASH_CMD := $(ST_FLASH) --reset write $(FLASH_FILE) 0x08000000
else
FLASH_ERROR := FLASH_TOOL=$(FLASH_TOOL) is not one of pydfu, dfu-util, st-flash
endif
FLASH_HINT := The board must be in its DFU bootloader: from MicroPython, machine.bootloader(); \
    on a new board, BOOT0 to VDD (CN11 pin 7 to pin 5) and press RESET (B2). USB cable on CN13.
ifeq ($(FLASH_TOOL),st-flash)
FLASH_HINT := USB cable on the ST-LINK connector CN1.
endif
else ifeq ($(BOARD),ESP32_S3)
FLASH_FILE := $(FW_BUILD)/firmware.bin
FLASH_CMD := $(ESPTOOL) --chip esp32s3 --port $(PORT) --baud $(BAUD) write_flash 0 $(FLASH_FILE)
FLASH_HINT := If the board does not answer, hold BOOT, press RESET, release BOOT (ROM bootloader).
ifeq ($(PORT),)
FLASH_ERROR := BOARD=ESP32_S3 needs PORT=<serial device>, e.g. make flash BOARD=ESP32_S3 PORT=/dev/ttyACM0
endif
else
FLASH_ERROR := BOARD=$(BOARD) runs on this computer (or in qemu): there is nothing to flash
endif

flash:
ifdef FLASH_ERROR
	@echo "error: $(FLASH_ERROR)"; exit 1
else
ifndef FW_DRY
	@test -f $(FLASH_FILE) || { \
	  echo "error: $(FLASH_FILE) not found: make firmware BOARD=$(BOARD) first"; exit 1; }
	@echo "$(FLASH_HINT)"
endif
	$(FW_RUN) $(FLASH_CMD)
endif

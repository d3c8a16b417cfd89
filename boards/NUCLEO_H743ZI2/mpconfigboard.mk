# tinymp: MicroPython stm32 port settings for the NUCLEO-H743ZI2 (out-of-tree board folder:
#   make -C ports/stm32 BOARD_DIR=/abs/path/boards/NUCLEO_H743ZI2 USER_C_MODULES=...
# which `make firmware BOARD=NUCLEO_H743ZI2` in the tinymp repository does).

MCU_SERIES = h7
CMSIS_MCU = STM32H743xx
AF_FILE = boards/stm32h743_af.csv

# Single-precision floats, as on the OpenMV Cam H7 (tinymp's engine computes in float32).
MICROPY_FLOAT_IMPL = float

# No bootloader (mboot): the firmware starts at the beginning of flash and is loaded with the
# chip's ROM DFU bootloader or the ST-LINK. The linker script is this board's own (flash layout
# with the ROMFS partition, extra heap blocks); it includes the port's common_basic.ld.
LD_FILES = $(BOARD_DIR)/tinymp_h743zi2.ld
TEXT0_ADDR = 0x08000000

# Keep interrupt handlers and flash-programming code in RAM, so code keeps running while bank 2
# (ROMFS, filesystem) is erased and written.
MICROPY_HW_ENABLE_ISR_UART_FLASH_FUNCS_IN_RAM = 1

# littlefs is available for the filesystem (vfs.VfsLfs2) besides FAT.
MICROPY_VFS_LFS2 = 1

# No network stack (the board's Ethernet is not used by tinymp): no lwIP, no TLS. So the
# firmware needs only the stm32lib, tinyusb and micropython-lib submodules (the last because
# MicroPython's freezing step checks for it, though nothing of it is frozen here).
MICROPY_PY_LWIP = 0
MICROPY_PY_SSL = 0

FROZEN_MANIFEST ?= $(BOARD_DIR)/manifest.py

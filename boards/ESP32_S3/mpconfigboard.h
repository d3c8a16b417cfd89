// tinymp: MicroPython board definition for ESP32-S3 camera boards (8 MB flash, 8 MB octal PSRAM).
#define MICROPY_HW_BOARD_NAME               "ESP32-S3 camera board (tinymp)"
#define MICROPY_HW_MCU_NAME                 "ESP32S3"

// The REPL is on the native USB port (USB-CDC); UART0 keeps a REPL too, for boards whose USB
// connector goes through a USB-serial chip.
#define MICROPY_HW_ENABLE_UART_REPL         (1)

// ROMFS: the "romfs" partition (partitions-8MiB-romfs.csv), mounted at /rom; .tmpm models
// there are memory-mapped and used in place.
#define MICROPY_VFS_ROM                     (1)

# tinymp: MicroPython esp32 port settings for ESP32-S3 camera boards (an ESP32-S3 with 8 MB flash
# and 8 MB octal PSRAM, e.g. Espressif ESP32-S3-EYE, Seeed XIAO ESP32S3 Sense, Freenove
# ESP32-S3-WROOM CAM). Out-of-tree board folder, built by `make firmware BOARD=ESP32_S3` as
#   make -C ports/esp32 BOARD_DIR=/abs/boards/ESP32_S3 USER_C_MODULES=/abs/micropython_modules/micropython.cmake
# (ESP-IDF's environment must be active: see the README's firmware section).
set(IDF_TARGET esp32s3)

# ESP-IDF takes the partition table's path from the sdkconfig. It lives in this folder, whose
# absolute path is only known now, so a one-line sdkconfig fragment naming it is written into the
# build folder and appended to the defaults below.
set(TINYMP_PARTITION_SDKCONFIG ${CMAKE_BINARY_DIR}/sdkconfig.tinymp_partitions)
file(WRITE ${TINYMP_PARTITION_SDKCONFIG}
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions-8MiB-romfs.csv\"\n")

# The port's common fragments (paths relative to ports/esp32), then this board's. Later files
# override earlier ones: octal PSRAM replaces the quad-mode default of sdkconfig.spiram_sx.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    boards/sdkconfig.ble
    boards/sdkconfig.spiram_sx
    boards/sdkconfig.spiram_oct
    boards/sdkconfig.240mhz
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${TINYMP_PARTITION_SDKCONFIG}
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)

# tinymp ESP32-S3: the esp32 port's own frozen modules (needs the micropython-lib submodule), then
# tinymp's on-board Python helpers. Paths are relative to this file.
include("$(PORT_DIR)/boards/manifest.py")
include("../../firmware/manifest.py")

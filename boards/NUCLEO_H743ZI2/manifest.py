# tinymp NUCLEO-H743ZI2: modules frozen into the firmware. Paths are relative to this file.
include("$(MPY_DIR)/extmod/asyncio")
# tinymp's on-board Python helpers (the session agent and the image helpers).
include("../../firmware/manifest.py")

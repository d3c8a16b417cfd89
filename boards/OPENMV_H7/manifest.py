# tinymp OPENMV_H7: the frozen modules of OpenMV's firmware with tinymp built in.
# `make firmware BOARD=OPENMV_H7` passes this file as FROZEN_MANIFEST to OpenMV's build, where
# $(MPY_DIR) is OpenMV's lib/micropython. OpenMV's own board manifest (its libraries, drivers and
# boot script) is included from the OpenMV tree, then tinymp's on-board helpers are added.
include("$(MPY_DIR)/../../boards/OPENMV4/manifest.py")
include("../../firmware/manifest.py")

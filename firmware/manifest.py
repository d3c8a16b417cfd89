# tinymp's on-board Python helpers, frozen into the firmware by the board manifests
# (boards/*/manifest.py include this file). Paths are relative to this file.
#
#   tinymp_agent   the on-board side of the PC session (host/tinymp/tinymp_agent.py, one file
#                  shared with the PC package's simulated board)
#   tinymp_romfs   the agent's ROMFS commit: a pushed model written into the ROMFS segment and
#                  used in place (host/tinymp/tinymp_romfs.py; the agent runs without it)
#   tinymp_camera  camera frame -> model input, a sample store on the filesystem
import os

module("tinymp_camera.py", base_path="modules")

_AGENT_DIR = "../host/tinymp"
if os.path.isfile(os.path.join(_AGENT_DIR, "tinymp_agent.py")):
    module("tinymp_agent.py", base_path=_AGENT_DIR)
else:
    # A checkout without the session agent still builds; `import tinymp_agent` then fails on the
    # board.
    print("tinymp: host/tinymp/tinymp_agent.py not found, tinymp_agent is not frozen")
if os.path.isfile(os.path.join(_AGENT_DIR, "tinymp_romfs.py")):
    module("tinymp_romfs.py", base_path=_AGENT_DIR)
else:
    # Without it the agent commits models to the filesystem only.
    print("tinymp: host/tinymp/tinymp_romfs.py not found, tinymp_romfs is not frozen")

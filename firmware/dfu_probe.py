"""Before `make flash FLASH_TOOL=pydfu`: can pyusb reach exactly one board in DFU mode?

    python firmware/dfu_probe.py VID PID [HINT]

Exits 0 when exactly one USB device VID:PID (0x0483 0xDF11: an STM32 in its ROM DFU bootloader) is
attached and this user may open it. Otherwise prints one line saying what to do (install pyusb or
libusb, put the board into its DFU bootloader, unplug the other boards, get USB permission) and
exits 1: MicroPython's tools/pydfu.py answers each of these with a Python traceback.

Run with the Python that runs pydfu (FW_PYTHON), so that it sees the same pyusb.
"""
import os
import sys


def problem(vid, pid, hint=""):
    """None when pydfu can flash the board, else the one line that says what to do."""
    ids = "%04x:%04x" % (vid, pid)
    try:
        import usb.core
    except ImportError:
        return ("FLASH_TOOL=pydfu needs pyusb: %s -m pip install pyusb (or FLASH_TOOL=dfu-util)"
                % sys.executable)
    try:
        found = list(usb.core.find(find_all=True, idVendor=vid, idProduct=pid))
    except usb.core.NoBackendError:
        return ("pyusb finds no libusb: apt-get install libusb-1.0-0 (macOS: brew install libusb), "
                "or FLASH_TOOL=dfu-util")
    except usb.core.USBError as e:
        return "cannot list the USB devices (%s); try FLASH_TOOL=dfu-util" % e
    if not found:
        return "no board in DFU mode on USB (%s). %s" % (ids, hint)
    if len(found) > 1:
        return "%d boards in DFU mode on USB (%s): leave only the one to flash plugged in" % (
            len(found), ids)
    dev = found[0]
    # Linux: the device node pyusb opens; without write access pydfu fails on its first request
    node = "/dev/bus/usb/%03d/%03d" % (getattr(dev, "bus", 0) or 0, getattr(dev, "address", 0) or 0)
    if sys.platform.startswith("linux") and os.path.exists(node) and not os.access(node, os.W_OK):
        return ("no permission to open the board (%s, %s): run as root (sudo), or add a udev rule "
                "for %s" % (ids, node, ids))
    return None


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    err = problem(int(argv[1], 0), int(argv[2], 0), argv[3] if len(argv) > 3 else "")
    if err:
        print("error: " + err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

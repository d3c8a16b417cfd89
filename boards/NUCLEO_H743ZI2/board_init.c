// tinymp NUCLEO-H743ZI2: early board set-up, called before the clocks and peripherals start.
#include "py/mphal.h"

void tinymp_nucleo_h743zi2_early_init(void) {
    // PD10 enables the STMPS2151 switch that would power VBUS on the user USB connector (CN13)
    // for host mode. The board is a USB device here, so keep the switch off.
    mp_hal_pin_output(pyb_pin_USB_PWR_EN);
    mp_hal_pin_low(pyb_pin_USB_PWR_EN);
}

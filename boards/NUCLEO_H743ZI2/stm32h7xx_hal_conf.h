// tinymp: HAL configuration for the NUCLEO-H743ZI2. Only the board's oscillators differ from the
// stm32 port's common H7 configuration, which this file then includes.
#ifndef TINYMP_NUCLEO_H743ZI2_HAL_CONF_H
#define TINYMP_NUCLEO_H743ZI2_HAL_CONF_H

// HSE: the 8 MHz MCO output of the on-board ST-LINK/V3 (bypass mode, no crystal fitted).
// LSE: the 32.768 kHz crystal X2.
#define HSE_VALUE (8000000)
#define LSE_VALUE (32768)
#define EXTERNAL_CLOCK_VALUE (12288000)

#define HSE_STARTUP_TIMEOUT (5000)
#define LSE_STARTUP_TIMEOUT (5000)

#include "boards/stm32h7xx_hal_conf_base.h"

#endif // TINYMP_NUCLEO_H743ZI2_HAL_CONF_H

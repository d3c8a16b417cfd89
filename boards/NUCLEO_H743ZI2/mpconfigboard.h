// tinymp: MicroPython board definition for ST's NUCLEO-H743ZI2 (STM32H743ZI, Cortex-M7 with
// 2 MB flash, 1 MB SRAM): the chip of the OpenMV Cam H7 on a board without a camera, for running
// and measuring tinymp on real hardware. Written for this project from ST's user manual UM2407
// (board) and reference manual RM0433 (chip).
//
// Flash (tinymp_h743zi2.ld): firmware in bank 1 (1 MB), a 768 KB ROMFS partition for models in
// bank 2 (mounted at /rom, weights used in place), and a 256 KB filesystem at /flash for scripts
// and saved personalised parameters. RAM: the MicroPython heap spans AXI SRAM plus the D2 SRAMs
// and SRAM4 (split heap); DTCM caches flash-filesystem writes.

#define MICROPY_HW_BOARD_NAME       "NUCLEO-H743ZI2 (tinymp)"
#define MICROPY_HW_MCU_NAME         "STM32H743ZI"

#define MICROPY_HW_ENABLE_RTC       (1)
#define MICROPY_HW_ENABLE_RNG       (1)
#define MICROPY_HW_ENABLE_ADC       (1)
#define MICROPY_HW_ENABLE_DAC       (1)
#define MICROPY_HW_ENABLE_USB       (1)
#define MICROPY_HW_ENABLE_SDCARD    (0)     // the -ZI2 has no SD card socket
#define MICROPY_HW_HAS_SWITCH       (1)
#define MICROPY_HW_HAS_FLASH        (1)

// The heap is AXI SRAM plus the extra blocks listed in the linker script's .gc.blocks.table.
#define MICROPY_GC_SPLIT_HEAP       (1)

#define MICROPY_BOARD_EARLY_INIT    tinymp_nucleo_h743zi2_early_init
void tinymp_nucleo_h743zi2_early_init(void);

// Clocks. HSE is the ST-LINK's 8 MHz MCO in bypass mode (solder bridge SB45 as shipped).
// PLL1: 8 MHz / 2 = 4 MHz (input range 4-8 MHz), x 200 = 800 MHz VCO; P /2 -> 400 MHz SYSCLK
// (the AXI/AHB bus runs at 200 MHz), Q /8 -> 100 MHz for the peripheral kernels.
// 400 MHz is the highest SYSCLK MicroPython's stm32 port supports on the H743 (480 MHz needs
// the overdrive handling its power control code does not have); the OpenMV Cam H7 runs at 480.
#define MICROPY_HW_CLK_USE_BYPASS   (1)
#define MICROPY_HW_CLK_PLLM         (2)
#define MICROPY_HW_CLK_PLLN         (200)
#define MICROPY_HW_CLK_PLLP         (2)
#define MICROPY_HW_CLK_PLLQ         (8)
#define MICROPY_HW_CLK_PLLR         (2)
#define MICROPY_HW_CLK_PLLVCI       (RCC_PLL1VCIRANGE_2)
#define MICROPY_HW_CLK_PLLVCO       (RCC_PLL1VCOWIDE)
#define MICROPY_HW_CLK_PLLFRAC      (0)

// PLL3 gives USB its 48 MHz: 8 MHz / 2 = 4 MHz, x 96 = 384 MHz VCO, Q /8 = 48 MHz.
#define MICROPY_HW_CLK_PLL3M        (2)
#define MICROPY_HW_CLK_PLL3N        (96)
#define MICROPY_HW_CLK_PLL3P        (2)
#define MICROPY_HW_CLK_PLL3Q        (8)
#define MICROPY_HW_CLK_PLL3R        (2)
#define MICROPY_HW_CLK_PLL3VCI      (RCC_PLL3VCIRANGE_2)
#define MICROPY_HW_CLK_PLL3VCO      (RCC_PLL3VCOWIDE)
#define MICROPY_HW_CLK_PLL3FRAC     (0)

// Flash wait states: 4 is safe for a 200 MHz AXI clock at every voltage scale (RM0433 table 17).
#define MICROPY_HW_FLASH_LATENCY    FLASH_LATENCY_4

// The 32.768 kHz crystal X2 drives the RTC.
#define MICROPY_HW_RTC_USE_LSE      (1)

// UARTs: USART3 is wired to the ST-LINK virtual COM port (the REPL there, 115200 baud, as well
// as on USB); USART2 is on the Zio connector.
#define MICROPY_HW_UART2_TX         (pin_D5)
#define MICROPY_HW_UART2_RX         (pin_D6)
#define MICROPY_HW_UART3_TX         (pin_D8)
#define MICROPY_HW_UART3_RX         (pin_D9)
#define MICROPY_HW_UART_REPL        PYB_UART_3
#define MICROPY_HW_UART_REPL_BAUD   115200

// I2C1 and SPI1 on the Arduino pins (D15/D14 and D13/D12/D11/D10).
#define MICROPY_HW_I2C1_SCL         (pin_B8)
#define MICROPY_HW_I2C1_SDA         (pin_B9)
#define MICROPY_HW_SPI1_NSS         (pin_D14)
#define MICROPY_HW_SPI1_SCK         (pin_A5)
#define MICROPY_HW_SPI1_MISO        (pin_A6)
#define MICROPY_HW_SPI1_MOSI        (pin_B5)

// User button B1 (blue): pulled down on the board, high while pressed.
#define MICROPY_HW_USRSW_PIN        (pin_C13)
#define MICROPY_HW_USRSW_PULL       (GPIO_NOPULL)
#define MICROPY_HW_USRSW_EXTI_MODE  (GPIO_MODE_IT_RISING)
#define MICROPY_HW_USRSW_PRESSED    (1)

// LEDs LD1 green, LD2 yellow, LD3 red (LED(3) also signals pending flash-filesystem writes).
#define MICROPY_HW_LED1             (pin_B0)
#define MICROPY_HW_LED2             (pin_E1)
#define MICROPY_HW_LED3             (pin_B14)
#define MICROPY_HW_LED_ON(pin)      (mp_hal_pin_high(pin))
#define MICROPY_HW_LED_OFF(pin)     (mp_hal_pin_low(pin))

// USB full speed on the user connector CN13 (REPL, /flash as a drive, and the data path of the
// tinymp session).
#define MICROPY_HW_USB_FS              (1)
#define MICROPY_HW_USB_VBUS_DETECT_PIN (pin_A9)
#define MICROPY_HW_USB_OTG_ID_PIN      (pin_A10)

// ROMFS partition 0 in internal flash (address and size from the linker script): the home of
// .tmpm models, deployed with `mpremote romfs deploy DIR` and mounted at /rom.
#define MICROPY_HW_ROMFS_ENABLE_INTERNAL_FLASH (1)
#define MICROPY_HW_ROMFS_ENABLE_PART0          (1)

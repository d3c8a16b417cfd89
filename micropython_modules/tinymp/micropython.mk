# tinymp as a MicroPython user C module (make-based ports: unix, stm32, qemu, OpenMV's build).
# The binding is scanned for qstrs (SRC_USERMOD_C); the portable core is plain C
# (SRC_USERMOD_LIB_C, not scanned).
TINYMP_MOD_DIR := $(USERMOD_DIR)

SRC_USERMOD_C += $(TINYMP_MOD_DIR)/modtinymp.c

SRC_USERMOD_LIB_C += $(sort $(wildcard $(TINYMP_MOD_DIR)/core/*.c $(TINYMP_MOD_DIR)/core/*/*.c))

CFLAGS_USERMOD += -I$(TINYMP_MOD_DIR)/core

# The core's FPv5 code paths (core/kernels/tmp_dsp.h): GCC defines the same macros for
# -mfpu=fpv5-sp-d16 (a Cortex-M7's single-precision FPU) as for a Cortex-M4F's FPv4, so the
# core is told. OpenMV's build (FPU=fpv5-sp-d16 on the H7) exports its CFLAGS to MicroPython's
# make, which reads this file, so the flag is seen here; any other build can pass TINYMP_FPV5=1
# (or 0 to keep the FPv4 code). A double-precision FPv5 (MicroPython's own H7 and F76x builds)
# is recognised by the core without it.
TINYMP_FPV5 ?= $(if $(filter -mfpu=fpv5%,$(CFLAGS)),1,0)
ifeq ($(TINYMP_FPV5),1)
CFLAGS_USERMOD += -DTMP_FPV5
endif

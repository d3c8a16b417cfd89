# tinymp as a MicroPython user C module (make-based ports: unix, stm32, qemu, OpenMV's build).
# The binding is scanned for qstrs (SRC_USERMOD_C); the portable core is plain C
# (SRC_USERMOD_LIB_C, not scanned).
TINYMP_MOD_DIR := $(USERMOD_DIR)

SRC_USERMOD_C += $(TINYMP_MOD_DIR)/modtinymp.c

SRC_USERMOD_LIB_C += $(sort $(wildcard $(TINYMP_MOD_DIR)/core/*.c $(TINYMP_MOD_DIR)/core/*/*.c))

CFLAGS_USERMOD += -I$(TINYMP_MOD_DIR)/core

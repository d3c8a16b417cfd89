# tinymp — bare-metal Cortex-M7 bench programs on QEMU mps2-an500 (see firmware/bench/README.md).
# Included by the top-level Makefile; paths are relative to the repository root.
#
#   make bench-kernels   instructions per MAC of every int8 forward kernel, DSP path and portable C
#                        path, and of the fp32 condensed backward kernels (r = 4, r = 2; in the
#                        DSP program only), counted under QEMU -icount (build/bench/)
#   make kernel-check    the same randomised kernel cases on the M7 (DSP path and portable path)
#                        and on the host (portable path): the output digests must be identical
#
# Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm.

BENCH_DIR := firmware/bench
BENCH_BUILD := build/bench
BENCH_CORE := micropython_modules/tinymp/core
BENCH_ARM_CC ?= arm-none-eabi-gcc
BENCH_HOST_CC ?= gcc
BENCH_M7 := -mcpu=cortex-m7 -mthumb -mfpu=fpv5-sp-d16 -mfloat-abi=hard
BENCH_WARN := -std=c99 -Wall -Wextra -Werror
BENCH_CFLAGS := $(BENCH_WARN) -O2 $(BENCH_M7) -ffunction-sections -fdata-sections \
    -I$(BENCH_CORE) -I$(BENCH_DIR)
BENCH_LDFLAGS := $(BENCH_M7) -T $(BENCH_DIR)/link.ld --specs=nano.specs --specs=rdimon.specs \
    -Wl,--gc-sections
BENCH_QEMU ?= qemu-system-arm
BENCH_QEMU_RUN := $(BENCH_QEMU) -M mps2-an500 -nographic -monitor null -serial null -semihosting \
    -icount shift=0,sleep=off -kernel

BENCH_KERNEL_SRC := $(sort $(wildcard $(BENCH_CORE)/kernels/*.c))
BENCH_KERNEL_HDR := $(wildcard $(BENCH_CORE)/*.h $(BENCH_CORE)/kernels/*.h)
BENCH_HARNESS_HDR := $(wildcard $(BENCH_DIR)/*.h) $(BENCH_DIR)/bench.mk
BENCH_START := $(BENCH_DIR)/startup.S $(BENCH_DIR)/bench_timer.S
BENCH_HARNESS_SRC := $(BENCH_DIR)/bench.c $(BENCH_DIR)/bench_main.c $(BENCH_DIR)/bench_kernels.c

# The kernels twice for the M7: the default build (DSP path where __ARM_FEATURE_DSP) and the
# portable C path (-DTMP_NO_DSP), to compare both.
BENCH_OBJ_DSP := $(patsubst $(BENCH_CORE)/kernels/%.c,$(BENCH_BUILD)/dsp/%.o,$(BENCH_KERNEL_SRC))
BENCH_OBJ_PORT := $(patsubst $(BENCH_CORE)/kernels/%.c,$(BENCH_BUILD)/portable/%.o,$(BENCH_KERNEL_SRC))

$(BENCH_BUILD)/dsp/%.o: $(BENCH_CORE)/kernels/%.c $(BENCH_KERNEL_HDR) $(BENCH_DIR)/bench.mk
	@mkdir -p $(dir $@)
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -c $< -o $@

$(BENCH_BUILD)/portable/%.o: $(BENCH_CORE)/kernels/%.c $(BENCH_KERNEL_HDR) $(BENCH_DIR)/bench.mk
	@mkdir -p $(dir $@)
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -DTMP_NO_DSP -c $< -o $@

# The DSP program also runs the fp32 backward kernels (core/train; they have no DSP path):
# suites train-r4 and train-r2 of bench_train_kernels.c.
BENCH_TRAIN_KERNEL_SRC := $(sort $(wildcard $(BENCH_CORE)/train/*.c))
BENCH_TRAIN_KERNEL_HDR := $(wildcard $(BENCH_CORE)/train/*.h)
BENCH_TRAIN_KERNEL_OBJ := $(patsubst $(BENCH_CORE)/train/%.c,$(BENCH_BUILD)/train/%.o,$(BENCH_TRAIN_KERNEL_SRC))

$(BENCH_BUILD)/train/%.o: $(BENCH_CORE)/train/%.c $(BENCH_KERNEL_HDR) $(BENCH_TRAIN_KERNEL_HDR) $(BENCH_DIR)/bench.mk
	@mkdir -p $(dir $@)
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -c $< -o $@

$(BENCH_BUILD)/bench_kernels.elf: $(BENCH_START) $(BENCH_HARNESS_SRC) $(BENCH_DIR)/bench_train_kernels.c $(BENCH_HARNESS_HDR) $(BENCH_OBJ_DSP) $(BENCH_TRAIN_KERNEL_OBJ) $(BENCH_DIR)/link.ld
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -DBENCH_TRAIN_KERNELS $(BENCH_LDFLAGS) $(BENCH_START) $(BENCH_HARNESS_SRC) $(BENCH_DIR)/bench_train_kernels.c $(BENCH_OBJ_DSP) $(BENCH_TRAIN_KERNEL_OBJ) -lm -o $@

$(BENCH_BUILD)/bench_kernels_portable.elf: $(BENCH_START) $(BENCH_HARNESS_SRC) $(BENCH_HARNESS_HDR) $(BENCH_OBJ_PORT) $(BENCH_DIR)/link.ld
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -DTMP_NO_DSP $(BENCH_LDFLAGS) $(BENCH_START) $(BENCH_HARNESS_SRC) $(BENCH_OBJ_PORT) -o $@

# kernel_check also covers the training kernels with a Cortex-M path (the clamp mask, the int8
# weight update, the pointwise input gradient, the conv / pointwise weight gradient)
BENCH_CHECK_TRAIN_SRC := $(BENCH_CORE)/train/tmp_mask_s8.c $(BENCH_CORE)/train/tmp_sgd_s8_stochastic.c \
    $(BENCH_CORE)/train/tmp_pwconv_dx_f32.c $(BENCH_CORE)/train/tmp_conv_dw_gc_f32.c \
    $(BENCH_CORE)/train/tmp_gc_sums_s8.c
BENCH_CHECK_TRAIN_HDR := $(wildcard $(BENCH_CORE)/train/*.h)

$(BENCH_BUILD)/kernel_check.elf: $(BENCH_START) $(BENCH_DIR)/kernel_check.c $(BENCH_HARNESS_HDR) $(BENCH_OBJ_DSP) $(BENCH_CHECK_TRAIN_SRC) $(BENCH_CHECK_TRAIN_HDR) $(BENCH_DIR)/link.ld
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) $(BENCH_LDFLAGS) $(BENCH_START) $(BENCH_DIR)/kernel_check.c $(BENCH_CHECK_TRAIN_SRC) $(BENCH_OBJ_DSP) -lm -o $@

$(BENCH_BUILD)/kernel_check_portable.elf: $(BENCH_START) $(BENCH_DIR)/kernel_check.c $(BENCH_HARNESS_HDR) $(BENCH_OBJ_PORT) $(BENCH_CHECK_TRAIN_SRC) $(BENCH_CHECK_TRAIN_HDR) $(BENCH_DIR)/link.ld
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -DTMP_NO_DSP $(BENCH_LDFLAGS) $(BENCH_START) $(BENCH_DIR)/kernel_check.c $(BENCH_CHECK_TRAIN_SRC) $(BENCH_OBJ_PORT) -lm -o $@

# the host copy: the same kernel_check.c with the portable kernels, built by the host compiler
$(BENCH_BUILD)/kernel_check_host: $(BENCH_DIR)/kernel_check.c $(BENCH_KERNEL_SRC) $(BENCH_KERNEL_HDR) $(BENCH_CHECK_TRAIN_SRC) $(BENCH_CHECK_TRAIN_HDR) $(BENCH_HARNESS_HDR)
	@mkdir -p $(dir $@)
	$(BENCH_HOST_CC) $(BENCH_WARN) -O2 -I$(BENCH_CORE) -I$(BENCH_DIR) $(BENCH_DIR)/kernel_check.c $(BENCH_CHECK_TRAIN_SRC) $(BENCH_KERNEL_SRC) -lm -o $@

# The training bench: the whole core (model, planners, trainer, kernels, backward kernels) for the
# M7 with the DSP paths, and bench_train.c; driven by tools/bench_train.py (make bench).
BENCH_CORE_SRC := $(sort $(wildcard $(BENCH_CORE)/*.c) $(wildcard $(BENCH_CORE)/train/*.c))
BENCH_CORE_HDR := $(BENCH_KERNEL_HDR) $(wildcard $(BENCH_CORE)/train/*.h)
BENCH_OBJ_CORE := $(patsubst $(BENCH_CORE)/%.c,$(BENCH_BUILD)/core/%.o,$(BENCH_CORE_SRC))

$(BENCH_BUILD)/core/%.o: $(BENCH_CORE)/%.c $(BENCH_CORE_HDR) $(BENCH_DIR)/bench.mk
	@mkdir -p $(dir $@)
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) -c $< -o $@

$(BENCH_BUILD)/bench_train.elf: $(BENCH_START) $(BENCH_DIR)/bench.c $(BENCH_DIR)/bench_train.c $(BENCH_HARNESS_HDR) $(BENCH_OBJ_CORE) $(BENCH_OBJ_DSP) $(BENCH_DIR)/link.ld
	$(BENCH_ARM_CC) $(BENCH_CFLAGS) $(BENCH_LDFLAGS) $(BENCH_START) $(BENCH_DIR)/bench.c $(BENCH_DIR)/bench_train.c $(BENCH_OBJ_CORE) $(BENCH_OBJ_DSP) -lm -o $@

.PHONY: bench-build bench-kernels kernel-check bench-tools bench-train-elf

bench-train-elf: bench-tools $(BENCH_BUILD)/bench_train.elf

bench-tools:
	@$(call arm_cc_check,make bench,$(BENCH_ARM_CC))
	@command -v $(BENCH_QEMU) >/dev/null || { echo "error: $(BENCH_QEMU) not found (apt-get install qemu-system-arm)"; exit 1; }

bench-build: bench-tools $(BENCH_BUILD)/bench_kernels.elf $(BENCH_BUILD)/bench_kernels_portable.elf \
    $(BENCH_BUILD)/kernel_check.elf $(BENCH_BUILD)/kernel_check_portable.elf $(BENCH_BUILD)/kernel_check_host

bench-kernels: bench-tools $(BENCH_BUILD)/bench_kernels.elf $(BENCH_BUILD)/bench_kernels_portable.elf
	@echo "== bench-kernels: Cortex-M7 (arm-none-eabi-gcc $$($(BENCH_ARM_CC) -dumpversion) -O2), QEMU $$($(BENCH_QEMU) --version | head -1 | sed 's/.*version //') mps2-an500 =="
	@$(BENCH_QEMU_RUN) $(BENCH_BUILD)/bench_kernels.elf
	@$(BENCH_QEMU_RUN) $(BENCH_BUILD)/bench_kernels_portable.elf

kernel-check: bench-tools $(BENCH_BUILD)/kernel_check.elf $(BENCH_BUILD)/kernel_check_portable.elf $(BENCH_BUILD)/kernel_check_host
	@$(BENCH_QEMU_RUN) $(BENCH_BUILD)/kernel_check.elf > $(BENCH_BUILD)/kernel_check.m7-dsp.txt
	@$(BENCH_QEMU_RUN) $(BENCH_BUILD)/kernel_check_portable.elf > $(BENCH_BUILD)/kernel_check.m7-portable.txt
	@$(BENCH_BUILD)/kernel_check_host > $(BENCH_BUILD)/kernel_check.host.txt
	@cmp -s $(BENCH_BUILD)/kernel_check.m7-dsp.txt $(BENCH_BUILD)/kernel_check.host.txt && \
	  cmp -s $(BENCH_BUILD)/kernel_check.m7-portable.txt $(BENCH_BUILD)/kernel_check.host.txt && \
	  { tail -n 1 $(BENCH_BUILD)/kernel_check.host.txt; echo "kernel-check: M7 DSP path, M7 portable path and host portable path agree"; } || \
	  { for v in m7-dsp m7-portable; do diff $(BENCH_BUILD)/kernel_check.$$v.txt $(BENCH_BUILD)/kernel_check.host.txt | head -10; done; echo "kernel-check: outputs differ"; exit 1; }

# make bench: every method on MobileNetV2-w0.35@128, MCUNet@128 and the demo model under QEMU,
# compared with the host build; writes bench/results.json, bench/RESULTS.md, bench/RESULTS.png.
# BENCH_ARGS passes options to tinymp.bench (e.g. --models demo, --full-runs).
.PHONY: bench
bench: venv bench-tools $(BENCH_BUILD)/bench_train.elf
	$(VPY) -m tinymp.bench --out bench --notes bench/READING.md $(BENCH_ARGS)

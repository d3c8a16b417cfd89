/*
 * Bare-metal start-up for QEMU's mps2-an500 (Cortex-M7): vector table and reset handler.
 *
 * Reset_Handler:
 *   1. enables the FPU (CPACR: full access to CP10/CP11) - the code is built with
 *      -mfloat-abi=hard, and newlib's start-up already touches FP registers;
 *   2. paints the stack that newlib's _start will switch to with BENCH_STACK_PAINT, so that the
 *      harness can measure the peak stack (bench.c). newlib's rdimon crt0 asks the debugger
 *      (semihosting SYS_HEAPINFO) where the stack is and moves sp there; QEMU answers with the
 *      top of the board's 16 MiB PSRAM, not with our linker symbol. So we ask the same question
 *      here and paint BENCH_STACK_BYTES below the answer (or below __stack when it is 0);
 *   3. jumps to newlib's _start (rdimon-crt0: zeroes .bss, semihosting argv, main, exit).
 *
 * The reset handler itself runs on the vector table's initial stack (__stack at the top of the
 * 4 MiB SSRAM, see link.ld), which is not the painted region.
 */
    .syntax unified
    .cpu cortex-m7
    .thumb

    .equ BENCH_STACK_PAINT, 0x5AA5C33C
    .equ BENCH_STACK_BYTES, 0x40000      /* 256 KiB painted below the stack top */

    .section .vectors, "a", %progbits
    .align 2
    .global __vectors
__vectors:
    .word __stack                 /* initial SP */
    .word Reset_Handler           /* reset (the assembler sets the Thumb bit) */
    .word Fault_Handler           /* NMI */
    .word Fault_Handler           /* HardFault */
    .word Fault_Handler           /* MemManage */
    .word Fault_Handler           /* BusFault */
    .word Fault_Handler           /* UsageFault */
    .word 0, 0, 0, 0
    .word Fault_Handler           /* SVCall */
    .word Fault_Handler           /* DebugMon */
    .word 0
    .word Fault_Handler           /* PendSV */
    .word Fault_Handler           /* SysTick */

    .text
    .align 2
    .thumb_func
    .global Reset_Handler
    .type Reset_Handler, %function
Reset_Handler:
    /* 1. CPACR |= (0xF << 20): CP10 and CP11 full access */
    ldr     r0, =0xE000ED88
    ldr     r1, [r0]
    orr     r1, r1, #(0xF << 20)
    str     r1, [r0]
    dsb
    isb

    /* 2. SYS_HEAPINFO (0x16): r1 -> address of a pointer to a 4-word block */
    ldr     r1, =heapinfo_ptr
    movs    r0, #0x16
    bkpt    0xAB
    ldr     r0, =heapinfo_block
    ldr     r2, [r0, #8]          /* stack base (top) */
    cmp     r2, #0
    bne     1f
    ldr     r2, =__stack
1:  bic     r2, r2, #7
    ldr     r1, =__bench_stack_top
    str     r2, [r1]
    sub     r1, r2, #BENCH_STACK_BYTES
    ldr     r0, =__bench_stack_limit
    str     r1, [r0]
    ldr     r3, =BENCH_STACK_PAINT
2:  str     r3, [r1], #4
    cmp     r1, r2
    blo     2b

    /* 3. newlib */
    b       _start
    .size Reset_Handler, . - Reset_Handler

/* Any fault: report over semihosting and exit with status 99 (ADP_Stopped_ApplicationExit
 * with a non-zero code would need the extended-exit feature; SYS_EXIT with reason
 * ADP_Stopped_RunTimeErrorUnknown makes QEMU exit with status 1). */
    .thumb_func
    .global Fault_Handler
    .type Fault_Handler, %function
Fault_Handler:
    ldr     r1, =fault_msg
    movs    r0, #0x04             /* SYS_WRITE0 */
    bkpt    0xAB
    movs    r0, #0x18             /* SYS_EXIT */
    ldr     r1, =0x20023          /* ADP_Stopped_RunTimeErrorUnknown */
    bkpt    0xAB
3:  b       3b
    .size Fault_Handler, . - Fault_Handler

    .section .rodata
fault_msg:
    .asciz "bench: CPU fault\n"

    .data
    .align 2
heapinfo_ptr:
    .word heapinfo_block

    /* in .data, not .bss: newlib's _start zeroes .bss after the reset handler wrote these */
    .align 3
heapinfo_block:
    .space 16
    .global __bench_stack_top
__bench_stack_top:
    .word 0
    .global __bench_stack_limit
__bench_stack_limit:
    .word 0

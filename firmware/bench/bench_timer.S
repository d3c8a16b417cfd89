/*
 * Instruction counting with QEMU's -icount shift=0: one guest instruction = 1 ns of virtual time.
 * CMSDK APB timer 0 of mps2-an500 (0x40000000) counts down at 25 MHz, i.e. once per 40
 * instructions. bench_run_timed() synchronises to a timer edge, calls fn(arg), then spins until
 * the next edge, counting 4-instruction spin iterations:
 *
 *   out[0] = timer value read just after the start edge
 *   out[1] = timer value read just after the end edge
 *   out[2] = spin iterations after fn returned
 *
 * so that  instructions(fn) = 40 * (out[0] - out[1]) - 4 * out[2] - BENCH_TIMED_OVERHEAD
 * (bench.c), to within the phase uncertainty of the two spin loops (3 + 4 instructions;
 * bench.c calibrates the constant and reports the resolution).
 */
    .syntax unified
    .cpu cortex-m7
    .thumb

    .equ TIMER0_VALUE, 0x40000004

    .text
    .align 2
    .thumb_func
    .global bench_run_timed
    .type bench_run_timed, %function
@ void bench_run_timed(void (*fn)(void *), void *arg, uint32_t out[3])
bench_run_timed:
    push    {r4, r5, r6, r7, r8, lr}
    mov     r4, r0
    mov     r5, r1
    mov     r6, r2
    ldr     r7, =TIMER0_VALUE
    ldr     r1, [r7]
1:  ldr     r2, [r7]                @ 3-instruction loop: ldr, cmp, bne
    cmp     r2, r1
    beq     1b
    str     r2, [r6]
    mov     r0, r5
    blx     r4
    ldr     r1, [r7]
    movs    r3, #0
2:  adds    r3, r3, #1              @ 4-instruction loop: adds, ldr, cmp, beq
    ldr     r2, [r7]
    cmp     r2, r1
    beq     2b
    str     r2, [r6, #4]
    str     r3, [r6, #8]
    pop     {r4, r5, r6, r7, r8, pc}
    .size bench_run_timed, . - bench_run_timed

@ void bench_spin(void *n): executes exactly 2 * n + 1 instructions (n >= 1) - a calibration load
@ void bench_spin_even(void *n): exactly 2 * n + 2 instructions (n >= 1)
    .align 2
    .thumb_func
    .global bench_spin_even
    .type bench_spin_even, %function
bench_spin_even:
    nop                             @ falls through into bench_spin
    .size bench_spin_even, . - bench_spin_even

    .thumb_func
    .global bench_spin
    .type bench_spin, %function
bench_spin:
1:  subs    r0, r0, #1
    bne     1b
    bx      lr
    .size bench_spin, . - bench_spin

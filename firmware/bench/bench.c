/*
 * Bench harness: instruction counting on QEMU mps2-an500 with -icount shift=0 (see bench.h,
 * bench_timer.S and README.md).
 */
#include <stdint.h>
#include <stdio.h>

#include "bench.h"

/* CMSDK APB timer 0: 32-bit down-counter clocked at 25 MHz (SYSCLK). */
#define TIMER0_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER0_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER0_RELOAD (*(volatile uint32_t *)0x40000008u)
/* With -icount shift=0, one instruction is 1 ns; one 25 MHz tick is 40 ns. */
#define INSNS_PER_TICK 40u

#define STACK_PAINT 0x5AA5C33Cu

void bench_run_timed(void (*fn)(const void *), const void *arg, uint32_t out[3]);
void bench_spin(const void *n);
void bench_spin_even(const void *n);

/* set by startup.S: the painted stack region [limit, top) */
extern uint32_t __bench_stack_top;
extern uint32_t __bench_stack_limit;

static int32_t g_offset;     /* calibrated constant: raw count - true count */
static uint32_t g_stack_base; /* stack bytes the harness itself uses below bench_measure */
static int32_t g_resolution; /* +- this many instructions per measurement */

static uint64_t raw_count64(void (*fn)(const void *), const void *arg) {
    uint32_t t[3];
    bench_run_timed(fn, arg, t);
    /* the 32-bit timer wraps after 2^32 ticks (about 1.7e11 instructions) */
    return (uint64_t)(t[0] - t[1]) * INSNS_PER_TICK - 4u * (uint64_t)t[2];
}

static uint32_t raw_count(void (*fn)(const void *), const void *arg) {
    return (uint32_t)raw_count64(fn, arg);
}

int bench_init(void) {
    TIMER0_CTRL = 0;
    TIMER0_RELOAD = 0xFFFFFFFFu;
    TIMER0_VALUE = 0xFFFFFFFFu;
    TIMER0_CTRL = 1; /* enable, no interrupt */

    /* Calibrate on bench_spin(n) and bench_spin_even(n), which execute exactly 2n + 1 and
     * 2n + 2 instructions: 2 x 20 consecutive n cover every phase of the 40-instruction tick. */
    int32_t lo = INT32_MAX, hi = INT32_MIN;
    for (uint32_t n = 1000; n < 1040; n++) {
        const int odd = (n & 1u) != 0;
        const uint32_t truth = 2 * (n - odd) + 1 + (uint32_t)odd;
        int32_t e = (int32_t)raw_count(odd ? bench_spin_even : bench_spin,
            (const void *)(uintptr_t)(n - odd)) - (int32_t)truth;
        if (e < lo) {
            lo = e;
        }
        if (e > hi) {
            hi = e;
        }
    }
    g_offset = (lo + hi) / 2;
    g_resolution = hi - g_offset > g_offset - lo ? hi - g_offset : g_offset - lo;
    /* A real-time clock (no -icount) gives wildly varying figures. */
    uint32_t big = raw_count(bench_spin, (const void *)(uintptr_t)500000u) - (uint32_t)g_offset;
    int32_t big_err = (int32_t)(big - 1000001u);
    g_stack_base = 0;
    g_stack_base = bench_measure(bench_spin, (const void *)(uintptr_t)10u).stack_bytes;
    if (hi - lo > 16 || big_err > 16 || big_err < -16) {
        printf("error: instruction counts are not deterministic (spread %ld, error %ld on 1000001):"
               " run QEMU with -icount shift=0,sleep=off\n", (long)(hi - lo), (long)big_err);
        return -1;
    }
    return 0;
}

void bench_print_method(void) {
    printf("method: QEMU -icount shift=0 (1 instruction = 1 ns of virtual time), CMSDK timer0 at "
           "25 MHz (1 tick = 40 instructions),\n"
           "        edge-synchronised start and stop; resolution +-%ld instruction(s) per call "
           "(calibrated on a known loop).\n"
           "        These are emulated instruction counts, not Cortex-M7 cycles.\n",
        (long)g_resolution);
}

static inline uintptr_t current_sp(void) {
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

bench_result bench_measure(void (*fn)(const void *), const void *arg) {
    bench_result r;
    /* paint from the limit up to just below this frame */
    uint32_t *lim = (uint32_t *)__bench_stack_limit;
    uintptr_t sp = current_sp();
    uint32_t *end = (uint32_t *)((sp - 16u) & ~(uintptr_t)7u);
    if (lim == 0 || (uintptr_t)lim >= (uintptr_t)end || sp > __bench_stack_top) {
        lim = end; /* unknown stack region: no stack figure */
    }
    for (uint32_t *p = lim; p < end; p++) {
        *p = STACK_PAINT;
    }
    uint64_t raw = raw_count64(fn, arg);
    r.instructions64 = raw - (uint64_t)(int64_t)g_offset;
    r.instructions = (uint32_t)r.instructions64;
    uint32_t *p = lim;
    while (p < end && *p == STACK_PAINT) {
        p++;
    }
    /* bytes below this function's sp that the call touched, less the harness's own */
    uint32_t used = p < end ? (uint32_t)(sp - (uintptr_t)p) : 0u;
    r.stack_bytes = used > g_stack_base ? used - g_stack_base : 0u;
    return r;
}

static void print_x100(uint32_t v) {
    printf("%5lu.%02lu", (unsigned long)(v / 100u), (unsigned long)(v % 100u)); /* 8 wide */
}

int bench_run_suite(const bench_suite *s) {
    int failed = 0;
    printf("\n%s\n", s->title);
    printf("%-12s %-24s %12s %12s %8s %11s %6s %8s\n", "kernel", "shape", "work", "instructions",
        "per unit", s->ref_label != NULL ? s->ref_label : "CMSIS-NN", "vs ref", "stack B");
    for (int i = 0; i < s->count; i++) {
        const bench_case *c = &s->cases[i];
        if (c->setup) {
            c->setup(c->arg);
        }
        bench_result r = bench_measure(c->run, c->arg);
        if (s->results != NULL) {
            s->results[i] = r;
        }
        /* instructions per unit x 100, rounded */
        uint32_t per = (uint32_t)(((uint64_t)r.instructions * 100u + c->work / 2u) / c->work);
        printf("%-12s %-24s %7lu %-4s %12lu ", c->name, c->shape, (unsigned long)c->work, c->unit,
            (unsigned long)r.instructions);
        print_x100(per);
        char ref[24] = "-";
        char rel[12] = "";
        if (c->ref_lo_x100 >= 0) {
            if (c->ref_hi_x100 > c->ref_lo_x100) {
                snprintf(ref, sizeof ref, "%ld.%02ld-%ld.%02ld", (long)(c->ref_lo_x100 / 100),
                    (long)(c->ref_lo_x100 % 100), (long)(c->ref_hi_x100 / 100),
                    (long)(c->ref_hi_x100 % 100));
            } else {
                snprintf(ref, sizeof ref, "%ld.%02ld", (long)(c->ref_lo_x100 / 100),
                    (long)(c->ref_lo_x100 % 100));
            }
            /* relative to the reference (its low end when it is a range), rounded */
            const int32_t d = (int32_t)per - c->ref_lo_x100;
            const int32_t pct = (d * 100 + (d >= 0 ? c->ref_lo_x100 / 2 : -c->ref_lo_x100 / 2)) /
                c->ref_lo_x100;
            snprintf(rel, sizeof rel, "%+ld%%", (long)pct);
        }
        printf(" %11s %6s", ref, rel);
        printf(" %8lu\n", (unsigned long)r.stack_bytes);
        if (s->last_error != NULL && s->last_error()) {
            printf("error: case %s %s failed\n", c->name, c->shape);
            failed = 1;
        }
    }
    if (s->summary != NULL) {
        s->summary(s);
    }
    return failed;
}

static uint32_t g_rand = 0x12345678u;

void bench_seed(uint32_t seed) {
    g_rand = seed ? seed : 0x12345678u;
}

uint32_t bench_rand(void) {
    uint32_t x = g_rand;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g_rand = x;
    return x;
}

void bench_fill_s8(int8_t *p, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        p[i] = (int8_t)(bench_rand() >> 24);
    }
}

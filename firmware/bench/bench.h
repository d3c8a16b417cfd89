/*
 * Bench harness for the bare-metal Cortex-M7 programs (QEMU mps2-an500, -icount shift=0).
 *
 * A suite is a table of cases; each case has a setup (not counted) and a run (counted: every
 * instruction executed between the call and the return of run()). The harness prints one row per
 * case: instructions, instructions per unit of work (MAC, element, sample...), an optional
 * reference figure, and the peak stack below the harness during the run.
 *
 * Adding a suite (e.g. training phases): write a `const bench_suite bench_suite_xxx` with its
 * cases in its own file and list it in bench_main.c's suite table. A suite may name its
 * reference column (ref_label), keep the results (results) and print a summary after its table
 * (summary), e.g. a target check.
 */
#ifndef TMP_BENCH_H
#define TMP_BENCH_H

#include <stdint.h>

typedef struct {
    const char *name;     /* kernel / phase, e.g. "pwconv" */
    const char *shape;    /* human-readable shape, e.g. "16x16x48->16" */
    const char *unit;     /* what `work` counts: "MAC", "elem", ... */
    uint32_t work;        /* units of work of one run */
    int32_t ref_lo_x100;  /* reference instructions per unit x 100 (CMSIS-NN), or -1: none; */
    int32_t ref_hi_x100;  /* a range lo..hi when the reference is one (hi == lo otherwise) */
    void (*setup)(const void *arg); /* prepares inputs, not counted (may be NULL) */
    void (*run)(const void *arg);   /* the counted call */
    const void *arg;                /* passed to both */
} bench_case;

typedef struct bench_suite_s bench_suite;

typedef struct {
    uint32_t instructions;   /* the count modulo 2^32 (kernel cases stay far below) */
    uint64_t instructions64; /* the full count (training steps and whole runs) */
    uint32_t stack_bytes;
} bench_result;

struct bench_suite_s {
    const char *name;
    const char *title;
    const bench_case *cases;
    int count;
    int (*last_error)(void); /* non-zero when the last run failed (e.g. a kernel's status) */
    const char *ref_label;   /* header of the reference column; NULL: "CMSIS-NN" */
    bench_result *results;   /* NULL, or `count` entries: each case's result is stored there */
    void (*summary)(const bench_suite *s); /* printed after the table (NULL: nothing) */
};

/** Initialise the timer and calibrate; returns 0, or -1 (with a message) when the program is not
 *  running under QEMU with -icount shift=0. */
int bench_init(void);
/** Count the instructions of one call of fn() (and its peak stack). */
bench_result bench_measure(void (*fn)(const void *), const void *arg);
/** Run and print every case; 0 when all ran (a suite never fails on a figure, only on an error). */
int bench_run_suite(const bench_suite *suite);
/** One line naming the counting method and its resolution. */
void bench_print_method(void);

/** Deterministic pseudo-random numbers (xorshift32) for the cases' data. */
uint32_t bench_rand(void);
void bench_seed(uint32_t seed);
void bench_fill_s8(int8_t *p, uint32_t n);

#endif /* TMP_BENCH_H */

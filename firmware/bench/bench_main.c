/*
 * Bare-metal bench program: runs the suites named on the semihosting command line (all when
 * none is named) and exits through semihosting with 0, or 1 on any error.
 *
 * Suites: "kernels" (bench_kernels.c); in the default (DSP) build also "train-r4" and "train-r2"
 * (bench_train_kernels.c: the fp32 backward kernels, which have no DSP path, so the portable
 * build, -DTMP_NO_DSP, does not repeat them; bench.mk defines BENCH_TRAIN_KERNELS).
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

extern const bench_suite bench_suite_kernels;
#ifdef BENCH_TRAIN_KERNELS
extern const bench_suite bench_suite_train_r4;
extern const bench_suite bench_suite_train_r2;
#endif

static const bench_suite *const suites[] = {
    &bench_suite_kernels,
#ifdef BENCH_TRAIN_KERNELS
    &bench_suite_train_r4,
    &bench_suite_train_r2,
#endif
};

#define N_SUITES ((int)(sizeof suites / sizeof suites[0]))

int main(int argc, char **argv) {
    if (bench_init() != 0) {
        return 1;
    }
    bench_print_method();
    int failed = 0;
    for (int i = 0; i < N_SUITES; i++) {
        int wanted = argc <= 1;
        for (int a = 1; a < argc; a++) {
            wanted |= strcmp(argv[a], suites[i]->name) == 0;
        }
        if (wanted) {
            failed |= bench_run_suite(suites[i]);
        }
    }
    fflush(stdout);
    return failed;
}

/*
 * What the C test programs (tests/..._check.c) share: a CHECK that prints "FAIL file:line: ..."
 * and returns 1 from the calling function (g_fail records it for main's exit status), reading a
 * whole file, and main's start (usage "PROGRAM MODEL.tmpm STEPS", the model loaded).
 */
#ifndef TINYMP_TESTS_CHECK_COMMON_H
#define TINYMP_TESTS_CHECK_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "tmp_model.h"

static int g_fail;

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) { \
            printf("FAIL %s:%d: ", __FILE__, __LINE__); \
            printf(__VA_ARGS__); \
            printf("\n"); \
            g_fail = 1; \
            return 1; \
        } \
    } while (0)

/* The bytes of a file (malloc'd, *size set), or NULL. */
static uint8_t *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(n > 0 ? (size_t)n : 1u);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

/* Load the model named by argv[1] into *m (its bytes, malloc'd, in *data; free them at the end)
 * and read STEPS from argv[2]. Returns -1 to go on, else the exit status for main. */
static int load_model_args(int argc, char **argv, tmp_model *m, uint8_t **data, uint32_t *steps) {
    /* unbuffered: a FAIL line must survive the leak checker's exit after an early return */
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.tmpm STEPS\n", argv[0]);
        return 2;
    }
    size_t size;
    tmp_error err;
    *data = read_file(argv[1], &size);
    if (*data == NULL || tmp_model_init(m, *data, size, &err) != TMP_OK) {
        printf("FAIL: cannot load %s\n", argv[1]);
        return 1;
    }
    *steps = (uint32_t)atoi(argv[2]);
    return -1;
}

#endif

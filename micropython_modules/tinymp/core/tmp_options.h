/*
 * tinymp core: the ranges and defaults of the options of plan(), Trainer() and fit().
 *
 * The engine takes these options as plain fields (tmp_train_options, tmp_trainer); which values a
 * user may pass is decided once, here, and each binding (the board's modtinymp.c, the PC's
 * _tinymp.c) expands these tables into its own checks. So the two bindings accept the same values,
 * use the same defaults and print the same bounds; the PC tool reads the same table through
 * `_tinymp._option_ranges()` to refuse a bad value before any board is involved.
 *
 * Only macros and an enum: nothing here takes code or data unless a binding expands it.
 */
#ifndef TMP_OPTIONS_H
#define TMP_OPTIONS_H

#include <math.h>

#include "tmp_train.h"

/* Integer options: X(name, lo, hi, dflt). Bounds are inclusive and exact as long long; `dflt` is
 * what None or an absent keyword means (0 for budget, r, macs: "the method's own"; -2 for n_bias:
 * "the method's own"). */
#define TMP_INT_OPTIONS(X)                   \
    X(budget, 1, 0xFFFFFFFFLL, 0)            \
    X(r, 1, TMP_MAX_R, 0)                    \
    X(n_bias, -1, 65535, -2)                 \
    X(macs, 1, (1LL << 62), 0)               \
    X(cache, 0, 0xFFFFFFFFLL, 0)             \
    X(seed, 0, 0xFFFFFFFFLL, 1)              \
    X(period, 0, 0xFFFFFFFFLL, 0)            \
    X(epochs, 1, 100000, 1)                  \
    X(probe, 0, 0xFFFFFFFFLL, 0)

/* Number options: X(name, lo, hi, lo_open, dflt, text). `lo_open`: lo itself is refused; `text`
 * is the interval as the PC binding prints it ("%s%g, %g]" of these bounds), for the board's
 * messages (tests/device/train_errors.py holds both to the same output). 0 as a default of ratio,
 * momentum and step_share means "the method's own", and so does -1 for lr (tmp_method_lr(), which
 * the bindings apply: the core's trainer takes a rate >= 0). */
#define TMP_FLOAT_OPTIONS(X)                          \
    X(ratio, 0.0, 1.0, 1, 0.0, "(0, 1]")              \
    X(momentum, 0.0, 0.999, 0, 0.0, "[0, 0.999]")     \
    X(step_share, 0.0, INFINITY, 1, 0.0, "(0, inf]")  \
    X(lr, 0.0, 1e6, 0, -1.0, "[0, 1e+06]")

/* The value a number option takes in the engine, which computes in float32: the bindings check the
 * ranges above on it, so that 1e-50 is refused as the 0 the engine would get (a ratio of 0 would
 * read as "the method's own"). Beyond float's range it is an infinity (a plain conversion of such
 * a double is undefined in C); NaN stays NaN and fails every range. */
/* FLT_MAX, the largest finite float32 (cast: a port may build with -fsingle-precision-constant) */
#define TMP_OPT_F32_MAX ((double)0x1.fffffep+127)
#define TMP_OPT_F32(x)                                                                                \
    ((double)(x) > TMP_OPT_F32_MAX ? (float)INFINITY : (double)(x) < -TMP_OPT_F32_MAX ? -(float)INFINITY \
                                                                                     : (float)(x))

#define TMP_OPT_ENUM_I_(name, lo, hi, dflt) TMP_IOPT_##name,
#define TMP_OPT_ENUM_F_(name, lo, hi, lo_open, dflt, text) TMP_FOPT_##name,
/** Row numbers of the two tables, for a binding's arrays built from them. */
enum { TMP_INT_OPTIONS(TMP_OPT_ENUM_I_) TMP_N_INT_OPTIONS };
enum { TMP_FLOAT_OPTIONS(TMP_OPT_ENUM_F_) TMP_N_FLOAT_OPTIONS };
#undef TMP_OPT_ENUM_I_
#undef TMP_OPT_ENUM_F_

#endif /* TMP_OPTIONS_H */

/*
 * tinymp core: internal helpers of the kernels' Cortex-M DSP paths (ARMv7E-M: Cortex-M4/M7/M33
 * with the DSP extension). Not part of the public API.
 *
 * TMP_DSP is 1 when the compiler targets a core with the DSP instructions (__ARM_FEATURE_DSP)
 * and TMP_NO_DSP is not defined; the kernels then use SIMD paths built on the wrappers below.
 * Otherwise (the host, Cortex-M0/M3, or -DTMP_NO_DSP) TMP_DSP is 0 and only the portable C
 * remains. Both paths compute exactly docs/KERNELS.md, bit for bit; firmware/bench's
 * kernel_check compares them on randomised cases.
 *
 * No <arm_acle.h> (the core includes only stdint.h, stddef.h, string.h and math.h): GCC's
 * __builtin_arm_* (which the ACLE header wraps) and two inline-asm forms of SXTB16/SXTAB16 with
 * a rotation, which the builtins do not express.
 *
 * Lane order: tmp_sxtb16(x) = (x.b0, x.b2) and tmp_sxtb16_ror8(x) = (x.b1, x.b3) as sign-extended
 * int16 pairs (low half first). A dot product with SMLAD pairs lanes of the same position, so
 * both operands are expanded the same way: sum_{k<4} a_k * w_k =
 * smlad(sxtb16(a), sxtb16(w)) + smlad(sxtb16_ror8(a), sxtb16_ror8(w)).
 */
#ifndef TMP_DSP_H
#define TMP_DSP_H

#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP && !defined(TMP_NO_DSP)
#define TMP_DSP 1
#else
#define TMP_DSP 0
#endif

/* TMP_DSP_FP is 1 when TMP_DSP also has a single-precision FPU (hard-float or softfp ABI): the
 * training kernels' inline asm that mixes integer and VFP instructions (FPv4-SP's instruction
 * set, so Cortex-M4F and M7 alike). */
#if TMP_DSP && defined(__ARM_FP) && (__ARM_FP & 4)
#define TMP_DSP_FP 1
#else
#define TMP_DSP_FP 0
#endif

/** keeps a large-framed helper out of its caller's frame (stack peak = max, not sum) */
#if defined(__GNUC__)
#define TMP_NOINLINE __attribute__((noinline))
#else
#define TMP_NOINLINE
#endif

#if TMP_DSP

/** 4 bytes from any address (the M4/M7 allow unaligned LDR; memcpy compiles to one LDR). */
static inline int32_t tmp_ld4(const void *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void tmp_st4(void *p, int32_t v) {
    memcpy(p, &v, 4);
}

/** acc + a.lo * b.lo + a.hi * b.hi (int16 lanes; the int32 sum wraps) */
static inline int32_t tmp_smlad(int32_t a, int32_t b, int32_t acc) {
    return __builtin_arm_smlad(a, b, acc);
}

/** acc + a.lo * b.lo (int16 x int16) */
static inline int32_t tmp_smlabb(int32_t a, int32_t b, int32_t acc) {
    return __builtin_arm_smlabb(a, b, acc);
}

/** acc + a.hi * b.hi (int16 x int16) */
static inline int32_t tmp_smlatt(int32_t a, int32_t b, int32_t acc) {
    return __builtin_arm_smlatt(a, b, acc);
}

/** (sext(x.b0), sext(x.b2)) */
static inline int32_t tmp_sxtb16(int32_t x) {
    return __builtin_arm_sxtb16(x);
}

/** (sext(x.b1), sext(x.b3)) */
static inline int32_t tmp_sxtb16_ror8(int32_t x) {
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/** (a.lo + sext(x.b0), a.hi + sext(x.b2)) */
static inline int32_t tmp_sxtab16(int32_t a, int32_t x) {
    return __builtin_arm_sxtab16(a, x);
}

/** (a.lo + sext(x.b1), a.hi + sext(x.b3)) */
static inline int32_t tmp_sxtab16_ror8(int32_t a, int32_t x) {
    int32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

/** saturating a + b */
static inline int32_t tmp_qadd(int32_t a, int32_t b) {
    return __builtin_arm_qadd(a, b);
}

/** saturate to int8 range */
static inline int32_t tmp_ssat8(int32_t x) {
    return __builtin_arm_ssat(x, 8);
}

/** *lo = p[0], *hi = p[1], p += 2 (LDRD with post-increment; p 4-byte aligned) */
static inline const int32_t *tmp_ld2w(const int32_t *p, int32_t *lo, int32_t *hi) {
    int32_t a, b;
    __asm__("ldrd %0, %1, [%2], #8" : "=r"(a), "=r"(b), "+r"(p) : "m"(*(const int32_t(*)[2])p));
    *lo = a;
    *hi = b;
    return p;
}

/** bytes (a, b, c, d) -> one word, a in the lowest byte (a..d in int8 range or any int) */
static inline uint32_t tmp_pack4(int32_t a, int32_t b, int32_t c, int32_t d) {
    uint32_t r = (uint32_t)a & 0xFFu;
    __asm__("bfi %0, %1, #8, #8" : "+r"(r) : "r"(b));
    __asm__("bfi %0, %1, #16, #8" : "+r"(r) : "r"(c));
    __asm__("bfi %0, %1, #24, #8" : "+r"(r) : "r"(d));
    return r;
}

/** per int8 lane: min(max(v, lo), hi) */
static inline uint32_t tmp_clamp8x4(uint32_t v, uint32_t lo, uint32_t hi) {
    uint32_t t, r;
    __asm__("ssub8 %0, %2, %3\n\tsel %1, %2, %3" : "=&r"(t), "=&r"(r) : "r"(v), "r"(lo) : "cc");
    __asm__("ssub8 %0, %2, %3\n\tsel %1, %3, %2" : "=&r"(t), "=&r"(v) : "r"(r), "r"(hi) : "cc");
    return v;
}

/** (v, v, v, v) as int8 lanes */
static inline uint32_t tmp_pack8x4(int32_t v) {
    return ((uint32_t)v & 0xFFu) * 0x01010101u;
}

/** per uint8 lane: a + b (modulo 256) */
static inline uint32_t tmp_uadd8(uint32_t a, uint32_t b) {
    return __builtin_arm_uadd8(a, b);
}

/** per int8 lane: 1 when lo <= v <= hi (signed), else 0 (lo4, hi4 from tmp_pack8x4) */
static inline uint32_t tmp_inside8x4(uint32_t v, uint32_t lo4, uint32_t hi4) {
    const uint32_t ones = 0x01010101u;
    uint32_t t, r;
    __asm__("ssub8 %0, %2, %3\n\tsel %1, %4, %5"
            : "=&r"(t), "=&r"(r) : "r"(v), "r"(lo4), "r"(ones), "r"(0u) : "cc");
    __asm__("ssub8 %0, %2, %3\n\tsel %1, %4, %5"
            : "=&r"(t), "=&r"(v) : "r"(hi4), "r"(v), "r"(r), "r"(0u) : "cc");
    return v;
}

/** (v, v) as an int16 pair; v in int16 range */
static inline int32_t tmp_pack16x2(int32_t v) {
    return (int32_t)(((uint32_t)v & 0xFFFFu) * 0x10001u);
}

/* tmp_rq_neg() as asm text for the kernels' asm blocks: accumulator X (a register name, or an
 * operand such as "%[a0]") <- requant(X) with M in r4, klo in r5, khi in r6, sh in r8;
 * clobbers r9 and r10. AND, ADDS, ADC, SMLAL, ASR (the proof is above tmp_rq_neg). */
#define TMP_ASM_RQ_NEG(X) \
    "and      r9, " X ", #0x80000000\n\t" \
    "adds     r9, r9, r5\n\t" \
    "adc      r10, r6, " X ", asr #31\n\t" \
    "smlal    r9, r10, " X ", r4\n\t" \
    "asr      " X ", r10, r8\n\t"

#endif /* TMP_DSP */

/*
 * Requantisation, the same function as tmp_requant() + tmp_clamp_out() (docs/KERNELS.md) in
 * fewer instructions, with the per-channel constants prepared once (tmp_rq_prep) and applied to
 * many accumulators (tmp_rq_out). Pure C99, used by the DSP paths.
 *
 *  - srdhm(a, M) = (a*M + 2^30) >> 31 (floor), exactly, for every a and M except
 *    a = M = -2^31 (impossible: M >= 0). For p = a*M >= 0 this is the definition. For p < 0 the
 *    definition is trunc((p + 1 - 2^30) / 2^31) = ceil((p + 1 - 2^30) / 2^31)
 *    = floor((p + 1 - 2^30 + 2^31 - 1) / 2^31) = floor((p + 2^30) / 2^31). One SMLAL.
 *  - rdpot(x, e) rounds up iff (x & mask) > (mask >> 1) + (x < 0), i.e. iff
 *    (x & mask) + (x >> 31) > (mask >> 1) (x >> 31 is 0 or -1), tested branch-free as the sign of
 *    (mask >> 1) - ((x & mask) + (x >> 31)), which cannot overflow. With e = 0 (mask = 0) the test
 *    is never true and x >> 0 = x, so shifts >= 0 need no special case.
 *  - a left shift (shift > 0: multipliers above 1, rare in conv layers) saturates as the
 *    definition does, in a separate, predictable branch.
 *  - sat32(t + zp_out) is QADD where the DSP extension exists.
 *
 * For shift = -e <= -1 both roundings fold into one 64-bit step (tmp_rq_neg, 5 instructions):
 * rdpot(t, e) = floor((t + 2^(e-1) - [t < 0]) / 2^e) (check the three cases of the remainder
 * against the threshold), and with t = floor((x*M + 2^30) / 2^31), nested floors give
 *     requant(x) = floor((x*M + 2^30 + 2^(30+e) - [t < 0] * 2^31) / 2^(31+e)).
 * [t < 0] may be replaced by [x < 0]: they differ only when x < 0 and t = 0, and then both give
 * 0 (0 <= 2^(e-1) - 1 < 2^e). So requant(x) = (x*M + K - [x < 0] * 2^31) >> 32 >> (e - 1) with
 * K = 2^30 + 2^(30+e): one AND, ADDS, ADC (K plus the sign term), SMLAL, ASR.
 *
 * For |x| < 2^30 (inputs of the residual add: |v| * 2^20 <= 255 * 2^20), srdhm(x, M) is
 * SMMULR(2x, M) = (2xM + 2^31) >> 32, and t + 2^(e-1) cannot overflow, so
 * requant(x) = (SMMULR(2x, M) + 2^(e-1) - [e > 0][x < 0]) >> e for every shift <= 0
 * (tmp_rq_small).
 */
typedef struct {
    int32_t mult; /* M >= 0 */
    int32_t rsh;  /* max(-shift, 0) */
    int32_t mask; /* 2^rsh - 1 */
    int32_t lsh;  /* the shift: > 0 means a left shift first */
    int32_t klo;  /* shift <= -1: K = 2^30 + 2^(30-shift), low and high words */
    int32_t khi;
    int32_t sh;   /* shift <= -1: -shift - 1 */
    int32_t half; /* shift <= 0: 2^(-shift-1), or 0 when shift = 0 */
    int32_t negb; /* shift <= 0: 1 if shift < 0, else 0 */
} tmp_rq;

static inline tmp_rq tmp_rq_prep(int32_t mult, int32_t shift) {
    tmp_rq r;
    r.mult = mult;
    r.lsh = shift; /* only its sign is tested; > 0 takes the out-of-line path */
    r.rsh = -shift & ~(-shift >> 31); /* max(-shift, 0), branch-free */
    r.mask = (int32_t)((UINT32_C(1) << r.rsh) - 1u);
    const int32_t e = r.rsh < 1 ? 1 : r.rsh; /* the K form is used only when shift <= -1 */
    const uint64_t k = (UINT64_C(1) << 30) + (UINT64_C(1) << (30 + e));
    r.klo = (int32_t)(uint32_t)k;
    r.khi = (int32_t)(uint32_t)(k >> 32);
    r.sh = e - 1;
    r.half = (int32_t)((UINT32_C(1) << r.rsh) >> 1);
    r.negb = r.rsh > 0;
    return r;
}

/** the constants of tmp_rq_neg only (cheap: for per-output use), shift <= -1 */
static inline void tmp_rq_prep_neg(int32_t shift, int32_t *klo, int32_t *khi, int32_t *sh) {
    const int32_t e = -shift;
    const uint32_t pe = UINT32_C(1) << e;     /* 2^e, e in [1, 31] */
    *klo = (int32_t)(0x40000000u | (pe << 30)); /* 2^30, plus 2^31 when e = 1 */
    *khi = (int32_t)(pe >> 2);                  /* 2^(e-2), or 0 when e = 1 */
    *sh = e - 1;
}

/** requant(x, M, shift) for shift <= -1 (any x): the single 64-bit step above */
static inline int32_t tmp_rq_neg(int32_t x, int32_t mult, int32_t klo, int32_t khi, int32_t sh) {
    const uint64_t c = (((uint64_t)(uint32_t)khi << 32) | (uint32_t)klo) +
        (((uint64_t)(uint32_t)(x >> 31) << 32) | ((uint32_t)x & 0x80000000u));
    const int64_t a = (int64_t)c + (int64_t)x * mult;
    return (int32_t)(a >> 32) >> sh;
}

/* srdhm + rdpot, no left shift */
static inline int32_t tmp_rq_core(int32_t x, int32_t mult, int32_t rsh, int32_t mask) {
    const int32_t t = (int32_t)(((int64_t)x * mult + (INT64_C(1) << 30)) >> 31);
    const int32_t rem = (t & mask) + (t >> 31);
    return (t >> rsh) - (((mask >> 1) - rem) >> 31);
}

/** sat32(x * 2^s), 0 <= s <= 30 */
static inline int32_t tmp_sat_shl(int32_t x, int32_t s) {
    const int64_t v = (int64_t)x * (INT64_C(1) << s);
    return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v;
}

#if defined(__GNUC__)
__attribute__((noinline, unused)) static int32_t tmp_rq_lsh(int32_t x, int32_t mult, int32_t lsh) {
#else
static inline int32_t tmp_rq_lsh(int32_t x, int32_t mult, int32_t lsh) {
#endif
    return tmp_rq_core(tmp_sat_shl(x, lsh), mult, 0, 0);
}

/** requant(x, M, s) of docs/KERNELS.md from prepared constants (scalars: GCC keeps them in
 *  registers more reliably than a struct) */
static inline int32_t tmp_rq_apply_v(int32_t x, int32_t mult, int32_t rsh, int32_t mask,
    int32_t lsh) {
#if defined(__GNUC__)
    if (__builtin_expect(lsh > 0, 0)) {
#else
    if (lsh > 0) {
#endif
        return tmp_rq_lsh(x, mult, lsh); /* multipliers above 1: rare, out of line */
    }
    return tmp_rq_core(x, mult, rsh, mask);
}

/** requant(x, M, s) of docs/KERNELS.md */
static inline int32_t tmp_rq_apply(int32_t x, tmp_rq r) {
    return tmp_rq_apply_v(x, r.mult, r.rsh, r.mask, r.lsh);
}

#if TMP_DSP
/** requant(x, M, shift) for shift <= 0 and |x| < 2^30: x2 = 2x, see above */
static inline int32_t tmp_rq_small(int32_t x2, int32_t mult, int32_t half, int32_t negb,
    int32_t rsh) {
    int32_t t;
    __asm__("smmulr %0, %1, %2" : "=r"(t) : "r"(x2), "r"(mult));
    return (t + half - (negb & (int32_t)((uint32_t)x2 >> 31))) >> rsh;
}

/** ssat8(sat32(requant(x) + out_off)): the output before the activation clamp */
static inline int32_t tmp_rq_s8(int32_t x, tmp_rq r, int32_t out_off) {
    return tmp_ssat8(tmp_qadd(tmp_rq_apply(x, r), out_off));
}
#endif

/** clamp(sat32(requant(x) + out_off), act_min, act_max) as int8 */
static inline int8_t tmp_rq_out(int32_t x, tmp_rq r, int32_t out_off, int32_t act_min,
    int32_t act_max) {
#if TMP_DSP
    int32_t v = tmp_qadd(tmp_rq_apply(x, r), out_off);
#else
    const int64_t s = (int64_t)tmp_rq_apply(x, r) + out_off;
    int32_t v = s > INT32_MAX ? INT32_MAX : s < INT32_MIN ? INT32_MIN : (int32_t)s;
#endif
    v = v < act_min ? act_min : v;
    v = v > act_max ? act_max : v;
    return (int8_t)v;
}

#endif /* TMP_DSP_H */

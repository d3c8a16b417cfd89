/*
 * tinymp core: the training planner and the trainer (docs/TRAINING.md).
 *
 * tmp_train_plan() turns a method and its options into a per-layer table (what is trained, which
 * input channels, the Gradient Condensing patch size r) and places every buffer of one training
 * step -- forward activations, tensors saved for the backward pass, clamp masks, gradient maps,
 * one layer's weight-gradient slice, trainable parameters, optimizer state, scratch -- in one
 * arena over the step's timeline (forward steps 0..L-1, backward steps L..2L-1 in reverse layer
 * order). Given a budget it shrinks the method until the arena fits.
 *
 * A tmp_trainer runs steps over a caller's arena of plan->arena_bytes: forward with saving,
 * softmax cross-entropy, backward with the core/train kernels, SGD applied in place as soon as a
 * layer's gradient exists. It never allocates and keeps all state in the tmp_trainer struct and
 * the arena.
 */
#ifndef TMP_TRAIN_H
#define TMP_TRAIN_H

#include "tmp_model.h"
#include "tmp_place.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Largest Gradient Condensing patch size (uint8 count masks hold r*r <= 255). */
#define TMP_MAX_R 15

typedef enum {
    TMP_METHOD_NONE = 0,
    TMP_METHOD_LAST = 1,
    TMP_METHOD_BIAS = 2,
    TMP_METHOD_SPARSE = 3,
    TMP_METHOD_TINYTRAIN = 4,
    TMP_METHOD_FULL = 5,
    TMP_METHOD_TINYMP = 6,
    TMP_METHOD_FISHER = 7, /**< internal: the TinyTrain selection pass (no updates) */
    TMP_METHOD_COUNT = 8,
} tmp_method;

typedef enum {
    TMP_STORAGE_INT8 = 0, /**< int8 weights in RAM, QAS updates with stochastic rounding */
    TMP_STORAGE_FP32 = 1, /**< fp32 master copies, re-quantised after each update */
} tmp_storage;

/** Breakdown categories (the keys of plan.breakdown). */
typedef enum {
    TMP_CAT_ACTIVATIONS = 0,
    TMP_CAT_SAVED,
    TMP_CAT_MASKS,
    TMP_CAT_GRADIENTS,
    TMP_CAT_PARAMS,
    TMP_CAT_OPTIMIZER,
    TMP_CAT_SCRATCH,
    TMP_CAT_CACHE, /**< frozen-prefix feature cache kept in the arena (options.cache_samples) */
    TMP_CAT_COUNT,
} tmp_category;

/** Per-layer buffers of the training timeline (internal indices, documented for the bindings'
 *  tests and describe()). */
typedef enum {
    TMP_LB_FSCRATCH = 0, /**< forward kernel scratch */
    TMP_LB_SAVED,        /**< xs (r >= 2) or saved input channels (r = 1) or fc input */
    TMP_LB_MASK,         /**< clamp mask of the output */
    TMP_LB_ASUM,         /**< selection pass: r x r patch sums of the output (int32) */
    TMP_LB_DW,           /**< one output channel's weight-gradient slice (fp32) */
    TMP_LB_DB,           /**< bias gradient (fp32, Cout) */
    TMP_LB_BSCRATCH,     /**< backward scratch: dx kernel scratch and update gathers */
    TMP_LB_W,            /**< int8 weights in RAM */
    TMP_LB_B,            /**< int32 biases in RAM */
    TMP_LB_WM,           /**< fp32 master weights */
    TMP_LB_BM,           /**< fp32 master biases */
    TMP_LB_VW,           /**< momentum of the weights */
    TMP_LB_VB,           /**< momentum of the biases */
    TMP_LB_SEL,          /**< selected channels (uint16) and APU state */
    TMP_LB_FISH,         /**< selection pass: Fisher potential of the output channels */
    TMP_LB_COUNT,
} tmp_layer_buffer;

/** Per-layer flags of a plan. */
#define TMP_TL_REGION 0x01u   /**< in the backward region (layer >= first) */
#define TMP_TL_W 0x02u        /**< weights trained */
#define TMP_TL_B 0x04u        /**< bias trained */
#define TMP_TL_DX 0x08u       /**< the gradient of its input is propagated */
#define TMP_TL_APU 0x10u      /**< channels re-selected every period (APU) */
#define TMP_TL_CANDIDATE 0x20u /**< a candidate the selection may add (tinytrain / tinymp) */

/** Options of tmp_train_plan(); start from tmp_train_options_default(). */
typedef struct {
    int32_t method;      /**< tmp_method */
    int32_t storage;     /**< tmp_storage */
    int32_t r;           /**< GC patch size; 0 = the method's default (tinymp 4, else 1) */
    float ratio;         /**< channel ratio in (0, 1]; 0 = the method's default (tinymp and
                              tinytrain 1/4, else 1) */
    int32_t n_bias;      /**< biases of the last n_bias conv-like layers; -1 = all; -2 = the
                              method's default (bias: all, tinymp: 2, others 0) */
    float momentum;      /**< SGD momentum, >= 0 and < 1; 0 = none (no buffers) */
    uint32_t budget;     /**< arena budget in bytes; 0 = none */
    uint64_t mac_budget; /**< backward MAC budget (tinytrain, tinymp); 0 = none */
    float step_share;    /**< tinymp: a candidate that moves the backward region earlier is added
                              only while a step from the feature cache (forward over the region
                              plus backward) costs at most this share of an inference's MACs;
                              0 = the method's default (tinymp 1/4, others no limit); >= 8 = no
                              limit */
    int32_t n_layers;    /**< sparse: number of entries in layers/ratios */
    const uint16_t *layers; /**< sparse: layer indices (weighted layers) */
    const float *ratios;    /**< sparse: their channel ratios, NULL = all 1 */
    const struct tmp_trainer_s *fisher; /**< a trainer that ran the selection pass, or NULL */
    uint32_t cache_samples; /**< frozen-prefix features of up to this many samples to keep in the
                                 arena, as far as the budget leaves room (0: none) */
} tmp_train_options;

/** Where planning failed, for a clear message. */
typedef struct {
    const char *msg;       /**< string literal, or NULL */
    int32_t layer;         /**< offending layer or -1 */
    uint32_t min_budget;   /**< budget error: the smallest arena any setting reached */
    int32_t largest_cat;   /**< budget error: largest breakdown part of that smallest plan */
    uint32_t largest_bytes;
} tmp_train_error;

/** A training plan; its arrays live in the caller's workspace (tmp_train_workspace_size()), or,
 *  after tmp_train_plan_compact(), in the caller's smaller block. */
typedef struct {
    uint32_t arena_bytes;     /**< the placed arena: exactly what one step needs */
    uint32_t peak_live_bytes; /**< largest sum of live bytes over the steps (lower bound) */
    int32_t peak_step;        /**< the step where it occurs */
    uint32_t breakdown[TMP_CAT_COUNT]; /**< live bytes per category at peak_step */
    uint32_t category_peak[TMP_CAT_COUNT]; /**< each category's own peak over the steps */
    uint64_t forward_macs, backward_macs;
    uint64_t step_macs;       /**< MACs of a step whose frozen prefix comes from the feature
                                   cache: forward over the region plus backward */
    float step_share;         /**< the region limit used (0: none) */
    uint32_t model_crc;       /**< identifies the model the plan was made for */
    int32_t method, storage, r, n_bias;
    float ratio, momentum;
    uint32_t budget;
    int32_t first;            /**< first layer of the backward region (num_layers: none) */
    int32_t num_layers, num_tensors;
    uint32_t num_channels;    /**< entries used in channels[] */
    uint8_t *flags;           /**< [L] TMP_TL_* */
    uint8_t *in_place;        /**< [L] forward in-place choice (as tmp_plan) */
    uint16_t *k;              /**< [L] selected input channels (weights trained) */
    uint32_t *chan_off;       /**< [L] start of the layer's initial channels in channels[] */
    uint16_t *channels;       /**< initial selections, ascending per layer */
    uint32_t *fwd_macs;       /**< [L] */
    uint32_t *bwd_macs;       /**< [L] */
    float *potential;         /**< [L] Fisher potential P_i of the output (selection; else 0) */
    float *score;             /**< [L] TinyTrain score s_i (0 when not a candidate) */
    tmp_buf *bufs;            /**< [TMP_LB_COUNT * L + 2 * T]: layer i buffer b at
                                   bufs[b * L + i]; activation t at [LB*L + t]; grad t at
                                   [LB*L + T + t] */
    uint8_t *cat;             /**< [same] category of each buffer */
    uint32_t *act_offset;     /**< [T] arena offset of each activation (aliases resolved) */
    int32_t *grad_birth;      /**< [T] layer whose backward step first writes grad t (-1: none) */
    /* The frozen-prefix feature cache (docs/TRAINING.md, "feature cache"): layers before `first`
     * never change, so the tensors they produce that layers >= first read (the "boundary") can be
     * kept per sample and the prefix skipped in later epochs. */
    uint32_t cache_bytes;     /**< bytes of one sample's boundary tensors (0: nothing to cache) */
    uint32_t cache_samples;   /**< samples the arena's cache region holds (at cache_offset) */
    uint32_t cache_offset;    /**< arena offset of that region (arena_bytes includes it) */
    uint8_t *cache_t;         /**< [T] 1 when tensor t is a boundary tensor */
    /* As planned, bufs is dense (every entry, most of them empty) and the arrays fill the
     * workspace, planning temporaries included. tmp_train_plan_compact() moves what training and
     * reporting read into a small block: bufs then holds only the entries that exist, in index
     * order, and buf_bits/buf_rank find them. Read entries with tmp_train_plan_buf(). */
    uint32_t *buf_bits;       /**< NULL: bufs is dense; else bit j % 32 of word j / 32 is set when
                                   entry j exists */
    uint32_t *buf_rank;       /**< entries that exist before each word of buf_bits */
    uint32_t table_bytes;     /**< bytes the arrays above occupy: the workspace as planned, the
                                   compact block after tmp_train_plan_compact() */
} tmp_train_plan;

/** Default options for `method` (every other field zero / default). */
tmp_train_options tmp_train_options_default(int32_t method);

/** Bytes of workspace tmp_train_plan() needs for this model (the plan's arrays live there). */
size_t tmp_train_workspace_size(const tmp_model *m);

/**
 * Make a training plan. Returns TMP_OK; TMP_ERR_ARG for invalid options (err->msg says which);
 * TMP_ERR_SIZE when the method cannot fit o->budget (err->min_budget, err->largest_cat; the plan
 * then describes that smallest setting, so its memory can still be reported).
 */
tmp_status tmp_train_plan_make(const tmp_model *m, const tmp_train_options *o, void *ws,
    size_t ws_size, tmp_train_plan *plan, tmp_train_error *err);

/**
 * Entry `idx` of the plan's buffer table: layer i's buffer b at b * num_layers + i, activation t
 * at TMP_LB_COUNT * num_layers + t, gradient t at TMP_LB_COUNT * num_layers + num_tensors + t.
 * A buffer the plan does not have reads as size 0, offset 0, first and last -1. Dense and compact
 * plans read the same.
 */
const tmp_buf *tmp_train_plan_buf(const tmp_train_plan *p, int32_t idx);

/** Bytes tmp_train_plan_compact() needs for this plan (at most tmp_train_workspace_size()). */
size_t tmp_train_plan_compact_size(const tmp_train_plan *p);

/**
 * Copy the tables that training, describe() and the bindings read into `dst` (4-byte aligned,
 * tmp_train_plan_compact_size() bytes, not overlapping the plan's current block) and point the
 * plan at them: the planning temporaries, the empty buffer entries, the unused channel entries
 * and the buffer categories (p->cat becomes NULL; the breakdown is already summed) are left
 * behind, so the caller can free the planning workspace. Returns TMP_ERR_ARG / TMP_ERR_SIZE
 * for bad arguments (the plan is unchanged then).
 */
tmp_status tmp_train_plan_compact(tmp_train_plan *p, void *dst, size_t size);

/** Options of the TinyTrain selection pass that goes with `o` (method fisher; r = o->r, or 4
 *  when o->r is 0; o's budget). */
tmp_train_options tmp_train_selection_options(const tmp_train_options *o);

/**
 * The smallest budget a plan with options `o` can reach, counting the selection pass when
 * `with_selection` (tinytrain, or tinymp given support samples): the larger of the pass's
 * smallest arena and the smallest training table (for tinytrain, whose candidates come from the
 * pass: its base, the classifier and the biases). Fills err->min_budget, err->largest_cat and
 * err->largest_bytes (of the larger part) and returns TMP_OK; `ws` as for tmp_train_plan_make()
 * (overwritten).
 */
tmp_status tmp_train_min_budget(const tmp_model *m, const tmp_train_options *o, int with_selection, void *ws,
    size_t ws_size, tmp_train_error *err);

/** Name of a method / storage / category ("tinymp", "int8", "activations", ...). */
const char *tmp_method_name(int32_t method);
const char *tmp_category_name(int32_t cat);
/** The learning rate a trainer of this method takes when none is given (Trainer(lr=None)). */
float tmp_method_lr(int32_t method);
/** Method from its name; -1 when unknown. */
int32_t tmp_method_from_name(const char *name);

/**
 * Write a per-layer table of the plan (NUL-terminated text) into buf. Returns the length the
 * whole table needs (excluding the NUL); when that is >= size, the text is truncated.
 */
size_t tmp_train_plan_describe(const tmp_model *m, const tmp_train_plan *p, char *buf, size_t size);

/* ---------------------------------------------------------------------------------------- */
/* Trainer                                                                                   */
/* ---------------------------------------------------------------------------------------- */

#define TMP_PHASE_FORWARD 0
#define TMP_PHASE_BACKWARD 1
#define TMP_PHASE_UPDATE 2
#define TMP_PHASE_COUNT 3

/** Optional hook that sees every weight-gradient slice before it is applied (tests). */
typedef void (*tmp_grad_hook)(void *ctx, int32_t layer, int32_t o, const float *dw, int32_t n,
    const float *db, int32_t nb);

/** A monotonic clock for the per-phase counters (any unit; NULL = no timing). */
typedef uint32_t (*tmp_clock_fn)(void *ctx);

typedef struct tmp_trainer_s {
    const tmp_model *m;
    const tmp_train_plan *p;
    uint8_t *arena;
    float lr;
    float beta, tau;        /**< APU smoothing and age weight */
    uint32_t rng;           /**< xorshift32 state of the stochastic rounding */
    uint32_t seed;
    uint32_t period;        /**< steps per APU period (0: only tmp_trainer_end_period) */
    uint32_t period_steps;  /**< steps since the period started */
    uint32_t periods;       /**< periods ended */
    uint32_t steps;
    uint32_t stalled_steps; /**< steps whose loss gradient the logits' clamp mask stopped whole */
    uint32_t fisher_samples; /**< selection pass: samples accumulated */
    int32_t last_pred;      /**< argmax of the last step's logits (before its update); -1 before a step,
                             after a reset and after parameters are loaded */
    uint32_t tables_crc;    /**< CRC of the model's tensor and layer tables at init */
    uint64_t macs[TMP_PHASE_COUNT];
    uint64_t ticks[TMP_PHASE_COUNT];
    tmp_clock_fn clock;
    void *clock_ctx;
    tmp_grad_hook hook;
    void *hook_ctx;
    uint32_t busy;          /**< TMP_BUSY_*: what the engine is in while a caller's callback runs */
} tmp_trainer;

/* What a trainer is in while it calls a caller's code (fit's sample, cache and progress
 * callbacks, the hooks), and what that code may call on the same trainer then
 * (tmp_trainer_usable): */
#define TMP_BUSY_FIT 1u  /**< tmp_trainer_fit, between its steps: calls that only read it */
#define TMP_BUSY_STEP 2u /**< inside a step or an APU probe: none */

/**
 * TMP_ERR_BUSY when a call on t must be refused because it comes from a callback of t's own fit,
 * step or probe: any call that changes the trainer (`changes` non-zero: a step, fit, period end,
 * reset, load), and inside a step or probe any call that uses the arena (forward, save); else
 * TMP_OK. The core's entry points check it; a binding can ask before it does work of its own.
 * The rule covers the engine's callbacks only: a binding that runs Python between the pieces of
 * a streaming save or load (tmp_trainer_params_write / _feed) marks nothing busy there.
 */
static inline tmp_status tmp_trainer_usable(const tmp_trainer *t, int changes) {
    return t != NULL && t->busy > (changes ? 0u : TMP_BUSY_FIT) ? TMP_ERR_BUSY : TMP_OK;
}

/**
 * For a binding whose callback left the engine by a long jump (MicroPython's nlr) instead of
 * returning: the trainer is no longer busy. Call it before re-raising; an APU probe cut short
 * this way keeps its channel marks until a reset or a load.
 */
static inline void tmp_trainer_unwind(tmp_trainer *t) {
    if (t != NULL) {
        t->busy = 0u;
    }
}

/** The byte written over the whole arena at init; high water = highest byte that differs. */
#define TMP_ARENA_PAINT 0xA5u

/**
 * Set up a trainer: paints the arena, copies the trainable parameters from the model, the
 * initial channel selections, zeroes optimizer and APU state. `arena` must be 4-byte aligned and
 * hold at least p->arena_bytes. TMP_ERR_ARG when the plan was made for another model or an
 * argument is invalid, TMP_ERR_SIZE when the arena is too small. Never on a trainer whose fit,
 * step or probe is running (it cannot be refused: t may be uninitialised memory).
 */
tmp_status tmp_trainer_init(tmp_trainer *t, const tmp_model *m, const tmp_train_plan *p,
    void *arena, size_t arena_size, float lr, uint32_t seed);

/** Back to the pretrained parameters and the plan's initial selection (counters are kept). */
tmp_status tmp_trainer_reset(tmp_trainer *t);

/**
 * One step on an int8 input (H*W*C of tensor 0) with `label` in [0, num_classes): forward,
 * loss, backward, updates (the selection pass: forward, backward, Fisher accumulation only).
 * TMP_ERR_ARG for a bad label; TMP_ERR_FORMAT/SIZE when the model bytes changed after loading.
 */
tmp_status tmp_trainer_step(tmp_trainer *t, const int8_t *x, int32_t label, float *loss);

/** Inference with the trained parameters; *out = the int8 output inside the arena. */
tmp_status tmp_trainer_forward(tmp_trainer *t, const int8_t *x, const int8_t **out);

/** Close an APU period: smooth importances, re-select channels (layers with TMP_TL_APU). */
tmp_status tmp_trainer_end_period(tmp_trainer *t);

/* The three readers below check nothing (no TMP_ERR_BUSY): their figures are the trainer's own
 * when tmp_trainer_usable(t, 0) holds (inside an APU probe the selection is a probe group). */

/** Current selection of layer `layer`: k entries at *channels (inside the arena; NULL when all
 *  k == Cin channels are selected for good), or k = 0 when the layer's weights are not trained. */
int32_t tmp_trainer_channels(const tmp_trainer *t, int32_t layer, const uint16_t **channels);

/** Highest arena offset written so far + 1 (bytes that differ from TMP_ARENA_PAINT). */
uint32_t tmp_trainer_high_water(const tmp_trainer *t);

/** Fisher sums of the output channels of `layer` after a selection pass (NULL if the layer was
 *  not in the pass): Delta[o] = scale * sums[o], scale = 1/(2N); n = its output channels. */
const float *tmp_trainer_fisher(const tmp_trainer *t, int32_t layer, int32_t *n, float *scale);

/* ---------------------------------------------------------------------------------------- */
/* Whole personalisation runs and the frozen-prefix feature cache                             */
/* ---------------------------------------------------------------------------------------- */

/**
 * A training step that also writes the sample's boundary tensors (plan->cache_bytes, in the
 * order of the tensor index) to `cache` -- identical to tmp_trainer_step otherwise.
 */
tmp_status tmp_trainer_step_fill(tmp_trainer *t, const int8_t *x, int32_t label, int8_t *cache, float *loss);

/**
 * A training step from a sample's cached boundary tensors (written by tmp_trainer_step_fill with
 * the same plan): the frozen prefix is skipped; the result is identical to tmp_trainer_step on
 * the sample. TMP_ERR_ARG when the plan has nothing to cache.
 */
tmp_status tmp_trainer_step_cached(tmp_trainer *t, const int8_t *cache, int32_t label, float *loss);

/** Where tmp_trainer_fit gets samples and keeps the features the arena has no room for. The
 *  callbacks may call the trainer only as tmp_trainer_usable allows (sample and progress: calls
 *  that read it, except during a probe; the cache callbacks run inside a step: none). */
typedef struct {
    /** Sample i: its int8 input (valid until the next call) and *label; NULL stops the fit with
     *  TMP_ERR_ARG. */
    const int8_t *(*sample)(void *ctx, uint32_t i, int32_t *label);
    /** Optional caller-side cache (a buffer, a file): store / load `n` bytes at byte `offset` of
     *  sample i's cache entry (plan->cache_bytes per sample). 0 on success; a failing store turns
     *  caching off for that sample, a failing load stops the fit with TMP_ERR_ARG. */
    int (*cache_store)(void *ctx, uint32_t i, uint32_t offset, const int8_t *src, uint32_t n);
    int (*cache_load)(void *ctx, uint32_t i, uint32_t offset, int8_t *dst, uint32_t n);
    /** Optional, after every step: epoch, steps done in the epoch, loss, whether the forward
     *  pass predicted the label. Non-zero stops the fit (it returns TMP_OK). */
    int (*progress)(void *ctx, uint32_t epoch, uint32_t done, float loss, int correct);
    void *ctx;
    /** The caller's cache holds samples plan->cache_samples <= i < cache_end (n when it has room
     *  for every sample the arena does not; less for a binding's buffer with room for fewer); the
     *  rest run the prefix again. 0: it holds none, whatever the callbacks. */
    uint32_t cache_end;
    /** APU's probe variant (docs/TRAINING.md section 6): at every period end the channels the
     *  period did not update are measured on this many of the samples (at most n, spread over
     *  them) before the next selection; 0 (the default): their scores are carried. */
    uint32_t probe;
} tmp_fit_io;

/**
 * Close an APU period with a probe (ALGORITHMS section 2's probe variant): the period's channels
 * are smoothed as by tmp_trainer_end_period; every other channel of an APU layer is measured,
 * without updating anything, on `count` of the samples 0..n-1 that io->sample gives (sample
 * j * n / count; its importance sum is scaled by the period's steps / count); then the channels
 * are re-selected. Each sample takes ceil((Cin - k) / k) forward and backward passes (the largest
 * over the APU layers), with the plan's own buffers: no extra memory. TMP_ERR_ARG with nothing
 * changed for count > n; a probe sample that is NULL or has a bad label (each is fetched twice:
 * checked before anything is marked, then used) ends the period as tmp_trainer_end_period does,
 * measuring nothing, and returns TMP_ERR_ARG; TMP_ERR_FORMAT when the model's tables changed.
 * io's cache callbacks are not used; count 0 is tmp_trainer_end_period.
 */
tmp_status tmp_trainer_end_period_probe(tmp_trainer *t, const tmp_fit_io *io, uint32_t n, uint32_t count);

/** Heap bytes a binding's fit() buffer (cache=True) leaves free for the run itself: the per-epoch
 *  figures, a progress callback's objects (a buffer that took the whole heap would make them fail
 *  mid-run). */
#define TMP_FIT_HEAP_RESERVE 2048u

/**
 * How many samples of `cache_bytes` each (at most `want`) a binding's fit() buffer for the
 * samples beyond the arena's cache should hold: all of them when has(want * cache_bytes +
 * reserve) says the heap can give that now, else the largest count for which it can (halving the
 * interval; each failed try is one has()). The bindings share this rule (a header function: no
 * core code unless a binding calls it); has() tries the caller's heap.
 */
static inline uint32_t tmp_fit_cache_count(uint32_t want, uint32_t cache_bytes, uint32_t reserve,
    int (*has)(uint64_t bytes)) {
    uint32_t lo = 0, hi = want; /* lo samples fit, more than hi do not */
    if (want == 0u || has((uint64_t)want * cache_bytes + reserve)) {
        return want;
    }
    hi = want - 1u;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo + 1u) / 2u;
        if (has((uint64_t)mid * cache_bytes + reserve)) {
            lo = mid;
        } else {
            hi = mid - 1u;
        }
    }
    return lo;
}

#define TMP_FIT_NO_CACHE 0x1u   /**< never use the cache (the reference path) */
#define TMP_FIT_NO_SHUFFLE 0x2u /**< visit samples in order every epoch */

typedef struct {
    uint32_t epochs;          /**< epochs completed */
    uint32_t steps;           /**< steps run */
    uint32_t cached_steps;    /**< steps that started from cached features (prefix skipped) */
    uint32_t in_arena;        /**< samples whose features the arena's cache region held */
    uint32_t outside;         /**< samples whose features the caller's cache held */
    uint32_t stopped;         /**< 1 when progress() stopped the run */
    uint32_t stalled;         /**< steps of the run that passed no gradient (tmp_trainer.stalled_steps) */
} tmp_fit_stats;

/**
 * A personalisation run: `epochs` passes over samples 0..n-1 (shuffled per epoch by the trainer's
 * seed and its step count at the epoch's start unless TMP_FIT_NO_SHUFFLE, so two fits of a few
 * epochs, or a fit after a load of a saved run by a trainer of the same seed, go on as one longer
 * fit), one training step each; ends a period (tmp_trainer_end_period: the APU re-selection)
 * after every epoch when the trainer has no step period, for every method, so `periods` counts
 * as in a step loop that ends one per epoch. With io->probe, every period end (step periods
 * too) is tmp_trainer_end_period_probe on io->probe of the n samples. In the first epoch each sample's boundary tensors go
 * into the arena's cache region (plan->cache_samples) or the caller's cache; later epochs start
 * from them and skip the frozen prefix. The cache is used only when it pays (epochs > 1, a
 * non-empty prefix); the parameters, losses and predictions are identical with and without it.
 */
tmp_status tmp_trainer_fit(tmp_trainer *t, uint32_t n, uint32_t epochs, uint32_t flags, const tmp_fit_io *io,
    tmp_fit_stats *stats);

/* Personalised parameters as a self-checking blob (docs/TRAINING.md, "saved parameters"): the
 * trained arrays and, from format version 2 on, the training state (momentum, the APU selections
 * and importances, the counters and the rounding generator), so a loaded trainer of the same plan
 * goes on exactly as the saved one would have. Version 1 blobs (parameters only) still load. */

/**
 * Whether the parameters and training state in the arena are ones this trainer could have made:
 * their blob passes every check tmp_trainer_params_load makes and keeps its training state.
 * TMP_ERR_ARG when not (a channel selection out of range, a NaN importance: the arena was
 * written to by someone else); TMP_ERR_FORMAT when the model's tables changed. Saving checks
 * this first, so a save never writes a blob that a load would refuse.
 */
tmp_status tmp_trainer_check_state(const tmp_trainer *t);

/** Bytes of the blob of this trainer's parameters. */
uint32_t tmp_trainer_params_size(const tmp_trainer *t);
/** Serialise the parameters into buf (size >= tmp_trainer_params_size()); first
 *  tmp_trainer_check_state(), whose error it returns. */
tmp_status tmp_trainer_params_save(const tmp_trainer *t, uint8_t *buf, uint32_t size);
/**
 * Check a blob completely, then load it. On any error nothing changes; *msg says why.
 * The parameters always load. The training state loads when the blob's momentum and selection
 * records are ones this plan could have written (*state_loaded = 1, may be NULL); a version-1
 * blob, or one saved with another ratio or with momentum switched on or off (those records
 * absent, extra, of another size, or a channel list or exclusion count this plan's ratio cannot
 * hold), loads its parameters and the trainer starts a new run's state on them: zero momentum,
 * the plan's selection, a new period; its step counters and rounding generator go on
 * (*state_loaded = 0).
 */
tmp_status tmp_trainer_params_load(tmp_trainer *t, const uint8_t *buf, uint32_t size,
    const char **msg, int *state_loaded);

/*
 * The same blob in pieces, for a binding that writes or reads a file through a small buffer
 * instead of holding the whole blob (on the board it is as large as the trained parameters).
 */

/** Where a piecewise write is: zero it, then call tmp_trainer_params_write until *n is 0 (with
 *  cap > 0). t->arena may change between the calls (a moved arena), its contents may not. */
typedef struct {
    uint32_t off; /**< bytes of the blob produced so far */
    uint32_t crc; /**< CRC-32 of those bytes (up to the trailer) */
} tmp_params_writer;

/**
 * The next bytes of the blob (at most cap) into dst; *n = how many (0 with cap > 0: the blob is
 * complete).
 * The concatenated pieces equal what tmp_trainer_params_save writes, provided the parameters do
 * not change between the calls.
 */
tmp_status tmp_trainer_params_write(const tmp_trainer *t, tmp_params_writer *w, uint8_t *dst,
    uint32_t cap, uint32_t *n);

/** A piecewise read's state (tmp_trainer_params_begin sets every field). */
typedef struct {
    uint8_t head[32];     /**< the blob's header */
    uint8_t rec[8];       /**< the current record's header */
    uint8_t word[4];      /**< a checked value split between two pieces */
    uint8_t tail[4];      /**< the CRC trailer */
    uint64_t total;       /**< bytes fed */
    uint64_t end;         /**< header + payload (known once the header is whole) */
    uint32_t crc;         /**< CRC-32 of the bytes before `end` fed so far */
    uint32_t roff;        /**< bytes of the current record fed, its header included */
    uint32_t rbytes;      /**< the current record's data bytes (its header's) */
    uint32_t fkey;        /**< the last record's (layer, kind) order key (records ascend) */
    uint32_t nrec;        /**< records complete */
    int32_t pos;          /**< the record expected next (internal cursor; < 0: none left) */
    int32_t layer;        /**< the expected record: layer, kind, bytes, its arena offset */
    uint32_t kind;
    uint32_t bytes;
    uint32_t offset;      /**< (an offset, not a pointer: the arena may move between pieces) */
    int32_t limit;        /**< |value| bound of an int32 bias record */
    uint32_t version;     /**< the blob's format version (once the header is whole) */
    uint32_t k, cin;      /**< a selection record's geometry: selected and input channels */
    uint32_t excl_max;    /**< and its largest exclusion count */
    int32_t prev;         /**< the last selected channel read (-1: none yet) */
    uint8_t state[20];    /**< the state record, applied at the end of a copying pass */
    int copy;             /**< 1: records are written into the arena as they arrive */
    int skip;             /**< the current record is another plan's training state: not read */
    int fresh;            /**< some state record was skipped or missing: the state starts afresh */
    int state_loaded;     /**< after a successful end: 1 if the blob's training state was taken */
    int parse;            /**< 0: the header is not this format's, later bytes are only counted */
    tmp_status err_st;    /**< the first error found in the records (TMP_OK: none so far) */
    const char *err;      /**< its message */
} tmp_params_reader;

/**
 * Start reading a blob in pieces. copy = 0 checks only; copy = 1 also writes each record into
 * the arena as it arrives, so run it only after a checking pass over the same bytes succeeded:
 * tmp_trainer_params_load is exactly that, on one buffer. Then tmp_trainer_params_feed with the
 * blob's bytes in order, in pieces of any size, and tmp_trainer_params_end. t->arena may move
 * between the calls (records are kept as arena offsets).
 */
tmp_status tmp_trainer_params_begin(const tmp_trainer *t, tmp_params_reader *r, int copy);
tmp_status tmp_trainer_params_feed(tmp_trainer *t, tmp_params_reader *r, const uint8_t *data,
    uint32_t n);
/**
 * The verdict on everything fed: TMP_OK, or the error tmp_trainer_params_load would give for the
 * same bytes (*msg says why). After a copying pass that succeeds, the masters' int8 copies are
 * requantised and the training state taken or started afresh (r->state_loaded says which, as
 * for tmp_trainer_params_load): the parameters are loaded. Any piece boundaries give the same
 * results.
 */
tmp_status tmp_trainer_params_end(tmp_trainer *t, tmp_params_reader *r, const char **msg);

/**
 * Whether the trainer steps a layer's trained int8 weights where they are (the default: int8
 * storage, no momentum, not a standard conv) rather than through a slice gathered into the end of
 * the layer's backward scratch. The planner sizes that scratch by the same rule.
 */
static inline int tmp_train_update_in_place(tmp_layer_type type, int fp32, int momentum) {
    return type != TMP_LAYER_CONV && !fp32 && !momentum;
}

#ifdef __cplusplus
}
#endif

#endif /* TMP_TRAIN_H */

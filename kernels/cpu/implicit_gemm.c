/* Fused sparse convolution on CPU: output-stationary implicit GEMM and the per-offset weight
 * gradient, in C with OpenMP.
 *
 * Why C: on CPU the torch dataflow moves every pair's features through memory three times
 * (gather, GEMM, scatter-add) and each pass costs about as much as the GEMM itself at C = 64.
 * Here a thread owns a tile of output rows, keeps their accumulators in L1/L2, and for each
 * kernel offset multiplies the listed input rows straight from the feature matrix into them:
 * no gathered copy, no scatter, no atomics (every output row is written by one thread, in a
 * fixed order, so the result is deterministic).
 *
 * The register kernel multiplies MR rows by a 16-column weight panel: 12 rows of one 16-float
 * vector on AVX-512, the classic 6 x 16 shape (two 8-float vectors per row) elsewhere; both
 * keep 12 accumulators in registers. It is written with GCC vector extensions, so it compiles
 * for any target ISA (-march=native picks the branch). Weights are passed
 * with their output dimension padded to a multiple of 16 (zero columns), so the kernel has no
 * column tail; row tails use the same kernel with fewer rows.
 *
 * Reference: sparseconv.functional.dataflow_torch (tests compare the two).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#include "tiles.h"

#define NR 16 /* columns per register block (one 16-float panel of the padded weight) */

#if defined(__AVX512F__)
/* AVX-512: one 16-float vector per row, 12 rows (12 accumulators of the 32 registers) */
#define MR 12
typedef float vec __attribute__((vector_size(64)));
typedef float vecu __attribute__((vector_size(64), aligned(4)));
#define VECS 1
#else
/* AVX2 and narrower: two 8-float vectors per row, 6 rows (12 of the 16 registers) */
#define MR 6
typedef float vec __attribute__((vector_size(32)));
typedef float vecu __attribute__((vector_size(32), aligned(4)));
#define VECS 2
#endif
#define VW (NR / VECS) /* floats per vector */

static inline vec loadv(const float *p) { return *(const vecu *)p; }
static inline void storev(float *p, vec v) { *(vecu *)p = v; }

/* dst[r][0:16] += sum_c src[r][c] * w[c * ldw + 0:16] for r < R. */
static inline __attribute__((always_inline)) void
rows_times_panel(const int R, const float *const *src, const float *w, int64_t cin, int64_t ldw,
                 float *const *dst) {
    vec a[MR][VECS];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < VECS; ++v) a[r][v] = (vec){0};
    for (int64_t c = 0; c < cin; ++c) {
        vec wv[VECS];
        for (int v = 0; v < VECS; ++v) wv[v] = loadv(w + c * ldw + v * VW);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            const float x = src[r][c];
            for (int v = 0; v < VECS; ++v) a[r][v] += x * wv[v];
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < VECS; ++v)
            storev(dst[r] + v * VW, loadv(dst[r] + v * VW) + a[r][v]);
}

/* a compile-time row count for every tail (R <= MR), so the accumulators stay in registers */
#define CASES_UP_TO_6(F, ...)                                                                     \
    case 6: F(6, __VA_ARGS__); break;                                                             \
    case 5: F(5, __VA_ARGS__); break;                                                             \
    case 4: F(4, __VA_ARGS__); break;                                                             \
    case 3: F(3, __VA_ARGS__); break;                                                             \
    case 2: F(2, __VA_ARGS__); break;                                                             \
    default: F(1, __VA_ARGS__); break;
#if MR == 12
#define ROW_CASES(F, ...)                                                                         \
    switch (R) {                                                                                  \
    case 12: F(12, __VA_ARGS__); break;                                                           \
    case 11: F(11, __VA_ARGS__); break;                                                           \
    case 10: F(10, __VA_ARGS__); break;                                                           \
    case 9: F(9, __VA_ARGS__); break;                                                             \
    case 8: F(8, __VA_ARGS__); break;                                                             \
    case 7: F(7, __VA_ARGS__); break;                                                             \
        CASES_UP_TO_6(F, __VA_ARGS__)                                                             \
    }
#else
#define ROW_CASES(F, ...)                                                                         \
    switch (R) { CASES_UP_TO_6(F, __VA_ARGS__) }
#endif

static void rows_times_panel_any(int R, const float *const *src, const float *w, int64_t cin,
                                 int64_t ldw, float *const *dst) {
    ROW_CASES(rows_times_panel, src, w, cin, ldw, dst)
}

#if defined(__AVX512F__)
#define WIDE 32 /* AVX-512 also has a 32-column panel: two vectors per row, 24 accumulators */

/* dst[r][0:32] += sum_c src[r][c] * w[c * 32 + 0:32] for r < R. Two weight vectors serve each
 * broadcast row value, so the kernel issues 14 loads per 24 FMAs instead of 13 per 12: the
 * load ports stop being the limit. */
static inline __attribute__((always_inline)) void
rows_times_wide_panel(const int R, const float *const *src, const float *w, int64_t cin,
                      float *const *dst) {
    vec a0[MR], a1[MR];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) a0[r] = a1[r] = (vec){0};
    for (int64_t c = 0; c < cin; ++c) {
        const vec w0 = loadv(w + c * WIDE), w1 = loadv(w + c * WIDE + 16);
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r) {
            const float x = src[r][c];
            a0[r] += x * w0;
            a1[r] += x * w1;
        }
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
        storev(dst[r], loadv(dst[r]) + a0[r]);
        storev(dst[r] + 16, loadv(dst[r] + 16) + a1[r]);
    }
}

static void rows_times_wide_panel_any(int R, const float *const *src, const float *w,
                                      int64_t cin, float *const *dst) {
    ROW_CASES(rows_times_wide_panel, src, w, cin, dst)
}
#else
#define WIDE NR
#endif

/* The widest weight panel this build's register kernels take (the caller packs weights so). */
int sc_max_panel(void) { return WIDE; }

/* Appends each valid neighbour of the rows [r0, r0 + rows) to its offset's list: entry
 * cursor[k]++ of list_src (the input row) and list_row (the row within the tile). Returns 1 if an
 * input row is out of range. */
static int list_tile(const int32_t *nbmap, int64_t r0, int64_t rows, int64_t K, int64_t n_src,
                     int64_t *cursor, int32_t *list_src, int32_t *list_row) {
    int bad = 0;
    /* A scan row holds a few of its 27 neighbours in no predictable pattern: a branch per
     * entry mispredicted often enough to cost more than an 8-channel layer's arithmetic. Each
     * row's valid entries become a bit mask (a branch-free, vectorisable compare) and only its
     * set bits are visited. */
    for (int64_t r = 0; r < rows; ++r) {
        const int32_t *nb = nbmap + (r0 + r) * K;
        for (int64_t k0 = 0; k0 < K; k0 += 64) {
            const int64_t n = K - k0 < 64 ? K - k0 : 64;
            uint64_t valid = 0, negative = 0;
            for (int64_t k = 0; k < n; ++k) {
                valid |= (uint64_t)((uint32_t)nb[k0 + k] < (uint32_t)n_src) << k;
                negative |= (uint64_t)(nb[k0 + k] < 0) << k;
            }
            /* a row index >= n_src is neither valid nor "no neighbour" */
            bad |= (valid | negative) != (n == 64 ? ~0ull : (1ull << n) - 1);
            while (valid) {
                const int64_t k = k0 + __builtin_ctzll(valid);
                valid &= valid - 1;
                const int64_t i = cursor[k]++;
                list_src[i] = nb[k];
                list_row[i] = (int32_t)r;
            }
        }
    }
    return bad;
}

/* counts[t * K + k] = the valid neighbours of offset k among the rows of tile t (tiles of `tile`
 * rows). Returns 1 if nbmap names a row outside [0, n_src). */
int sc_tile_plan_count(const int32_t *nbmap, int64_t n_dst, int64_t K, int64_t n_src,
                       int64_t tile, int64_t *counts, int n_threads) {
    const int64_t n_tiles = (n_dst + tile - 1) / tile;
    int bad = 0;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 4) reduction(| : bad)
    for (int64_t t = 0; t < n_tiles; ++t) {
        int64_t *count = counts + t * K;
        const int64_t hi = (t + 1) * tile < n_dst ? (t + 1) * tile : n_dst;
        for (int64_t k = 0; k < K; ++k) count[k] = 0;
        for (int64_t j = t * tile; j < hi; ++j) {
            const int32_t *nb = nbmap + j * K;
            for (int64_t k = 0; k < K; ++k) { /* branch-free: vectorised across offsets */
                count[k] += (uint32_t)nb[k] < (uint32_t)n_src;
                bad |= nb[k] >= n_src;
            }
        }
    }
    return bad;
}

/* The tile lists of every tile at once (a plan: sc_tile_rows then skips the listing): ptr
 * [n_tiles * K + 1] is the running sum of sc_tile_plan_count's counts, and tile t's offset-k
 * entries go to list_src / list_row [ptr[t * K + k], ptr[t * K + k + 1]). */
int sc_tile_plan_fill(const int32_t *nbmap, int64_t n_dst, int64_t K, int64_t n_src,
                      int64_t tile, const int64_t *ptr, int32_t *list_src, int32_t *list_row,
                      int n_threads) {
    const int64_t n_tiles = (n_dst + tile - 1) / tile;
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
        int64_t *cursor = malloc(sizeof(int64_t) * (K ? K : 1));
        if (!cursor) bad |= 2;
#pragma omp for schedule(dynamic, 4)
        for (int64_t t = 0; t < n_tiles; ++t) {
            if (!cursor) continue;
            const int64_t rows = n_dst - t * tile < tile ? n_dst - t * tile : tile;
            memcpy(cursor, ptr + t * K, sizeof(int64_t) * K);
            bad |= list_tile(nbmap, t * tile, rows, K, n_src, cursor, list_src, list_row);
        }
        free(cursor);
    }
    return bad;
}

/* acc[list_row[i]] += src[list_src[i]] @ wk for the n listed rows of one offset; wk is
 * panel-major: panel p is a contiguous [cin, panel] block (panel 16, or WIDE). */
static void multiply_listed_rows(const float *src, int64_t cin, const float *wk, int64_t ldw,
                                 int64_t panel, const int32_t *ls, const int32_t *lr, int64_t n,
                                 float *acc) {
    for (int64_t g = 0; g < n; g += MR) {
        const int R = n - g < MR ? (int)(n - g) : MR;
        const float *sp[MR];
        float *dp[MR];
        for (int r = 0; r < R; ++r) {
            sp[r] = src + (int64_t)ls[g + r] * cin;
            dp[r] = acc + (int64_t)lr[g + r] * ldw;
        }
        /* the next group's rows are scattered: fetch them while this one computes */
        for (int64_t q = g + MR; q < g + 2 * MR && q < n; ++q) {
            const char *row = (const char *)(src + (int64_t)ls[q] * cin);
            for (int64_t b = 0; b < cin * (int64_t)sizeof(float); b += 64)
                __builtin_prefetch(row + b);
        }
        for (int64_t j = 0; j < ldw; j += panel) {
            float *dj[MR];
            for (int r = 0; r < R; ++r) dj[r] = dp[r] + j;
#if WIDE != NR
            if (panel == WIDE) {
                rows_times_wide_panel_any(R, sp, wk + j * cin, cin, dj);
                continue;
            }
#endif
            rows_times_panel_any(R, sp, wk + j * cin, cin, NR, dj);
        }
    }
}

/* tiles.h: dst[r][c] = epilogue(acc[r][c]) for the tile's rows: acc * scale + shift + residual[r][c]
 * (each may be NULL), then max(., 0) with relu; acc may be dst's own rows (ldw == cout). While
 * the tile is still in cache this costs a fraction of a separate pass over the output per step. */
void sc_store_tile(const float *acc, int64_t ldw, int64_t rows, int64_t cout,
                   const float *scale, const float *shift, const float *residual, int relu,
                   float *dst) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *a = acc + r * ldw;
        const float *res = residual ? residual + r * cout : NULL;
        float *o = dst + r * cout;
        for (int64_t c = 0; c < cout; ++c)
            o[c] = sc_epilogue(a[c], scale, shift, c, res ? res[c] : 0.0f, relu);
    }
}

/* tiles.h: the tile schedule both implicit-GEMM kernels run on */
int sc_tile_rows(const int32_t *nbmap, int64_t n_dst, int64_t K, int64_t n_src, int64_t tile,
                 int64_t ldw, const sc_tile_plan *plan, size_t scratch_bytes, sc_tile_work work,
                 const void *args, int n_threads) {
    const int64_t n_tiles = (n_dst + tile - 1) / tile;
    const int64_t lists = plan ? 1 : K * tile; /* a plan brings its own lists */
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
        float *acc = malloc(sizeof(float) * tile * ldw);
        int32_t *list_src = malloc(sizeof(int32_t) * lists);
        int32_t *list_row = malloc(sizeof(int32_t) * lists);
        int64_t *begin = malloc(sizeof(int64_t) * (K ? K : 1));
        int64_t *end = malloc(sizeof(int64_t) * (K ? K : 1));
        void *scratch = calloc(1, scratch_bytes ? scratch_bytes : 1);
        const int ok = acc && list_src && list_row && begin && end && scratch;
        if (ok)
            for (int64_t k = 0; k < K; ++k) begin[k] = k * tile;
        /* every thread must reach the work-sharing loop, even one without buffers */
#pragma omp for schedule(dynamic, 2)
        for (int64_t t = 0; t < n_tiles; ++t) {
            if (!ok) {
                bad |= 2;
                continue;
            }
            const int64_t r0 = t * tile;
            const int64_t rows = n_dst - r0 < tile ? n_dst - r0 : tile;
            if (plan) {
                const int64_t *ptr = plan->ptr + t * K; /* offset k: [ptr[k], ptr[k + 1]) */
                bad |= work(args, r0, rows, plan->list_src, plan->list_row, ptr, ptr + 1, acc,
                            scratch);
                continue;
            }
            memcpy(end, begin, sizeof(int64_t) * K);
            bad |= list_tile(nbmap, r0, rows, K, n_src, end, list_src, list_row);
            bad |= work(args, r0, rows, list_src, list_row, begin, end, acc, scratch);
        }
        free(acc);
        free(list_src);
        free(list_row);
        free(begin);
        free(end);
        free(scratch);
    }
    return bad;
}

/* The fp32 forward pass's operands, for its tile callback. */
struct implicit_gemm_args {
    const float *src, *w, *scale, *shift, *residual;
    float *dst;
    int64_t cin, ldw, cout, K, panel;
    int relu;
};

static int implicit_gemm_tile(const void *arg, int64_t r0, int64_t rows, const int32_t *list_src,
                              const int32_t *list_row, const int64_t *begin, const int64_t *end,
                              float *acc, void *scratch) {
    (void)scratch;
    const struct implicit_gemm_args *a = arg;
    const int64_t cin = a->cin, ldw = a->ldw, cout = a->cout;
    const int epilogue = a->scale || a->shift || a->residual || a->relu;
    /* with cout == ldw the tile's own output rows are the accumulators */
    float *tacc = cout == ldw ? a->dst + r0 * cout : acc;
    memset(tacc, 0, sizeof(float) * rows * ldw);
    for (int64_t k = 0; k < a->K; ++k)
        multiply_listed_rows(a->src, cin, a->w + k * cin * ldw, ldw, a->panel,
                             list_src + begin[k], list_row + begin[k], end[k] - begin[k], tacc);
    if (epilogue)
        sc_store_tile(tacc, ldw, rows, cout, a->scale, a->shift,
                      a->residual ? a->residual + r0 * cout : NULL, a->relu, a->dst + r0 * cout);
    else if (tacc == acc)
        for (int64_t r = 0; r < rows; ++r)
            memcpy(a->dst + (r0 + r) * cout, acc + r * ldw, sizeof(float) * cout);
    return 0;
}

/* dst[j] = epilogue(sum_k src[nbmap[j, k]] @ w[k] over the k with nbmap[j, k] >= 0).
 *
 * src [n_src, cin], w [K, ldw / panel, cin, panel] (panel-major; panel 16 or sc_max_panel(),
 * ldw a multiple of it, columns >= cout zero),
 * nbmap [n_dst, K] int32 (-1: no neighbour), dst [n_dst, cout]; scale, shift [cout] or NULL,
 * residual [n_dst, cout] or NULL, relu 0 or 1 (sc_store_tile); plan_ptr, plan_src, plan_row
 * the map's tile lists for this tile size (sc_tile_plan_fill, checked against n_src when built)
 * or NULL to list each tile as it is taken. Returns 0; bit 1 when nbmap names a row outside
 * src, bit 2 when memory ran out (dst is then incomplete). */
int sc_implicit_gemm(const float *src, int64_t n_src, int64_t cin, const float *w, int64_t ldw,
                     int64_t cout, const int32_t *nbmap, int64_t n_dst, int64_t K, float *dst,
                     int64_t tile, const int64_t *plan_ptr, const int32_t *plan_src,
                     const int32_t *plan_row, int64_t panel, const float *scale,
                     const float *shift, const float *residual, int relu, int n_threads) {
    if (panel != NR && panel != WIDE) return 4;
    const struct implicit_gemm_args args = {src, w, scale, shift, residual, dst,
                                            cin, ldw, cout, K, panel, relu};
    const sc_tile_plan plan = {plan_ptr, plan_src, plan_row};
    return sc_tile_rows(nbmap, n_dst, K, n_src, tile, ldw, plan_ptr ? &plan : NULL, 0,
                        implicit_gemm_tile, &args, n_threads);
}

/* dw[k] (cin x NR panel at columns j) += sum_p xc[p, c0:c0+R]^T (x) gc[p, j:j+16]. */
static inline __attribute__((always_inline)) void
outer_panel(const int R, const float *xc, int64_t cin, const float *gc, int64_t ldw, int64_t P,
            float *dw) {
    vec a[MR][VECS];
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < VECS; ++v) a[r][v] = (vec){0};
    for (int64_t p = 0; p < P; ++p) {
        vec g[VECS];
        for (int v = 0; v < VECS; ++v) g[v] = loadv(gc + p * ldw + v * VW);
        const float *xr = xc + p * cin;
#pragma GCC unroll 12
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < VECS; ++v) a[r][v] += xr[r] * g[v];
    }
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r)
        for (int v = 0; v < VECS; ++v)
            storev(dw + r * ldw + v * VW, loadv(dw + r * ldw + v * VW) + a[r][v]);
}

static void outer_panel_any(int R, const float *xc, int64_t cin, const float *gc, int64_t ldw,
                            int64_t P, float *dw) {
    ROW_CASES(outer_panel, xc, cin, gc, ldw, P, dw)
}

/* Copies the P pairs' input rows into xc [P, cin] and output-gradient rows into gc [P, ldw]
 * (columns >= cout stay zero). Returns 1 if an index is out of range. */
static int gather_pairs(const float *x, int64_t n_in, int64_t cin, const float *dy, int64_t n_out,
                        int64_t cout, int64_t ldw, const int64_t *in_idx, const int64_t *out_idx,
                        int64_t P, float *xc, float *gc) {
    for (int64_t p = 0; p < P; ++p) {
        const int64_t i = in_idx[p], o = out_idx[p];
        if (i < 0 || i >= n_in || o < 0 || o >= n_out) return 1;
        memcpy(xc + p * cin, x + i * cin, sizeof(float) * cin);
        memcpy(gc + p * ldw, dy + o * cout, sizeof(float) * cout);
    }
    return 0;
}

/* The fp32 weight gradient's operands, for its slot callback. */
struct weight_grad_args {
    const float *x, *dy;
    int64_t n_in, cin, n_out, cout, ldw, chunk;
    const int64_t *in_idx, *out_idx, *ptr;
};

/* Sums one slot's work items (consecutive pair chunks, sorted by offset) into its buffer,
 * which holds the offsets item_k[first] .. item_k[last - 1] of the slot, [cin, ldw] each.
 * Returns 1 for an index out of range. */
static int weight_grad_slot(const void *arg, const int64_t *item_k, const int64_t *item_lo,
                            int64_t first, int64_t last, void *scratch, float *buf) {
    const struct weight_grad_args *a = arg;
    const int64_t cin = a->cin, ldw = a->ldw, panel = cin * ldw, k_first = item_k[first];
    float *xc = scratch, *gc = xc + a->chunk * cin; /* gc's columns >= cout stay zero */
    for (int64_t it = first; it < last; ++it) {
        const int64_t k = item_k[it], lo = item_lo[it];
        const int64_t P = (lo + a->chunk < a->ptr[k + 1] ? lo + a->chunk : a->ptr[k + 1]) - lo;
        if (gather_pairs(a->x, a->n_in, cin, a->dy, a->n_out, a->cout, ldw, a->in_idx + lo,
                         a->out_idx + lo, P, xc, gc))
            return 1;
        float *dwk = buf + (k - k_first) * panel;
        for (int64_t c0 = 0; c0 < cin; c0 += MR) {
            const int R = cin - c0 < MR ? (int)(cin - c0) : MR;
            for (int64_t j = 0; j < ldw; j += NR)
                outer_panel_any(R, xc + c0, cin, gc + j, ldw, P, dwk + c0 * ldw + j);
        }
    }
    return 0;
}

/* tiles.h: the deterministic slot schedule every weight-gradient kernel shares.
 *
 * Pairs are cut into chunks of at most `chunk` (work items, in offset order), and the items
 * into WEIGHT_GRAD_SLOTS consecutive slots. Threads take slots dynamically (a descheduled
 * thread holds up only the slot it has), each slot sums into its own buffer ([rows, ldw]
 * floats per offset it spans, zeroed) through `work`, and the buffers are added in slot order:
 * the result depends neither on the thread count nor on which thread ran what. */
#define WEIGHT_GRAD_SLOTS 32
int sc_weight_grad_slots(const int64_t *ptr, int64_t K, int64_t chunk, int64_t rows, int64_t ldw,
                         int64_t cin, int64_t cout, float *dw, size_t scratch_bytes,
                         sc_slot_work work, const void *args, int n_threads) {
    int64_t n_items = 0;
    for (int64_t k = 0; k < K; ++k) n_items += (ptr[k + 1] - ptr[k] + chunk - 1) / chunk;
    memset(dw, 0, sizeof(float) * K * cin * cout);
    if (n_items == 0) return 0;
    const int64_t n_slots = n_items < WEIGHT_GRAD_SLOTS ? n_items : WEIGHT_GRAD_SLOTS;
    int64_t *item_k = malloc(sizeof(int64_t) * n_items);
    int64_t *item_lo = malloc(sizeof(int64_t) * n_items);
    float **buf = calloc((size_t)n_slots, sizeof(float *));
    int bad = 0;
    if (!item_k || !item_lo || !buf) bad = 2;
    for (int64_t k = 0, i = 0; !bad && k < K; ++k)
        for (int64_t lo = ptr[k]; lo < ptr[k + 1]; lo += chunk, ++i) {
            item_k[i] = k;
            item_lo[i] = lo;
        }
    const int64_t panel = rows * ldw;
    if (!bad) {
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
        {
            void *scratch = calloc(1, scratch_bytes);
            /* every thread must reach the work-sharing loop, even one without buffers */
#pragma omp for schedule(dynamic, 1)
            for (int64_t sl = 0; sl < n_slots; ++sl) {
                const int64_t first = sl * n_items / n_slots, last = (sl + 1) * n_items / n_slots;
                const int64_t span = item_k[last - 1] - item_k[first] + 1;
                buf[sl] = calloc((size_t)(span * panel), sizeof(float));
                if (!scratch || !buf[sl]) {
                    bad |= 2;
                    continue;
                }
                bad |= work(args, item_k, item_lo, first, last, scratch, buf[sl]);
            }
            free(scratch);
        }
    }
    if (!bad) {
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 4)
        for (int64_t row = 0; row < K * cin; ++row) {
            const int64_t k = row / cin, c = row % cin;
            float *out = dw + row * cout;
            for (int64_t sl = 0; sl < n_slots; ++sl) {
                const int64_t first = sl * n_items / n_slots, last = (sl + 1) * n_items / n_slots;
                const int64_t k_first = item_k[first];
                if (k < k_first || k > item_k[last - 1]) continue;
                const float *src = buf[sl] + (k - k_first) * panel + c * ldw;
                for (int64_t o = 0; o < cout; ++o) out[o] += src[o];
            }
        }
    }
    for (int64_t sl = 0; buf && sl < n_slots; ++sl) free(buf[sl]);
    free(buf);
    free(item_k);
    free(item_lo);
    return bad;
}

/* dw[k] = sum over the pairs p of offset k of x[in_idx[p]]^T (x) dy[out_idx[p]].
 *
 * x [n_in, cin], dy [n_out, cout], pairs CSR by offset (ptr [K + 1]), dw [K, cin, cout], in
 * the slot schedule above. Returns 0, 1 for an index out of range, 2 when memory ran out. */
int sc_weight_grad(const float *x, int64_t n_in, int64_t cin, const float *dy, int64_t n_out,
                   int64_t cout, int64_t ldw, const int64_t *in_idx, const int64_t *out_idx,
                   const int64_t *ptr, int64_t K, float *dw, int64_t chunk, int n_threads) {
    const struct weight_grad_args args = {x, dy, n_in, cin, n_out, cout, ldw, chunk,
                                          in_idx, out_idx, ptr};
    const size_t scratch = sizeof(float) * (size_t)(chunk * cin + chunk * ldw);
    return sc_weight_grad_slots(ptr, K, chunk, cin, ldw, cin, cout, dw, scratch,
                                weight_grad_slot, &args, n_threads);
}

/* bfloat16 sparse convolution on Intel AMX (Sapphire Rapids and later): the output-stationary
 * implicit GEMM (forward pass and input gradient) and the per-offset weight gradient.
 *
 * Why: an AMX tile multiply (TDPBF16PS, 16 x 16 x 32 multiply-adds) runs about seven times as
 * many bf16 multiply-adds per cycle as AVX-512 runs fp32 ones (torch.mm: ~1.3-1.7 TFLOP/s per
 * core in bf16 against ~0.2 in fp32 on this project's CPU machine), so a bf16 network's
 * convolutions stop being bound by arithmetic. The plan is the fp32 kernel's (implicit_gemm.c):
 * a thread owns a tile of output rows, lists each offset's neighbours of those rows
 * (sc_tile_rows), and accumulates into fp32 rows in cache. AMX multiplies only whole 16-row
 * tiles from contiguous memory, so each group of up to 32 listed input rows is copied into a
 * small buffer first (the gather is one row copy per pair, the only memory pass a pair costs),
 * multiplied by the offset's weight panels in 2 x 2 blocks of accumulator tiles, and the fp32
 * results are added to the rows they belong to. The weight gradient copies each chunk of pairs'
 * rows, transposes x and pairs up dy's rows (the operand layouts the tile multiply reads), and
 * sums in the fp32 kernel's deterministic slot schedule (sc_weight_grad_slots). Products of bf16 numbers are exact in fp32 and every sum is fp32, as in every
 * dataflow's bf16 path; the epilogue runs in fp32 and each output is rounded to bf16 once.
 *
 * Weights come packed by the caller in the VNNI layout TDPBF16PS reads: for offset k, column
 * panel p (16 output channels) and input-channel chunk c (32 channels) one 16 x 32 block,
 * [K][panels][chunks][16 channel pairs][16 columns][2]; input channels are zero-padded to a
 * multiple of 32 and output channels to a multiple of 16.
 *
 * Built only where the compiler targets AMX (-march=native on such a CPU); sc_amx_ready()
 * says whether this build has it and the kernel may use it (Linux grants AMX state per process
 * on request). Reference: the fp32 kernels on widened operands, and through them
 * sparseconv.functional.dataflow_torch (tests/functional/test_amx_kernel.py).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tiles.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__x86_64__) && defined(__linux__)
#define HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

#define ROWS 16   /* rows of a tile */
#define CHUNK 32  /* bf16 input channels per tile row (64 bytes) */
#define PANEL 16  /* fp32 output columns per tile row */

/* 1 when this build has AMX and the process may use it (asked for once), else 0. */
int sc_amx_ready(void) {
#ifdef HAVE_AMX
    static int state = -1;
    if (state < 0) state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return state;
#else
    return 0;
#endif
}

#ifdef HAVE_AMX
static inline float from_bf16(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* round to nearest even, as torch rounds float32 to bfloat16 (NaN stays NaN) */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

/* to_bf16 of 16 float bit patterns at once */
static inline u16x16 round16(u32x16 u) {
    const u32x16 nan = (u32x16)((u & 0x7fffffffu) > 0x7f800000u);
    const u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const u32x16 bits = (rounded & ~nan) | (((u >> 16) | 0x40u) & nan);
    return __builtin_convertvector(bits, u16x16);
}

/* sc_epilogue and to_bf16 on 16 columns at once (the scalar steps, lane by lane: the same bits) */
static inline void store16_bf16(const float *a, const float *scale, const float *shift,
                                const uint16_t *res, int relu, uint16_t *o) {
    f32x16 v, t;
    memcpy(&v, a, sizeof v);
    if (scale) {
        memcpy(&t, scale, sizeof t);
        v *= t;
    }
    if (shift) {
        memcpy(&t, shift, sizeof t);
        v += t;
    }
    if (res) {
        u16x16 h;
        memcpy(&h, res, sizeof h);
        const u32x16 wide = __builtin_convertvector(h, u32x16) << 16;
        memcpy(&t, &wide, sizeof t);
        v += t;
    }
    u32x16 u;
    memcpy(&u, &v, sizeof u);
    if (relu) u &= (u32x16)(v > (f32x16){0}); /* NaN and negatives to +0 */
    const u16x16 out = round16(u);
    memcpy(o, &out, sizeof out);
}

/* row r of src (bf16, or fp32 rounded to bf16 on the way) into dst, cin numbers */
static inline void copy_row_bf16(const void *src, int src_f32, int64_t r, int64_t cin,
                                 uint16_t *dst) {
    if (!src_f32) {
        memcpy(dst, (const uint16_t *)src + r * cin, sizeof(uint16_t) * cin);
        return;
    }
    const float *row = (const float *)src + r * cin;
    int64_t c = 0;
    for (; c + 16 <= cin; c += 16) {
        u32x16 u;
        memcpy(&u, row + c, sizeof u);
        const u16x16 out = round16(u);
        memcpy(dst + c, &out, sizeof out);
    }
    for (; c < cin; ++c) dst[c] = to_bf16(row[c]);
}

/* dst[r][c] = bf16(epilogue(acc[r][c])) for the tile's rows (sc_store_tile, then rounded):
 * 16 columns at a time, the tail one by one (the same bits either way). */
static void store_tile_bf16(const float *acc, int64_t ldw, int64_t rows, int64_t cout,
                            const float *scale, const float *shift, const uint16_t *residual,
                            int relu, uint16_t *dst) {
    const int64_t vec_end = cout / 16 * 16;
    for (int64_t r = 0; r < rows; ++r) {
        const float *a = acc + r * ldw;
        const uint16_t *res = residual ? residual + r * cout : NULL;
        uint16_t *o = dst + r * cout;
        for (int64_t c = 0; c < vec_end; c += 16)
            store16_bf16(a + c, scale ? scale + c : NULL, shift ? shift + c : NULL,
                         res ? res + c : NULL, relu, o + c);
        for (int64_t c = vec_end; c < cout; ++c) {
            const float added = res ? from_bf16(res[c]) : 0.0f;
            o[c] = to_bf16(sc_epilogue(a[c], scale, shift, c, added, relu));
        }
    }
}

struct tile_config {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed));

/* every tile 16 rows of 64 bytes: tmm0-3 fp32 accumulators, tmm4-5 inputs, tmm6-7 weights */
static void configure_tiles(void) {
    struct tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = ROWS;
    }
    _tile_loadconfig(&cfg);
}

/* cbuf [32][32] = A @ [wp0 | wp1] for the 16 (or, with two_rows, 32) rows of abuf and one (or,
 * with two_panels, two) 16-column weight panels: a 2 x 2 block of accumulator tiles, so each
 * weight tile loaded (from L2) serves 32 rows and each input tile (from L1) 32 columns. */
static inline __attribute__((always_inline)) void
tile_block(const int two_rows, const int two_panels, const uint16_t *abuf, int64_t cin_p,
           const uint16_t *wp0, const uint16_t *wp1, int64_t n_chunks, float *cbuf) {
    const int64_t a_stride = cin_p * (int64_t)sizeof(uint16_t), block = ROWS * CHUNK;
    const uint16_t *a1 = abuf + ROWS * cin_p;
    _tile_zero(0);
    if (two_panels) _tile_zero(1);
    if (two_rows) _tile_zero(2);
    if (two_rows && two_panels) _tile_zero(3);
    for (int64_t c = 0; c < n_chunks; ++c) {
        _tile_loadd(4, abuf + c * CHUNK, a_stride);
        if (two_rows) _tile_loadd(5, a1 + c * CHUNK, a_stride);
        _tile_loadd(6, wp0 + c * block, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_rows) _tile_dpbf16ps(2, 5, 6);
        if (two_panels) {
            _tile_loadd(7, wp1 + c * block, 64);
            _tile_dpbf16ps(1, 4, 7);
            if (two_rows) _tile_dpbf16ps(3, 5, 7);
        }
    }
    const int64_t ldc = 2 * PANEL * (int64_t)sizeof(float);
    _tile_stored(0, cbuf, ldc);
    if (two_panels) _tile_stored(1, cbuf + PANEL, ldc);
    if (two_rows) _tile_stored(2, cbuf + ROWS * 2 * PANEL, ldc);
    if (two_rows && two_panels) _tile_stored(3, cbuf + ROWS * 2 * PANEL + PANEL, ldc);
}

/* acc[lr[i]] += src[ls[i]] @ wk for the n listed rows of one offset, 32 rows at a time.
 * abuf [32, cin_p] (columns >= cin stay zero), cbuf [32, 32] floats. */
static void multiply_listed_rows_amx(const void *src, int src_f32, int64_t cin, int64_t cin_p,
                                     const uint16_t *wk, int64_t ldw, const int32_t *ls,
                                     const int32_t *lr, int64_t n, float *acc, uint16_t *abuf,
                                     float *cbuf) {
    const int64_t n_panels = ldw / PANEL, n_chunks = cin_p / CHUNK;
    const int64_t panel_size = n_chunks * ROWS * CHUNK; /* bf16 numbers in one weight panel */
    const int64_t row_bytes = cin * (int64_t)(src_f32 ? sizeof(float) : sizeof(uint16_t));
    for (int64_t g = 0; g < n; g += 2 * ROWS) {
        const int R = n - g < 2 * ROWS ? (int)(n - g) : 2 * ROWS;
        for (int r = 0; r < R; ++r) copy_row_bf16(src, src_f32, ls[g + r], cin, abuf + r * cin_p);
        /* the next group's rows are scattered: fetch them while this one multiplies */
        for (int64_t q = g + 2 * ROWS; q < g + 4 * ROWS && q < n; ++q) {
            const char *row = (const char *)src + (int64_t)ls[q] * row_bytes;
            for (int64_t b = 0; b < row_bytes; b += 64) __builtin_prefetch(row + b);
        }
        for (int64_t p = 0; p < n_panels; p += 2) {
            const uint16_t *wp0 = wk + p * panel_size, *wp1 = wp0 + panel_size;
            const int pair = p + 1 < n_panels;
            if (R > ROWS && pair) tile_block(1, 1, abuf, cin_p, wp0, wp1, n_chunks, cbuf);
            else if (R > ROWS) tile_block(1, 0, abuf, cin_p, wp0, wp1, n_chunks, cbuf);
            else if (pair) tile_block(0, 1, abuf, cin_p, wp0, wp1, n_chunks, cbuf);
            else tile_block(0, 0, abuf, cin_p, wp0, wp1, n_chunks, cbuf);
            const int width = pair ? 2 * PANEL : PANEL;
            for (int r = 0; r < R; ++r) {
                float *d = acc + (int64_t)lr[g + r] * ldw + p * PANEL;
                const float *s = cbuf + r * 2 * PANEL;
                for (int c = 0; c < width; ++c) d[c] += s[c];
            }
        }
    }
}

/* The bf16 weight gradient's operands, for its slot callback. */
struct weight_grad_bf16_args {
    const uint16_t *x, *dy;
    int64_t n_in, cin, cin_r, n_out, cout, ldw, chunk;
    const int64_t *in_idx, *out_idx, *ptr;
};

/* buf[ci.., co..] (rows stride ldw) += xt[ci rows] @ dyv[co columns] over `pairs` pairs (a
 * multiple of 32): xt [cin_r, chunk] is x transposed (rows: channels), dyv [chunk / 2, ldw, 2]
 * dy in pairs of pairs, the layout TDPBF16PS multiplies. A 2 x 2 block of accumulator tiles
 * (16 channels x 16 columns each) is loaded from the slot buffer, summed over the chunk's
 * pairs and stored back. */
static inline __attribute__((always_inline)) void
outer_block(const int two_rows, const int two_cols, const uint16_t *xt, int64_t chunk,
            const uint16_t *dyv, int64_t ldw, int64_t pairs, float *c) {
    const int64_t ldc = ldw * (int64_t)sizeof(float), xt_stride = chunk * 2;
    const int64_t dy_stride = ldw * 2 * (int64_t)sizeof(uint16_t);
    float *c1 = c + ROWS * ldw;
    _tile_loadd(0, c, ldc);
    if (two_cols) _tile_loadd(1, c + PANEL, ldc);
    if (two_rows) _tile_loadd(2, c1, ldc);
    if (two_rows && two_cols) _tile_loadd(3, c1 + PANEL, ldc);
    for (int64_t s = 0; s < pairs; s += CHUNK) {
        _tile_loadd(4, xt + s, xt_stride);
        if (two_rows) _tile_loadd(5, xt + ROWS * chunk + s, xt_stride);
        const uint16_t *b = dyv + (s / 2) * ldw * 2;
        _tile_loadd(6, b, dy_stride);
        _tile_dpbf16ps(0, 4, 6);
        if (two_rows) _tile_dpbf16ps(2, 5, 6);
        if (two_cols) {
            _tile_loadd(7, b + PANEL * 2, dy_stride);
            _tile_dpbf16ps(1, 4, 7);
            if (two_rows) _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, c, ldc);
    if (two_cols) _tile_stored(1, c + PANEL, ldc);
    if (two_rows) _tile_stored(2, c1, ldc);
    if (two_rows && two_cols) _tile_stored(3, c1 + PANEL, ldc);
}

/* The pairs' rows: x transposed into xt [cin_r, chunk] (through rows [chunk, cin]: whole rows
 * are copied, then each block of 32 pairs transposed while its rows sit in L1), dy into dyv
 * [chunk / 2, ldw, 2]; the pairs P .. P rounded up to 32 are zero in both. Returns 1 for an
 * index out of range. */
static int gather_pairs_bf16(const struct weight_grad_bf16_args *a, int64_t lo, int64_t P,
                             uint16_t *rows, uint16_t *xt, uint16_t *dyv) {
    const int64_t padded = (P + CHUNK - 1) / CHUNK * CHUNK, ldw = a->ldw, cin = a->cin;
    for (int64_t p = 0; p < P; ++p) {
        const int64_t i = a->in_idx[lo + p], o = a->out_idx[lo + p];
        if (i < 0 || i >= a->n_in || o < 0 || o >= a->n_out) return 1;
        memcpy(rows + p * cin, a->x + i * cin, sizeof(uint16_t) * cin);
        const uint16_t *gr = a->dy + o * a->cout;
        uint16_t *d = dyv + (p / 2) * ldw * 2 + (p & 1);
        for (int64_t col = 0; col < a->cout; ++col) d[col * 2] = gr[col];
    }
    if (P < padded) memset(rows + P * cin, 0, sizeof(uint16_t) * (padded - P) * cin);
    for (int64_t p = P; p < padded; ++p) {
        uint16_t *d = dyv + (p / 2) * ldw * 2 + (p & 1);
        for (int64_t col = 0; col < a->cout; ++col) d[col * 2] = 0;
    }
    for (int64_t p0 = 0; p0 < padded; p0 += CHUNK)
        for (int64_t ch = 0; ch < cin; ++ch) {
            uint16_t *t = xt + ch * a->chunk + p0;
            const uint16_t *r = rows + p0 * cin + ch;
            for (int64_t p = 0; p < CHUNK; ++p) t[p] = r[p * cin];
        }
    return 0;
}

static int weight_grad_slot_bf16(const void *arg, const int64_t *item_k, const int64_t *item_lo,
                                 int64_t first, int64_t last, void *scratch, float *buf) {
    const struct weight_grad_bf16_args *a = arg;
    const int64_t ldw = a->ldw, panel = a->cin_r * ldw, k_first = item_k[first];
    const int64_t row_tiles = a->cin_r / ROWS, col_tiles = ldw / PANEL;
    uint16_t *xt = scratch, *dyv = xt + a->cin_r * a->chunk, *rows = dyv + a->chunk * ldw;
    for (int64_t it = first; it < last; ++it) {
        const int64_t k = item_k[it], lo = item_lo[it];
        const int64_t P = (lo + a->chunk < a->ptr[k + 1] ? lo + a->chunk : a->ptr[k + 1]) - lo;
        if (gather_pairs_bf16(a, lo, P, rows, xt, dyv)) return 1;
        const int64_t pairs = (P + CHUNK - 1) / CHUNK * CHUNK;
        float *dwk = buf + (k - k_first) * panel;
        for (int64_t r = 0; r < row_tiles; r += 2)
            for (int64_t q = 0; q < col_tiles; q += 2) {
                const int two_rows = r + 1 < row_tiles, two_cols = q + 1 < col_tiles;
                const uint16_t *xr = xt + r * ROWS * a->chunk, *dq = dyv + q * PANEL * 2;
                float *c = dwk + r * ROWS * ldw + q * PANEL;
                if (two_rows && two_cols) outer_block(1, 1, xr, a->chunk, dq, ldw, pairs, c);
                else if (two_rows) outer_block(1, 0, xr, a->chunk, dq, ldw, pairs, c);
                else if (two_cols) outer_block(0, 1, xr, a->chunk, dq, ldw, pairs, c);
                else outer_block(0, 0, xr, a->chunk, dq, ldw, pairs, c);
            }
    }
    return 0;
}

/* The slot work with this thread's tiles configured (tile state is per thread; a thread may
 * run several slots, so each configures and releases around its own). */
static int weight_grad_slot_amx(const void *arg, const int64_t *item_k, const int64_t *item_lo,
                                int64_t first, int64_t last, void *scratch, float *buf) {
    configure_tiles();
    const int bad = weight_grad_slot_bf16(arg, item_k, item_lo, first, last, scratch, buf);
    _tile_release();
    return bad;
}
#endif

/* dw[k] = sum over the pairs p of offset k of x[in_idx[p]]^T (x) dy[out_idx[p]] for bf16 x
 * and dy, in float32 (every product exact, every sum float32), on AMX tiles.
 *
 * x [n_in, cin], dy [n_out, cout], pairs CSR by offset (ptr [K + 1]), dw float32
 * [K, cin, cout]; chunk (pairs per work item) a multiple of 32. The slot schedule of the fp32
 * kernel (sc_weight_grad_slots), so the result does not depend on the thread count. Returns 0,
 * 1 for an index out of range, 2 when memory ran out, 8 without usable AMX. */
int sc_weight_grad_bf16(const uint16_t *x, int64_t n_in, int64_t cin, const uint16_t *dy,
                        int64_t n_out, int64_t cout, const int64_t *in_idx,
                        const int64_t *out_idx, const int64_t *ptr, int64_t K, float *dw,
                        int64_t chunk, int n_threads) {
#ifdef HAVE_AMX
    if (!sc_amx_ready() || chunk % CHUNK) return 8;
    const int64_t cin_r = (cin + ROWS - 1) / ROWS * ROWS, ldw = (cout + PANEL - 1) / PANEL * PANEL;
    const struct weight_grad_bf16_args args = {x, dy, n_in, cin, cin_r, n_out, cout, ldw, chunk,
                                               in_idx, out_idx, ptr};
    const size_t scratch = sizeof(uint16_t) * (size_t)(cin_r * chunk + chunk * ldw + chunk * cin);
    return sc_weight_grad_slots(ptr, K, chunk, cin_r, ldw, cin, cout, dw, scratch,
                                weight_grad_slot_amx, &args, n_threads);
#else
    (void)x, (void)n_in, (void)cin, (void)dy, (void)n_out, (void)cout, (void)in_idx;
    (void)out_idx, (void)ptr, (void)K, (void)dw, (void)chunk, (void)n_threads;
    return 8;
#endif
}

#ifdef HAVE_AMX
/* The bf16 forward pass's operands, for its tile callback. */
struct implicit_gemm_bf16_args {
    const void *src; /* bf16, or fp32 with src_f32 */
    const uint16_t *w;
    const void *residual; /* bf16, or fp32 with out_f32 */
    const float *scale, *shift;
    void *dst; /* bf16, or fp32 with out_f32 */
    int64_t cin, cin_p, ldw, cout, K;
    int relu, src_f32, out_f32;
};

static int implicit_gemm_bf16_tile(const void *arg, int64_t r0, int64_t rows,
                                   const int32_t *list_src, const int32_t *list_row,
                                   const int64_t *begin, const int64_t *end, float *acc,
                                   void *scratch) {
    const struct implicit_gemm_bf16_args *a = arg;
    const int64_t cin_p = a->cin_p, ldw = a->ldw, cout = a->cout;
    uint16_t *abuf = scratch; /* [32, cin_p]; columns >= cin stay zero */
    float *cbuf = (float *)(abuf + 2 * ROWS * cin_p);
    configure_tiles(); /* tile state is per thread: each tile sets and releases its own */
    memset(acc, 0, sizeof(float) * rows * ldw);
    for (int64_t k = 0; k < a->K; ++k)
        multiply_listed_rows_amx(a->src, a->src_f32, a->cin, cin_p, a->w + k * cin_p * ldw, ldw,
                                 list_src + begin[k], list_row + begin[k], end[k] - begin[k], acc,
                                 abuf, cbuf);
    _tile_release();
    if (a->out_f32)
        sc_store_tile(acc, ldw, rows, cout, a->scale, a->shift,
                      a->residual ? (const float *)a->residual + r0 * cout : NULL, a->relu,
                      (float *)a->dst + r0 * cout);
    else
        store_tile_bf16(acc, ldw, rows, cout, a->scale, a->shift,
                        a->residual ? (const uint16_t *)a->residual + r0 * cout : NULL, a->relu,
                        (uint16_t *)a->dst + r0 * cout);
    return 0;
}
#endif

/* dst[j] = bf16(epilogue(sum_k src[nbmap[j, k]] @ w[k] over the k with nbmap[j, k] >= 0)).
 *
 * src bf16 [n_src, cin], w packed as described above (cin_p = cin rounded up to 32, ldw =
 * cout rounded up to 16), nbmap [n_dst, K] int32 (-1: no neighbour), dst bf16 [n_dst, cout];
 * scale, shift fp32 [cout] or NULL, residual bf16 [n_dst, cout] or NULL, relu 0 or 1. With
 * out_f32, dst and residual are fp32 and nothing is rounded; with src_f32, src is fp32 and each
 * row is rounded to bf16 as it is gathered (fp32 operands multiplied in bf16, as torch's float32
 * matmul precision "medium" asks for, without a converted copy of the features). plan_ptr,
 * plan_src, plan_row: the map's tile lists or NULL, as for sc_implicit_gemm.
 * Returns 0; bit 1 when nbmap names a row outside src, bit 2 when memory ran out, 8 when this
 * build or process cannot use AMX. Deterministic: each output row is summed by one thread in
 * offset order, whatever the thread count. */
int sc_implicit_gemm_bf16(const void *src, int64_t n_src, int64_t cin, const uint16_t *w,
                          int64_t cin_p, int64_t ldw, int64_t cout, const int32_t *nbmap,
                          int64_t n_dst, int64_t K, void *dst, int64_t tile,
                          const int64_t *plan_ptr, const int32_t *plan_src,
                          const int32_t *plan_row, const float *scale, const float *shift,
                          const void *residual, int relu, int src_f32, int out_f32,
                          int n_threads) {
#ifdef HAVE_AMX
    if (!sc_amx_ready() || cin_p % CHUNK || ldw % PANEL || cin > cin_p || cout > ldw) return 8;
    const struct implicit_gemm_bf16_args args = {src, w, residual, scale, shift, dst,
                                                 cin, cin_p, ldw, cout, K, relu, src_f32,
                                                 out_f32};
    /* the gathered input rows, then the 32 x 32 float results */
    const size_t scratch = sizeof(uint16_t) * 2 * ROWS * cin_p + sizeof(float) * 4 * ROWS * PANEL;
    const sc_tile_plan plan = {plan_ptr, plan_src, plan_row};
    return sc_tile_rows(nbmap, n_dst, K, n_src, tile, ldw, plan_ptr ? &plan : NULL, scratch,
                        implicit_gemm_bf16_tile, &args, n_threads);
#else
    (void)src, (void)n_src, (void)cin, (void)w, (void)cin_p, (void)ldw, (void)cout, (void)nbmap;
    (void)n_dst, (void)K, (void)dst, (void)tile, (void)scale, (void)shift, (void)residual;
    (void)plan_ptr, (void)plan_src, (void)plan_row;
    (void)relu, (void)src_f32, (void)out_f32, (void)n_threads;
    return 8;
#endif
}

/* Shared by the fp32 and the bf16 (AMX) implicit-GEMM kernels. */
#ifndef SPARSECONV_TILES_H
#define SPARSECONV_TILES_H
#include <stddef.h>
#include <stdint.h>

/* One tile of output rows [r0, r0 + rows) of an output-stationary kernel: entries
 * [begin[k], end[k]) of list_src / list_row are offset k's neighbours of the tile (the input
 * row, the tile row it feeds); acc is the thread's [tile, ldw] float buffer, scratch its zeroed
 * scratch_bytes. Returns 0, or a status bit to report. */
typedef int (*sc_tile_work)(const void *args, int64_t r0, int64_t rows, const int32_t *list_src,
                            const int32_t *list_row, const int64_t *begin, const int64_t *end,
                            float *acc, void *scratch);

/* Every tile's lists of one map, made once (sc_tile_plan_count / sc_tile_plan_fill) for all the
 * layers and passes that run on it: tile t's offset-k entries are [ptr[t * K + k],
 * ptr[t * K + k + 1]) of list_src / list_row. */
typedef struct {
    const int64_t *ptr;
    const int32_t *list_src, *list_row;
} sc_tile_plan;

/* The tile schedule of the implicit-GEMM kernels (implicit_gemm.c): threads take tiles of
 * `tile` output rows dynamically, list each tile's neighbours from nbmap [n_dst, K] (or read
 * them from `plan`, made for this tile size; NULL: list them here) and hand the tile to `work`.
 * Returns the OR of the statuses: bit 1 when nbmap names a row outside [0, n_src), bit 2 when
 * memory ran out. */
__attribute__((visibility("hidden"))) int
sc_tile_rows(const int32_t *nbmap, int64_t n_dst, int64_t K, int64_t n_src, int64_t tile,
             int64_t ldw, const sc_tile_plan *plan, size_t scratch_bytes, sc_tile_work work,
             const void *args, int n_threads);

/* The inference epilogue of one output value of column c: * scale + shift (each may be NULL),
 * + the residual's value (0 without one), then max(., 0) with relu. */
static inline float sc_epilogue(float v, const float *scale, const float *shift, int64_t c,
                                float residual, int relu) {
    if (scale) v *= scale[c];
    if (shift) v += shift[c];
    v += residual;
    return relu ? (v > 0.0f ? v : 0.0f) : v;
}

/* dst[r][c] = sc_epilogue(acc[r][c]) for `rows` rows of `cout` columns (acc rows ldw apart;
 * residual [rows, cout] or NULL): the fp32 store of every conv kernel (implicit_gemm.c). */
__attribute__((visibility("hidden"))) void
sc_store_tile(const float *acc, int64_t ldw, int64_t rows, int64_t cout, const float *scale,
              const float *shift, const float *residual, int relu, float *dst);

/* One slot's share of a weight gradient: sum the work items first .. last - 1 (item_k[i] the
 * offset, item_lo[i] the first pair) into buf; scratch is the thread's zeroed buffer. Returns 0,
 * or 1 for an index out of range. */
typedef int (*sc_slot_work)(const void *args, const int64_t *item_k, const int64_t *item_lo,
                            int64_t first, int64_t last, void *scratch, float *buf);

/* The deterministic slot schedule of the weight gradients (implicit_gemm.c): buffers of
 * [rows, ldw] floats per offset, rows >= cin; dw [K, cin, cout] gets their sums in slot order. */
__attribute__((visibility("hidden"))) int
sc_weight_grad_slots(const int64_t *ptr, int64_t K, int64_t chunk, int64_t rows, int64_t ldw,
                     int64_t cin, int64_t cout, float *dw, size_t scratch_bytes, sc_slot_work work,
                     const void *args, int n_threads);
#endif

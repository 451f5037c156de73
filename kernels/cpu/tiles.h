/* Shared by the fp32 and the bf16 (AMX) implicit-GEMM kernels. */
#ifndef SPARSECONV_TILES_H
#define SPARSECONV_TILES_H
#include <stdint.h>

/* Lists each offset's neighbours of the tile rows [r0, r0 + rows): list_src[k * tile + i] is an
 * input row, list_row[...] the tile row it feeds, count[k] how many. Returns 1 if an input row
 * is out of range. Defined in implicit_gemm.c. */
__attribute__((visibility("hidden"))) int sc_bucket_tile(const int32_t *nbmap, int64_t r0,
                                                         int64_t rows, int64_t K, int64_t n_src,
                                                         int64_t tile, int32_t *list_src,
                                                         int32_t *list_row, int64_t *count);
#endif

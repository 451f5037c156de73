/* Row gathers of feature matrices on CPU, in C with OpenMP.
 *
 * Why C: a decoder's skip connection puts the upsampled features back on the skip's voxels
 * (a row gather after voxel pruning) and appends the skip's features (torch.cat): two passes
 * over every row, each writing the whole [N, C] result. Here one pass writes each output row
 * once, from both sources.
 *
 * Reference: sparseconv.nn.voxel_prune.cat_skip's torch path (tests compare the two).
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

/* out[i, 0:ca] = a[index ? index[i] : i, 0:ca] and out[i, ca:ca + cb] = b[i, 0:cb], for
 * i < n (a has n_a rows). Returns 1 when an index lies outside a (out is then incomplete). */
int sc_gather_concat(const float *a, int64_t n_a, int64_t ca, const int64_t *index,
                     const float *b, int64_t cb, int64_t n, float *out, int n_threads) {
    const int64_t width = ca + cb;
    int bad = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(| : bad) \
    if (n * width > 32768)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t src = index ? index[i] : i;
        if (src < 0 || src >= n_a) {
            bad |= 1;
            continue;
        }
        memcpy(out + i * width, a + src * ca, sizeof(float) * ca);
        memcpy(out + i * width + ca, b + i * cb, sizeof(float) * cb);
    }
    return bad;
}

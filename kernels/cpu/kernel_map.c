/* Kernel-map building on CPU, in C with OpenMP: neighbour search over packed coordinate keys
 * (sorted merge or hash table), the submanifold mirror, the transposed neighbour table, and
 * the CSR pair lists derived from a neighbour table.
 *
 * Why C: in torch every offset of the search is a handful of whole-array passes (searchsorted,
 * index_select, compares, where) and every step allocates; a kernel map of a 100 k-voxel scan
 * then costs more than the convolutions that use it. Here one pass per chunk of output rows
 * answers every offset while the chunk's keys are in cache.
 *
 * Keys are the int64 packing of sparseconv.maps.keys: adding a packed offset to a key gives the
 * key of the shifted coordinate, and shifting keeps sorted keys sorted. Both searches fill
 * nbmap[row, col0 + k] (int32 input row, -1 where there is none) for the rows of the output set;
 * they give identical tables. Work is shared dynamically (chunks taken from a counter), so a
 * thread that the OS deschedules delays only its own chunk.
 *
 * Reference: sparseconv.maps.neighbors (the torch mappers; tests compare them).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <pthread.h>

#define CHUNK 2048 /* output rows per work item */

static inline int64_t lower_bound(const int64_t *keys, int64_t n, int64_t target) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Sorted merge. in_keys/out_keys sorted ascending; in_rows/out_rows map a sorted position to
 * its row (NULL: the identity). For each shift the shifted output stream is merged with the
 * input stream: one pointer per shift moves forward only.
 *
 * Shifts that differ in z only (same dx, dy: a column of the kernel, consecutive in offset
 * order) land within a few keys of each other, so one pointer serves a column: it merges
 * towards the column's first target and the column's other targets are found by a short walk
 * on from there (a 3x3x3 half kernel: 5 merged streams instead of 13). */
#define COLUMN_SPAN (1LL << 16) /* shifts closer than this share a column (same dx, dy) */

/* With mirror (a submanifold table of a symmetric kernel: in == out, ld == K == 2 * n_shift +
 * 1, col0 == 0) the search also completes the table: offset K-1-k is the negation of offset k,
 * so a hit i for row j at k is row i's neighbour j at K-1-k, written as it is found (each such
 * entry has exactly one writer), and the centre is the identity. One pass instead of a search
 * and a second pass over the half table (sc_mirror). */
static int search_sorted(const int64_t *in_keys, const int64_t *in_rows, int64_t n_in,
                         const int64_t *out_keys, const int64_t *out_rows, int64_t n_out,
                         const int64_t *shifts, int64_t n_shift, int32_t *nbmap, int64_t ld,
                         int64_t col0, int mirror, int n_threads) {
    const int64_t n_chunks = (n_out + CHUNK - 1) / CHUNK;
    /* columns: shifts [first[g], first[g + 1]) ascend by less than COLUMN_SPAN each */
    int64_t *first = malloc(sizeof(int64_t) * (n_shift + 1));
    if (!first) return 2;
    int64_t n_groups = 0;
    for (int64_t k = 0; k < n_shift; ++k)
        if (k == 0 || shifts[k] <= shifts[k - 1] || shifts[k] - shifts[k - 1] >= COLUMN_SPAN)
            first[n_groups++] = k;
    first[n_groups] = n_shift;
#pragma omp parallel num_threads(n_threads)
    {
        if (mirror) { /* the mirrored half is written by whichever chunk finds its entries */
#pragma omp for schedule(static)
            for (int64_t j = 0; j < n_out; ++j) {
                int32_t *row = nbmap + j * ld;
                for (int64_t k = n_shift + 1; k < ld; ++k) row[k] = -1;
                row[n_shift] = (int32_t)j;
            }
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t lo = c * CHUNK, hi = lo + CHUNK < n_out ? lo + CHUNK : n_out;
            for (int64_t g = 0; g < n_groups; ++g) {
                const int64_t k0 = first[g], k1 = first[g + 1];
                int64_t p = lower_bound(in_keys, n_in, out_keys[lo] + shifts[k0]);
                for (int64_t j = lo; j < hi; ++j) {
                    const int64_t key = out_keys[j];
                    while (p < n_in && in_keys[p] < key + shifts[k0]) ++p;
                    const int64_t r = out_rows ? out_rows[j] : j;
                    int32_t *row = nbmap + r * ld + col0;
                    int64_t q = p;
                    for (int64_t k = k0; k < k1; ++k) {
                        const int64_t target = key + shifts[k];
                        while (q < n_in && in_keys[q] < target) ++q;
                        int32_t hit = -1;
                        if (q < n_in && in_keys[q] == target)
                            hit = (int32_t)(in_rows ? in_rows[q] : q);
                        row[k] = hit;
                        if (mirror && hit >= 0) nbmap[hit * ld + (ld - 1 - k)] = (int32_t)r;
                    }
                }
            }
        }
    }
    free(first);
    return 0;
}

int sc_search_sorted(const int64_t *in_keys, const int64_t *in_rows, int64_t n_in,
                     const int64_t *out_keys, const int64_t *out_rows, int64_t n_out,
                     const int64_t *shifts, int64_t n_shift, int32_t *nbmap, int64_t ld,
                     int64_t col0, int n_threads) {
    return search_sorted(in_keys, in_rows, n_in, out_keys, out_rows, n_out, shifts, n_shift,
                         nbmap, ld, col0, 0, n_threads);
}

/* The whole submanifold table of a symmetric kernel of K = 2 * n_shift + 1 offsets from the
 * first n_shift shifts (keys sorted; rows: the row of each sorted position or NULL). */
int sc_search_sorted_mirrored(const int64_t *keys, const int64_t *rows, int64_t n,
                              const int64_t *shifts, int64_t n_shift, int32_t *nbmap,
                              int n_threads) {
    return search_sorted(keys, rows, n, keys, rows, n, shifts, n_shift, nbmap, 2 * n_shift + 1,
                         0, 1, n_threads);
}

static inline uint64_t mix(uint64_t k) { /* splitmix64 finaliser */
    k ^= k >> 31;
    k *= 0x7fb5d329728ea185ULL;
    k ^= k >> 27;
    k *= 0x81dadef4bc2dd44dULL;
    k ^= k >> 33;
    return k;
}

/* Open-addressing table (linear probing, capacity a power of two, empty slot = -1). Inserted
 * in parallel with compare-and-swap; returns 1 when a key occurs twice (the row stored for it
 * is then unspecified, and the caller refuses the coordinates). */
int sc_hash_build(const int64_t *keys, int64_t n, int64_t *table_keys, int32_t *table_vals,
                  int64_t capacity, int n_threads) {
    const uint64_t mask = (uint64_t)capacity - 1;
    int dup = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < capacity; ++i) table_keys[i] = -1;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, CHUNK) reduction(| : dup)
    for (int64_t i = 0; i < n; ++i) {
        uint64_t slot = mix((uint64_t)keys[i]) & mask;
        for (;;) {
            int64_t expected = -1;
            if (__atomic_compare_exchange_n(&table_keys[slot], &expected, keys[i], 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                table_vals[slot] = (int32_t)i;
                break;
            }
            if (expected == keys[i]) {
                dup = 1;
                break;
            }
            slot = (slot + 1) & mask;
        }
    }
    return dup;
}

/* Hash search: nbmap[row(j), col0 + k] = table[out_keys[j] + shifts[k]]. */
int sc_search_hash(const int64_t *table_keys, const int32_t *table_vals, int64_t capacity,
                   const int64_t *out_keys, int64_t n_out, const int64_t *shifts, int64_t n_shift,
                   int32_t *nbmap, int64_t ld, int64_t col0, int n_threads) {
    const uint64_t mask = (uint64_t)capacity - 1;
    const int64_t n_chunks = (n_out + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t lo = c * CHUNK, hi = lo + CHUNK < n_out ? lo + CHUNK : n_out;
        for (int64_t j = lo; j < hi; ++j)
            for (int64_t k = 0; k < n_shift; ++k) {
                const int64_t target = out_keys[j] + shifts[k];
                uint64_t slot = mix((uint64_t)target) & mask;
                int32_t hit = -1;
                for (;;) {
                    const int64_t key = table_keys[slot];
                    if (key == target) {
                        hit = table_vals[slot];
                        break;
                    }
                    if (key == -1) break;
                    slot = (slot + 1) & mask;
                }
                nbmap[j * ld + col0 + k] = hit;
            }
    }
    return 0;
}

/* Submanifold map of a symmetric kernel from its first K/2 columns: offset K-1-k is the
 * negation of offset k, so its pairs are those of k swapped; the centre is the identity. */
int sc_mirror(int32_t *nbmap, int64_t n, int64_t K, int n_threads) {
    const int64_t half = K / 2;
#pragma omp parallel num_threads(n_threads)
    {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < n; ++j) {
            for (int64_t k = half + 1; k < K; ++k) nbmap[j * K + k] = -1;
            nbmap[j * K + half] = (int32_t)j;
        }
#pragma omp for schedule(dynamic, CHUNK)
        for (int64_t j = 0; j < n; ++j)
            for (int64_t k = 0; k < half; ++k) {
                const int32_t i = nbmap[j * K + k];
                if (i >= 0) nbmap[(int64_t)i * K + (K - 1 - k)] = (int32_t)j;
            }
    }
    return 0;
}

/* tnb[i, k] = j where nb[j, k] = i (the transposed conv's table; every (i, k) at most once). */
int sc_transpose_nbmap(const int32_t *nb, int64_t n_out, int64_t K, int32_t *tnb, int64_t n_in,
                       int n_threads) {
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_in * K; ++i) tnb[i] = -1;
#pragma omp for schedule(dynamic, CHUNK)
        for (int64_t j = 0; j < n_out; ++j)
            for (int64_t k = 0; k < K; ++k) {
                const int32_t i = nb[j * K + k];
                if (i < 0) continue;
                if (i >= n_in) {
                    bad = 1;
                    continue;
                }
                tnb[(int64_t)i * K + k] = (int32_t)j;
            }
    }
    return bad;
}

/* CSR from a table, pass 1: counts[c * K + k] = pairs of offset k in row chunk c. */
int sc_csr_count(const int32_t *nb, int64_t n, int64_t K, int64_t *counts, int n_threads) {
    const int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
        int64_t *cnt = counts + c * K;
        for (int64_t k = 0; k < K; ++k) cnt[k] = 0;
        const int64_t hi = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        for (int64_t j = c * CHUNK; j < hi; ++j)
            for (int64_t k = 0; k < K; ++k) cnt[k] += nb[j * K + k] >= 0;
    }
    return 0;
}

/* Pass 2: starts[c * K + k] is where chunk c writes offset k's pairs; within an offset the pairs
 * come out in row order (the order every mapper produces). */
int sc_csr_fill(const int32_t *nb, int64_t n, int64_t K, const int64_t *starts, int64_t *in_idx,
                int64_t *out_idx, int n_threads) {
    const int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
        int64_t *pos = malloc(sizeof(int64_t) * K);
        /* every thread must reach the work-sharing loop, even one without its buffer */
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = 0; c < n_chunks; ++c) {
            if (!pos) {
                bad |= 2;
                continue;
            }
            memcpy(pos, starts + c * K, sizeof(int64_t) * K);
            const int64_t hi = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
            for (int64_t j = c * CHUNK; j < hi; ++j)
                for (int64_t k = 0; k < K; ++k) {
                    const int32_t i = nb[j * K + k];
                    if (i < 0) continue;
                    in_idx[pos[k]] = i;
                    out_idx[pos[k]] = j;
                    ++pos[k];
                }
        }
        free(pos);
    }
    return bad;
}

/* ---- Minkowski downsampling: out = floor(coord / s) * s on every spatial axis ------------ */

#define FIELD_BITS 16
#define FIELD_MASK ((1LL << FIELD_BITS) - 1)
#define BIAS (1LL << 15)

static inline int64_t floor_field(int64_t key, int shift, int64_t s) {
    const int64_t v = ((key >> shift) & FIELD_MASK) - BIAS;
    const int64_t q = v >= 0 ? v / s : -((-v + s - 1) / s);
    return (q * s + BIAS) << shift;
}

static inline int64_t floor_key(int64_t key, int64_t sx, int64_t sy, int64_t sz) {
    const int64_t batch = key & ~((1LL << (3 * FIELD_BITS)) - 1);
    return batch | floor_field(key, 2 * FIELD_BITS, sx) | floor_field(key, FIELD_BITS, sy) |
           floor_field(key, 0, sz);
}

static inline int is_pow2(int64_t s) { return s > 0 && (s & (s - 1)) == 0; }

/* For power-of-two strides the bias 2^15 is a multiple of s, so flooring a biased field is
 * clearing its low bits: one mask for the whole key instead of three divisions. */
static inline int64_t pow2_floor_mask(int64_t sx, int64_t sy, int64_t sz) {
    return ~(((sx - 1) << (2 * FIELD_BITS)) | ((sy - 1) << FIELD_BITS) | (sz - 1));
}

/* Stable sort of idx[0:n] by key[idx]: a natural merge sort. A run of inputs sharing
 * (batch, floor x) is the concatenation of one ascending stream per x value (sorted keys are
 * (y, z)-ordered within an x, and flooring is monotone), so it needs only log2(sx) merge
 * passes. bounds holds n + 1 entries. */
static void sort_by_key(const int64_t *key, int64_t *idx, int64_t *tmp, int64_t *bounds,
                        int64_t n) {
    int64_t runs = 0;
    bounds[runs++] = 0;
    for (int64_t i = 1; i < n; ++i)
        if (key[idx[i]] < key[idx[i - 1]]) bounds[runs++] = i;
    bounds[runs] = n;
    while (runs > 1) {
        int64_t merged = 0;
        for (int64_t r = 0; r < runs; r += 2) {
            const int64_t lo = bounds[r], mid = bounds[r + 1];
            const int64_t hi = r + 2 <= runs ? bounds[r + 2] : mid;
            int64_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi) tmp[o++] = key[idx[b]] < key[idx[a]] ? idx[b++] : idx[a++];
            while (a < mid) tmp[o++] = idx[a++];
            while (b < hi) tmp[o++] = idx[b++];
            memcpy(idx + lo, tmp + lo, sizeof(int64_t) * (hi - lo));
            bounds[merged++] = lo;
        }
        bounds[merged] = n;
        runs = merged;
    }
}

/* keys sorted ascending. floored[i] = key of floor(coord_i / s) * s; order = the permutation
 * that sorts floored (stable). Sorted keys are (batch, x)-major and flooring is monotone, so
 * inputs sharing (batch, floor x) are contiguous and only such a run needs sorting: the
 * runs are sorted in parallel. Returns 2 when memory ran out. */
int sc_downsample_sorted(const int64_t *keys, int64_t n, int64_t sx, int64_t sy, int64_t sz,
                         int64_t *floored, int64_t *order, int n_threads) {
    int64_t *starts = malloc(sizeof(int64_t) * (n + 1));
    if (!starts) return 2;
    const int pow2 = is_pow2(sx) && is_pow2(sy) && is_pow2(sz) && sx <= BIAS && sy <= BIAS &&
                     sz <= BIAS;
    const int64_t mask = pow2 ? pow2_floor_mask(sx, sy, sz) : 0;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        floored[i] = pow2 ? keys[i] & mask : floor_key(keys[i], sx, sy, sz);
        order[i] = i;
    }
    int64_t runs = 0;
    for (int64_t i = 0; i < n; ++i)
        if (i == 0 || (floored[i] >> (2 * FIELD_BITS)) != (floored[i - 1] >> (2 * FIELD_BITS)))
            starts[runs++] = i;
    starts[runs] = n;
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
        int64_t cap = 0;
        int64_t *tmp = NULL, *bounds = NULL;
#pragma omp for schedule(dynamic, 64)
        for (int64_t r = 0; r < runs; ++r) {
            const int64_t lo = starts[r], len = starts[r + 1] - lo;
            if (len > cap) {
                free(tmp);
                free(bounds);
                cap = len;
                tmp = malloc(sizeof(int64_t) * cap);
                bounds = malloc(sizeof(int64_t) * (cap + 1));
            }
            if (!tmp || !bounds) {
                bad |= 2;
                cap = 0;
                continue;
            }
            sort_by_key(floored, order + lo, tmp, bounds, len);
        }
        free(tmp);
        free(bounds);
    }
    free(starts);
    return bad;
}

/* The map of a conv whose kernel equals its stride (Minkowski mode, no dilation): input i
 * lies in exactly one output cell, out_row[i], at offset ((x - fx) / tx, ...) of a kx*ky*kz
 * kernel (t: the input's tensor stride). */
int sc_scatter_cells(const int64_t *keys, const int64_t *floored, const int64_t *out_row,
                     int64_t n, int64_t kx, int64_t ky, int64_t kz, int64_t tx, int64_t ty,
                     int64_t tz, int32_t *nbmap, int64_t n_out, int n_threads) {
    const int64_t K = kx * ky * kz;
    int bad = 0;
#pragma omp parallel num_threads(n_threads) reduction(| : bad)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n_out * K; ++i) nbmap[i] = -1;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            const int64_t d = keys[i] - floored[i]; /* every field holds 0 <= delta < k * t */
            const int64_t dx = ((d >> (2 * FIELD_BITS)) & FIELD_MASK) / tx;
            const int64_t dy = ((d >> FIELD_BITS) & FIELD_MASK) / ty, dz = (d & FIELD_MASK) / tz;
            if (dx >= kx || dy >= ky || dz >= kz || out_row[i] < 0 || out_row[i] >= n_out) {
                bad |= 1;
                continue;
            }
            nbmap[out_row[i] * K + (dx * ky + dy) * kz + dz] = (int32_t)i;
        }
    }
    return bad;
}

/* ---- packed coordinate keys (sparseconv.maps.keys): batch in bits 48+, then biased x, y, z
 * in 16 bits each. One pass instead of torch's five whole-array steps. ---------------------- */

int sc_pack_keys(const int32_t *coords, int64_t n, int64_t *keys, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        const int32_t *c = coords + 4 * i;
        keys[i] = ((int64_t)c[0] << (3 * FIELD_BITS)) | ((c[1] + BIAS) << (2 * FIELD_BITS)) |
                  ((c[2] + BIAS) << FIELD_BITS) | (c[3] + BIAS);
    }
    return 0;
}

int sc_unpack_keys(const int64_t *keys, int64_t n, int32_t *coords, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t k = keys[i];
        int32_t *c = coords + 4 * i;
        c[0] = (int32_t)(k >> (3 * FIELD_BITS));
        c[1] = (int32_t)(((k >> (2 * FIELD_BITS)) & FIELD_MASK) - BIAS);
        c[2] = (int32_t)(((k >> FIELD_BITS) & FIELD_MASK) - BIAS);
        c[3] = (int32_t)((k & FIELD_MASK) - BIAS);
    }
    return 0;
}

/* 1 when keys[0:n] ascend (non-strictly), else 0: one read, no temporary. */
int sc_is_sorted(const int64_t *keys, int64_t n) {
    int64_t descents = 0;
    for (int64_t i = 1; i < n; ++i) descents += keys[i] < keys[i - 1]; /* vectorised */
    return descents == 0;
}

/* After sc_downsample_sorted: out_keys[0 : *n_out] = the distinct floored keys in ascending
 * order, and out_row[i] = the output row input i falls in (one pass over the sorted order
 * instead of torch's select, compare, cumulative sum and scatter). Returns 0. */
int sc_downsample_outputs(const int64_t *floored, const int64_t *order, int64_t n,
                          int64_t *out_keys, int64_t *out_row, int64_t *n_out) {
    int64_t m = 0;
    for (int64_t p = 0; p < n; ++p) {
        const int64_t key = floored[order[p]];
        if (m == 0 || key != out_keys[m - 1]) out_keys[m++] = key;
        out_row[order[p]] = m - 1;
    }
    *n_out = m;
    return 0;
}

/* ---- cell-granular voxel pruning (sparseconv.nn.voxel_prune.VoxelPrune.kept_cells) -------
 * One pass per step instead of torch's dozen whole-array ones: a torch version of the four
 * pruning layers' picks took 4.4 ms of a 32 ms pruned width-0.25 MinkUNet call (ad hoc); this
 * pass takes 0.58 ms for the largest of them (38 k voxels).
 * Reference: VoxelPrune's torch path (tests compare the two). */

/* A float's bits as an unsigned key of the same order (negatives flipped, NaN above +inf). */
static inline uint32_t ordered_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}

/* The k-th largest (1 <= k <= m) of the keys u[0:m]: three histogram passes over 11, 11 and 10
 * bits, no comparisons to mispredict (a partition-based selection spent half the pick on
 * branch misses). */
static uint32_t kth_largest_key(const uint32_t *u, int64_t m, int64_t k) {
    static const int shift[3] = {21, 10, 0}, bits[3] = {11, 11, 10};
    uint32_t prefix = 0, prefix_mask = 0;
    int64_t count[2048];
    for (int pass = 0; pass < 3; ++pass) {
        const int64_t buckets = (int64_t)1 << bits[pass];
        memset(count, 0, sizeof(int64_t) * buckets);
        for (int64_t i = 0; i < m; ++i) {
            const int match = (u[i] & prefix_mask) == prefix;
            count[(u[i] >> shift[pass]) & (buckets - 1)] += match;
        }
        int64_t b = buckets - 1;
        while (count[b] < k) k -= count[b--]; /* from the largest bucket down */
        prefix |= (uint32_t)b << shift[pass];
        prefix_mask |= (uint32_t)(buckets - 1) << shift[pass];
    }
    return prefix;
}

/* Parity of floor(field / c): which half of its block a row's cell is on, along one axis.
 * log2c >= 0 (c a power of two, at most BIAS / 2): the biased field shifted, since BIAS / c is
 * even; else a division. */
static inline int cell_parity(int64_t key, int shift, int64_t c, int log2c) {
    if (log2c >= 0) return (int)((key >> (shift + log2c)) & 1);
    const int64_t v = ((key >> shift) & FIELD_MASK) - BIAS;
    const int64_t q = v >= 0 ? v / c : -((-v + c - 1) / c);
    return (int)(q & 1);
}

static inline int shift_of(int64_t c) {
    if (!is_pow2(c) || c > BIAS / 2) return -1;
    int k = 0;
    while (((int64_t)1 << k) < c) ++k;
    return k;
}

/* NEAREST[o]: the octants of a block by Hamming distance from octant o (ties: the lower one),
 * o itself first: the kept cell a dropped cell's rows take their features from. */
static const unsigned char NEAREST[8][8] = {
    {0, 1, 2, 4, 3, 5, 6, 7}, {1, 0, 3, 5, 2, 4, 7, 6}, {2, 0, 3, 6, 1, 4, 7, 5},
    {3, 1, 2, 7, 0, 5, 6, 4}, {4, 0, 5, 6, 1, 2, 7, 3}, {5, 1, 4, 7, 0, 3, 6, 2},
    {6, 2, 4, 7, 0, 3, 5, 1}, {7, 3, 5, 6, 1, 2, 4, 0},
};

/* NEAREST_KEPT[mask][o]: the first octant in NEAREST[o] that is in mask (the kept octants of
 * a block): one lookup per dropped cell instead of a walk with a branch per step. */
static unsigned char NEAREST_KEPT[256][8];
static pthread_once_t nearest_kept_once = PTHREAD_ONCE_INIT;

static void nearest_kept_init(void) {
    for (int mask = 1; mask < 256; ++mask)
        for (int o = 0; o < 8; ++o) {
            int j = 0;
            while (!(mask >> NEAREST[o][j] & 1)) ++j;
            NEAREST_KEPT[mask][o] = NEAREST[o][j];
        }
}

/* A row's score: scores[i], or with feats the L2 norm of its channels (the "magnitude" score,
 * read here instead of in a separate pass over the feature matrix). */
static inline float row_score(const float *scores, const float *feats, int64_t channels,
                              int64_t i) {
    if (!feats) return scores[i];
    const float *f = feats + i * channels;
    float acc = 0.0f;
    for (int64_t c = 0; c < channels; ++c) acc += f[c] * f[c];
    return sqrtf(acc);
}

/* Rows of the cells kept by a cell-granular voxel pruning.
 * keys[n]: the rows' packed keys, ascending; block_of[n]: each row's block (cells of size
 * (cx, cy, cz) twice over, from sc_downsample_*), numbered in key order, block_keys[nb] their
 * keys (every scan's blocks are one run). Scores: scores[n], or (scores NULL) the L2 norm of
 * feats[n, channels]. Cell = block * 8 + octant; a cell scores its best row. Kept: the best
 * cell of every block (ties: the lower cell), then per scan, with keep_ratio > 0, the best
 * other cells up to ceil(keep_ratio * cells) (ties: the lower cell), or, with
 * keep_ratio <= 0, every cell scoring >= threshold. Out: rows[0:*n_kept] ascending,
 * and source[n]: a kept row's position in rows, a dropped row's the position of the first
 * kept row of the nearest kept cell of its block (NEAREST). Returns 2 when memory ran out. */
int sc_select_cells(const int64_t *keys, const int64_t *block_of, const int64_t *block_keys,
                    int64_t n, int64_t nb, int64_t cx, int64_t cy, int64_t cz,
                    const float *scores, const float *feats, int64_t channels,
                    double keep_ratio, double threshold, int64_t *rows, int64_t *n_kept,
                    int64_t *source) {
    const int64_t nc = 8 * nb;
    uint32_t *cell_key = calloc(nc + 1, sizeof(uint32_t)); /* 0: empty, below every float */
    uint32_t *scratch = malloc(sizeof(uint32_t) * (nc + 1));
    int64_t *first = malloc(sizeof(int64_t) * (nc + 1));
    int32_t *cell_of = malloc(sizeof(int32_t) * (n + 1));
    unsigned char *keep = calloc(nc + 1, 1);
    if (!cell_key || !scratch || !first || !cell_of || !keep || nc > INT32_MAX) {
        free(cell_key), free(scratch), free(first), free(cell_of), free(keep);
        return 2;
    }
    const int lx = shift_of(cx), ly = shift_of(cy), lz = shift_of(cz);
    for (int64_t i = 0; i < n; ++i) {
        const int o = cell_parity(keys[i], 2 * FIELD_BITS, cx, lx) << 2 |
                      cell_parity(keys[i], FIELD_BITS, cy, ly) << 1 |
                      cell_parity(keys[i], 0, cz, lz);
        const int32_t c = (int32_t)(8 * block_of[i] + o);
        /* > 0 for every float but one NaN */
        const uint32_t u = ordered_bits(row_score(scores, feats, channels, i));
        cell_of[i] = c;
        cell_key[c] = u > cell_key[c] ? u : cell_key[c]; /* a cmov */
    }
    for (int64_t b = 0; b < nb; ++b) { /* the best cell of every block, ties to the lower */
        const uint32_t *k8 = cell_key + 8 * b;
        uint32_t top = k8[0];
        int best = 0;
        for (int o = 1; o < 8; ++o) {
            const int take = k8[o] > top;
            top = take ? k8[o] : top;
            best = take ? o : best;
        }
        keep[8 * b + best] = 1;
    }
    const uint32_t bar = ordered_bits((float)threshold);
    for (int64_t b0 = 0; b0 < nb;) { /* one scan's run of blocks */
        int64_t b1 = b0 + 1;
        while (b1 < nb && (block_keys[b1] >> (3 * FIELD_BITS)) == (block_keys[b0] >> (3 * FIELD_BITS)))
            ++b1;
        const int64_t c0 = 8 * b0, c1 = 8 * b1;
        if (keep_ratio <= 0) {
            for (int64_t c = c0; c < c1; ++c) keep[c] |= cell_key[c] && cell_key[c] >= bar;
        } else {
            int64_t cells = 0, forced = 0, m = 0;
            for (int64_t c = c0; c < c1; ++c) {
                const int occupied = cell_key[c] != 0;
                cells += occupied;
                forced += keep[c];
                scratch[m] = cell_key[c];
                m += occupied & !keep[c];
            }
            const double want = keep_ratio * (double)cells; /* ceil, as Python's math.ceil */
            int64_t need = (int64_t)want;
            need += (double)need < want;
            need -= forced;
            if (need > 0 && m > 0) {
                if (need > m) need = m;
                const uint32_t kth = kth_largest_key(scratch, m, need);
                for (int64_t c = c0; c < c1; ++c) { /* above the k-th: all of them */
                    const int take = !keep[c] & (cell_key[c] > kth);
                    keep[c] |= take << 1;
                    need -= take;
                }
                for (int64_t c = c0; c < c1 && need > 0; ++c) /* ties: the lower cells */
                    if (!keep[c] && cell_key[c] == kth) keep[c] = 2, --need;
            }
        }
        b0 = b1;
    }
    /* positions: every row's count of kept rows before it, and each kept cell's first */
    for (int64_t c = 0; c < nc; ++c) first[c] = INT64_MAX;
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t c = cell_of[i];
        const int64_t kept = keep[c] != 0;
        rows[k] = i;
        source[i] = k;
        first[c] = kept && k < first[c] ? k : first[c];
        k += kept;
    }
    pthread_once(&nearest_kept_once, nearest_kept_init);
    for (int64_t b = 0; b < nb; ++b) { /* a dropped cell: the nearest kept cell's first row */
        const unsigned char *k8 = keep + 8 * b;
        int mask = 0;
        for (int o = 0; o < 8; ++o) mask |= (k8[o] != 0) << o;
        int64_t *f8 = first + 8 * b;
        for (int o = 0; o < 8; ++o) f8[o] = f8[NEAREST_KEPT[mask][o]]; /* kept: itself */
    }
    for (int64_t i = 0; i < n; ++i) {
        const int32_t c = cell_of[i];
        source[i] = keep[c] ? source[i] : first[c];
    }
    *n_kept = k;
    free(cell_key), free(scratch), free(first), free(cell_of), free(keep);
    return 0;
}

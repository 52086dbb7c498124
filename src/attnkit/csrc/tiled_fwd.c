/* The tiled kernel's forward pass on x86-64 CPUs with AVX-512, in plain C with OpenMP (no Python or PyTorch
 * headers; called through ctypes). It computes in float32; bfloat16 and float16 inputs are widened as they
 * are read (keys when packed, values per chunk, queries once per work item).
 *
 * It runs the same schedule as the PyTorch path (attnkit/functional/kernels/tiled.py): for each query
 * block, the key chunks of the mask's block layout, with a bool "visible" tile for chunks that hold a
 * partial tile; for a mask constant on cell x cell squares (BigBird) C expands those tiles itself from
 * the mask's small cell grid. Work items are (query block, batch, k/v head), the longest first; each
 * processes the G query heads that share the k/v head in panels of up to R = 6 query rows:
 *
 *   for each chunk: keep the runs of 16-key vectors some row of the panel may see, S = q kᵀ · scale·log2 e
 *   (6 x 64 register tiles), hide masked entries (-inf), online softmax in base 2 (running max m and
 *   sum l per row), O = O · 2^(m_old - m_new) + P v (6 x 64 register tiles).
 *
 * Each chunk's keys are first packed into per-thread scratch as (16-key blocks, D, 16), each block
 * contiguous over d, so the q kᵀ loop streams memory from cache; the output rows hold the running
 * (unnormalized) accumulators between chunks. Rows that see nothing give out = 0 and lse = -inf, as
 * everywhere in attnkit. A NaN or inf stored where no query looks never reaches the output: masked scores are
 * replaced, not added to, and with `guard` (set when the inputs are not all finite) P v skips the keys no
 * row of a panel gives weight; at visible positions a NaN propagates, as in the PyTorch path. */

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

struct attnkit_fwd_args {
    const void *q;   /* (B, H, Nq, D), strides below (in elements), unit stride over D; element type: dtype */
    int64_t q_sb, q_sh, q_sn;
    const void *k;   /* (B, Hkv, Nk, D), strides below, unit stride over D */
    int64_t k_sb, k_sh, k_sn;
    const void *v;   /* (B, Hkv, Nk, Dv), strides below, unit stride over Dv */
    int64_t v_sb, v_sh, v_sn;
    float *out;      /* (B, H, Nq, Dv) contiguous */
    float *lse;      /* (B, H, Nq) contiguous, log2 units */
    int64_t B, H, Hkv, Nq, Nk, D, Dv;
    float scale;     /* softmax scale · log2 e */
    int64_t nrows;
    const int64_t *rows;       /* (nrows, 2): qs, qe of each query block */
    const int64_t *row_chunks; /* (nrows + 1): first chunk of each row */
    const int64_t *chunks;     /* (nchunks, 3): ks, ke, mask index (-1: all visible, -2: cell grid) */
    const int64_t *masks;      /* (nmasks, 5): address of a uint8 visibility tile (1 = may attend), strides b, h, g, row;
                                  its columns (unit stride) start at the chunk's ks */
    int64_t max_chunk;         /* widest chunk, keys */
    int64_t guard;             /* 1: k or v may hold NaN or inf where no query looks; skip keys whose p is 0 */
    const uint8_t *cells;      /* or NULL: visibility constant on cell x cell squares: row i sees key j iff
                                  cells[b, h, (i + cell_qoff) / cell, j / cell] (h over the H query heads) */
    int64_t cell_sb, cell_sh, cell_sq, cell, cell_qoff;
    const int64_t *order;      /* (nrows): the query blocks, most work first */
    int64_t dtype;             /* of q, k and v: 0 float32, 1 bfloat16, 2 float16 (converted to float32 as read) */
};

int attnkit_native_abi(void) { return 11; } /* bumped whenever the extension's functions or structs change */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

int attnkit_native_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define INLINE static inline __attribute__((always_inline))
#define R_MAX 6  /* query rows per panel */
#define NV 4     /* 16-wide vectors per register tile: 64 columns */

/* 2^x for x <= 128, 0 for x = -inf, NaN for NaN: x = n + f with |f| <= 1/2, 2^f by its Taylor series to
 * degree 7 (relative error < 1e-8), scaled by 2^n with vscalefps. */
INLINE TARGET __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-200.0f), x); /* maxps returns its second operand when one is NaN */
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_sub_ps(x, n), _mm512_set1_ps(0.69314718055994531f));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

INLINE __mmask16 lanes_below(int64_t n) { /* the first n of 16 lanes */
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* The lanes m of 16 consecutive elements of type dtype at element i of base, as float32 (0 elsewhere). */
INLINE TARGET __m512 load16(const void *base, int64_t i, __mmask16 m, int64_t dtype) {
    if (dtype == 0) return _mm512_maskz_loadu_ps(m, (const float *)base + i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    if (dtype == 1) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* Rows [r0, r1) of a (rows, n) matrix of type dtype (row stride sn elements) as float32, n apart, in dst. */
static TARGET void to_float(const void *src, int64_t sn, int64_t r0, int64_t r1, int64_t n, int64_t dtype, float *dst) {
    for (int64_t r = r0; r < r1; r++, dst += n)
        for (int64_t d = 0; d < n; d += 16) {
            const __mmask16 m = lanes_below(n - d);
            _mm512_mask_storeu_ps(dst + d, m, load16(src, r * sn + d, m, dtype));
        }
}

/* S[r, 0:16 nv] = scale · q_r · k over nv (<= NV) packed 16-key blocks starting at kp. */
INLINE TARGET void qk_tile(const int R, const int nv, const float *const *q, const float *kp, int64_t D,
                           float *S, int64_t s_stride, float scale) {
    __m512 acc[R_MAX][NV];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nv; j++) acc[r][j] = _mm512_setzero_ps();
    const int64_t block = D * 16;
    for (int64_t d = 0; d < D; d++) {
        __m512 kv[NV];
        for (int j = 0; j < nv; j++) kv[j] = _mm512_loadu_ps(kp + j * block + d * 16);
        for (int r = 0; r < R; r++) {
            __m512 qb = _mm512_set1_ps(q[r][d]);
            for (int j = 0; j < nv; j++) acc[r][j] = _mm512_fmadd_ps(qb, kv[j], acc[r][j]);
        }
    }
    __m512 sc = _mm512_set1_ps(scale);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nv; j++) _mm512_storeu_ps(S + r * s_stride + 16 * j, _mm512_mul_ps(acc[r][j], sc));
}

/* O[r, 0:16 nv] = O[r, 0:16 nv] · corr[r] + Σ_j P[r, j] v[j, 0:16 nv] over n keys (last vector masked).
 * With guard, keys no row of the panel gives weight are skipped, so a NaN stored there cannot enter. */
INLINE TARGET void pv_tile(const int R, const int nv, __mmask16 tail, const float *P, int64_t s_stride, int64_t n,
                           const float *v, int64_t v_sn, float *O, int64_t o_stride, const float *corr, int guard) {
    __m512 acc[R_MAX][NV];
    for (int r = 0; r < R; r++) {
        __m512 c = _mm512_set1_ps(corr[r]);
        for (int j = 0; j < nv; j++) {
            __mmask16 mk = j == nv - 1 ? tail : (__mmask16)0xFFFF;
            acc[r][j] = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, O + r * o_stride + 16 * j), c);
        }
    }
    for (int64_t t = 0; t < n; t++) {
        if (guard) {
            float weight = 0.0f; /* p >= 0: the sum is 0 only when every p is */
            for (int r = 0; r < R; r++) weight += P[r * s_stride + t];
            if (weight == 0.0f) continue;
        }
        __m512 vv[NV];
        const float *vr = v + t * v_sn;
        for (int j = 0; j < nv; j++) {
            __mmask16 mk = j == nv - 1 ? tail : (__mmask16)0xFFFF;
            vv[j] = _mm512_maskz_loadu_ps(mk, vr + 16 * j);
        }
        for (int r = 0; r < R; r++) {
            __m512 pb = _mm512_set1_ps(P[r * s_stride + t]);
            for (int j = 0; j < nv; j++) acc[r][j] = _mm512_fmadd_ps(pb, vv[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < nv; j++) {
            __mmask16 mk = j == nv - 1 ? tail : (__mmask16)0xFFFF;
            _mm512_mask_storeu_ps(O + r * o_stride + 16 * j, mk, acc[r][j]);
        }
}

/* Transposes a 16 x 16 block held as 16 rows: four stages, each swapping the off-diagonal sub-blocks of
 * one size (8, 4, 2, 1) with two-source permutes. */
INLINE TARGET void transpose16(__m512 r[16]) {
    for (int b = 8; b >= 1; b >>= 1) {
        int lo[16], hi[16];
        for (int j = 0; j < 16; j++) lo[j] = j & b ? 16 + j - b : j, hi[j] = j & b ? 16 + j : j + b;
        const __m512i il = _mm512_loadu_si512(lo), ih = _mm512_loadu_si512(hi);
        for (int i = 0; i < 16; i++)
            if (!(i & b)) {
                const __m512 x = r[i], y = r[i + b];
                r[i] = _mm512_permutex2var_ps(x, il, y), r[i + b] = _mm512_permutex2var_ps(x, ih, y);
            }
    }
}

/* Packs keys [k0, ke) (k0 a multiple of 16) as 16-key blocks (block, D, 16) of float32 for qk_tile; keys past
 * Nk are 0. */
static TARGET void pack_keys(const void *k, int64_t k_sn, int64_t Nk, int64_t D, int64_t k0, int64_t ke,
                             int64_t dtype, float *kp) {
    for (int64_t first = k0; first < ke; first += 16, kp += D * 16) {
        const int64_t keys = Nk - first < 16 ? Nk - first : 16;
        for (int64_t d0 = 0; d0 < D; d0 += 16) {
            const __mmask16 dm = lanes_below(D - d0);
            __m512 r[16];
            for (int t = 0; t < 16; t++)
                r[t] = t < keys ? load16(k, (first + t) * k_sn + d0, dm, dtype) : _mm512_setzero_ps();
            transpose16(r);
            for (int64_t d = d0; d < D && d < d0 + 16; d++) _mm512_storeu_ps(kp + d * 16, r[d - d0]);
        }
    }
}

struct panel {
    const float *q[R_MAX];     /* query rows */
    const uint8_t *vis[R_MAX]; /* visibility-tile rows of the current chunk, or NULL */
    float *m, *l;              /* running max and sum of the panel's rows */
    float corr[R_MAX];
    float *O;                  /* the rows' output: running accumulators, o_stride apart */
    int64_t o_stride;
    float *S;                  /* scratch scores, R_MAX x s_stride */
    int64_t s_stride;
    const float *kp;           /* the chunk's packed keys, from key ks & ~15 */
    int64_t *runs;             /* scratch: 2 x (s_stride / 16) run bounds */
};

/* The lanes of the 16 keys from absolute key col that row vis may see within the chunk [ks, ke) (vis
 * indexes keys from ks; NULL: the chunk is fully visible). */
INLINE TARGET __mmask16 lanes_seen(const uint8_t *vis, int64_t col, int64_t ks, int64_t ke) {
    const __mmask16 valid = lanes_below(ke - col) & (__mmask16)~lanes_below(ks - col);
    if (!vis) return valid;
    const int shift = col < ks ? (int)(ks - col) : 0; /* lanes before ks are not valid: not loaded */
    const __mmask16 load = (__mmask16)(valid >> shift);
    const __m128i vb = _mm_maskz_loadu_epi8(load, vis + (col + shift - ks));
    return (__mmask16)(_mm_mask_test_epi8_mask(load, vb, vb) << shift);
}

/* One panel of R rows against one key chunk [ks, ke); vis rows (or NULL) index columns from ks; v points at
 * key ks's value row, the next rows v_sn floats apart.
 * Only the 16-key vectors some row of the panel may see are computed: they form runs, and the scores,
 * the softmax and P v all go over the runs. */
INLINE TARGET void panel_chunk(const int R, struct panel *p, const struct attnkit_fwd_args *a, const float *v,
                               int64_t v_sn, int64_t ks, int64_t ke, int masked) {
    const int64_t a0 = ks & ~(int64_t)15; /* absolute key of S column 0, on a packed block */
    const int64_t nvec = (ke - a0 + 15) / 16;
    int64_t *runs = p->runs, nruns = 0; /* [start, end) vectors */
    if (masked) {
        for (int64_t j = 0; j < nvec; j++) {
            __mmask16 any = 0;
            for (int r = 0; r < R && !any; r++) any = lanes_seen(p->vis[r], a0 + 16 * j, ks, ke);
            if (!any) continue;
            if (nruns && runs[2 * nruns - 1] == j) runs[2 * nruns - 1] = j + 1;
            else runs[2 * nruns] = j, runs[2 * nruns + 1] = j + 1, nruns++;
        }
        if (!nruns) return;
    } else {
        runs[0] = 0, runs[1] = nvec, nruns = 1;
    }
    float *S = p->S;
    const int64_t ss = p->s_stride;
    /* S = scale q kᵀ over the runs */
    for (int64_t u = 0; u < nruns; u++)
        for (int64_t j = runs[2 * u]; j < runs[2 * u + 1]; j += NV) {
            const int nv = runs[2 * u + 1] - j >= NV ? NV : (int)(runs[2 * u + 1] - j);
            const float *kb = p->kp + j * a->D * 16;
            switch (nv) {
            case 4: qk_tile(R, 4, p->q, kb, a->D, S + 16 * j, ss, a->scale); break;
            case 3: qk_tile(R, 3, p->q, kb, a->D, S + 16 * j, ss, a->scale); break;
            case 2: qk_tile(R, 2, p->q, kb, a->D, S + 16 * j, ss, a->scale); break;
            default: qk_tile(R, 1, p->q, kb, a->D, S + 16 * j, ss, a->scale); break;
            }
        }
    /* -inf where not visible or outside [ks, ke); online softmax per row */
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int r = 0; r < R; r++) {
        float *s = S + r * ss;
        __m512 mx = ninf;
        for (int64_t u = 0; u < nruns; u++)
            for (int64_t j = runs[2 * u]; j < runs[2 * u + 1]; j++) {
                const __mmask16 seen = lanes_seen(masked ? p->vis[r] : NULL, a0 + 16 * j, ks, ke);
                const __m512 x = _mm512_mask_mov_ps(ninf, seen, _mm512_loadu_ps(s + 16 * j));
                _mm512_storeu_ps(s + 16 * j, x);
                mx = _mm512_max_ps(mx, x);
            }
        const float m_new = fmaxf(p->m[r], _mm512_reduce_max_ps(mx));
        const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* nothing visible yet: every p is 0 */
        const __m512 mb = _mm512_set1_ps(m_use);
        __m512 sum = _mm512_setzero_ps();
        for (int64_t u = 0; u < nruns; u++)
            for (int64_t j = runs[2 * u]; j < runs[2 * u + 1]; j++) {
                const __m512 e = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * j), mb));
                _mm512_storeu_ps(s + 16 * j, e);
                sum = _mm512_add_ps(sum, e);
            }
        p->corr[r] = exp2f(p->m[r] - m_use);
        p->l[r] = p->l[r] * p->corr[r] + _mm512_reduce_add_ps(sum);
        p->m[r] = m_new;
    }
    /* O = O · corr + P v, run by run over the keys in [ks, ke): keys outside are not read (they may
     * hold an unseen NaN; inside, guard skips them); the first run applies corr, the others find O
     * already rescaled */
    static const float ones[R_MAX] = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
    const int guard = masked && a->guard;
    for (int64_t u = 0; u < nruns; u++) {
        const int64_t first = a0 + 16 * runs[2 * u] > ks ? a0 + 16 * runs[2 * u] : ks;
        const int64_t end = a0 + 16 * runs[2 * u + 1] < ke ? a0 + 16 * runs[2 * u + 1] : ke;
        const float *vb = v + (first - ks) * v_sn, *P = S + (first - a0), *corr = u == 0 ? p->corr : ones;
        const int64_t nk = end - first;
        for (int64_t d = 0; d < a->Dv; d += 16 * NV) {
            const int64_t left = a->Dv - d, lv = (left + 15) / 16;
            const int nv = lv >= NV ? NV : (int)lv;
            const __mmask16 tail = lanes_below(left - 16 * (nv - 1));
            switch (nv) {
            case 4: pv_tile(R, 4, tail, P, ss, nk, vb + d, v_sn, p->O + d, p->o_stride, corr, guard); break;
            case 3: pv_tile(R, 3, tail, P, ss, nk, vb + d, v_sn, p->O + d, p->o_stride, corr, guard); break;
            case 2: pv_tile(R, 2, tail, P, ss, nk, vb + d, v_sn, p->O + d, p->o_stride, corr, guard); break;
            default: pv_tile(R, 1, tail, P, ss, nk, vb + d, v_sn, p->O + d, p->o_stride, corr, guard); break;
            }
        }
    }
}

struct scratch {
    float *S, *kp, *m, *l;
    float *qf, *vf;  /* bfloat16 / float16 inputs as float32: the item's query rows (G, bq, D), a chunk's values */
    int64_t *runs;
    int64_t s_stride;
    uint8_t *vis;  /* a visibility tile expanded from the cell grid: rows of s_stride bytes */
};

/* Writes the visibility of query rows [qs, qe) x keys [ks, ke) of batch b, query head h from the cell
 * grid into dst (rows ds bytes apart): one memset per cell a row crosses, a copy for the next rows of
 * the same cell. */
static void expand_cells(const struct attnkit_fwd_args *a, int64_t b, int64_t h, int64_t qs, int64_t qe,
                         int64_t ks, int64_t ke, uint8_t *dst, int64_t ds) {
    const uint8_t *grid = a->cells + b * a->cell_sb + h * a->cell_sh, *same = NULL;
    const int64_t c = a->cell;
    int64_t cell_row = -1;
    for (int64_t i = qs; i < qe; i++, dst += ds) {
        const int64_t qc = (i + a->cell_qoff) / c;
        if (qc == cell_row) {
            memcpy(dst, same, (size_t)(ke - ks));
            continue;
        }
        const uint8_t *g = grid + qc * a->cell_sq;
        for (int64_t j = ks; j < ke;) {
            const int64_t end = (j / c + 1) * c < ke ? (j / c + 1) * c : ke;
            memset(dst + (j - ks), g[j / c] != 0, (size_t)(end - j));
            j = end;
        }
        cell_row = qc, same = dst;
    }
}

/* One work item: query block `row` of batch b against k/v head hkv, for the G query heads sharing it. */
static TARGET void run_item(const struct attnkit_fwd_args *a, struct scratch *w, int64_t row, int64_t b, int64_t hkv) {
    const int64_t G = a->H / a->Hkv, qs = a->rows[2 * row], qe = a->rows[2 * row + 1], bq = qe - qs;
    const int64_t es = a->dtype ? 2 : 4; /* bytes per element */
    const void *k = (const char *)a->k + (b * a->k_sb + hkv * a->k_sh) * es;
    const void *v = (const char *)a->v + (b * a->v_sb + hkv * a->v_sh) * es;
    if (a->dtype) /* the query rows of the G heads, converted once for every chunk */
        for (int64_t g = 0; g < G; g++)
            to_float((const char *)a->q + (b * a->q_sb + (hkv * G + g) * a->q_sh) * es, a->q_sn, qs, qe, a->D,
                     a->dtype, w->qf + g * bq * a->D);
    float *out = a->out + ((b * a->H + hkv * G) * a->Nq + qs) * a->Dv; /* head g's rows: g * Nq * Dv further */
    for (int64_t i = 0; i < G * bq; i++) w->m[i] = -INFINITY, w->l[i] = 0.0f;
    for (int64_t g = 0; g < G; g++)
        for (int64_t i = 0; i < bq * a->Dv; i++) out[g * a->Nq * a->Dv + i] = 0.0f;
    struct panel p;
    p.S = w->S, p.s_stride = w->s_stride, p.kp = w->kp, p.o_stride = a->Dv, p.runs = w->runs;
    for (int64_t c = a->row_chunks[row]; c < a->row_chunks[row + 1]; c++) {
        const int64_t ks = a->chunks[3 * c], ke = a->chunks[3 * c + 1], mi = a->chunks[3 * c + 2];
        pack_keys(k, a->k_sn, a->Nk, a->D, ks & ~(int64_t)15, ke, a->dtype, w->kp);
        const float *v_ks = (const float *)v + ks * a->v_sn; /* value row ks; the next v_sn floats further */
        int64_t v_sn = a->v_sn;
        if (a->dtype) {
            to_float(v, a->v_sn, ks, ke, a->Dv, a->dtype, w->vf);
            v_ks = w->vf, v_sn = a->Dv;
        }
        /* the chunk's visibility rows: vis + g * vis_sg + (row - qs) * vis_sr */
        const uint8_t *vis = NULL;
        int64_t vis_sg = 0, vis_sr = w->s_stride;
        if (mi >= 0) {
            const int64_t *mk = a->masks + 5 * mi;
            vis = (const uint8_t *)(intptr_t)mk[0] + b * mk[1] + hkv * mk[2], vis_sg = mk[3], vis_sr = mk[4];
        } else if (mi == -2) {
            vis = w->vis;
        }
        for (int64_t g = 0; g < G; g++) {
            /* query row i (qs <= i < qe) of head g at q + (i - q_first) * q_sn */
            const float *q = (const float *)a->q + b * a->q_sb + (hkv * G + g) * a->q_sh;
            int64_t q_sn = a->q_sn, q_first = 0;
            if (a->dtype) q = w->qf + g * bq * a->D, q_sn = a->D, q_first = qs;
            if (mi == -2 && (g == 0 || a->cell_sh)) /* the grid's rows for this head */
                expand_cells(a, b, hkv * G + g, qs, qe, ks, ke, w->vis, w->s_stride);
            for (int64_t r0 = qs; r0 < qe; r0 += R_MAX) {
                const int R = qe - r0 >= R_MAX ? R_MAX : (int)(qe - r0);
                for (int r = 0; r < R; r++) {
                    p.q[r] = q + (r0 + r - q_first) * q_sn;
                    if (vis) p.vis[r] = vis + g * vis_sg + (r0 + r - qs) * vis_sr;
                }
                p.m = w->m + g * bq + (r0 - qs), p.l = w->l + g * bq + (r0 - qs);
                p.O = out + (g * a->Nq + r0 - qs) * a->Dv;
                switch (R) {
                case 6: panel_chunk(6, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                case 5: panel_chunk(5, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                case 4: panel_chunk(4, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                case 3: panel_chunk(3, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                case 2: panel_chunk(2, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                default: panel_chunk(1, &p, a, v_ks, v_sn, ks, ke, vis != NULL); break;
                }
            }
        }
    }
    for (int64_t g = 0; g < G; g++)
        for (int64_t i = 0; i < bq; i++) {
            float *o = out + (g * a->Nq + i) * a->Dv;
            const float l = w->l[g * bq + i], inv = l > 0.0f ? 1.0f / l : 0.0f;
            for (int64_t d = 0; d < a->Dv; d++) o[d] *= inv;
            a->lse[(b * a->H + hkv * G + g) * a->Nq + qs + i] = l > 0.0f ? w->m[g * bq + i] + log2f(l) : -INFINITY;
        }
}

/* Runs every work item on `threads` OpenMP threads, which share them through an atomic counter. The
 * OpenMP runtime is the one PyTorch loaded (the same libgomp.so.1), so these are PyTorch's own
 * intra-op threads: none is left spinning beside them (with a PyTorch built on another OpenMP runtime
 * the results are the same, the threads are not shared). 0 on success, 1 when no thread got scratch, 3 for an
 * unknown dtype. */
TARGET int attnkit_tiled_fwd(const struct attnkit_fwd_args *a, int threads) {
    if (a->dtype < 0 || a->dtype > 2) return 3; /* an element type this code does not read */
    int64_t bq_max = 1, next = 0;
    for (int64_t i = 0; i < a->nrows; i++)
        if (a->rows[2 * i + 1] - a->rows[2 * i] > bq_max) bq_max = a->rows[2 * i + 1] - a->rows[2 * i];
    const int64_t G = a->H / a->Hkv, blocks = (a->max_chunk + 30) / 16 + 1, items = a->nrows * a->B * a->Hkv;
    const int64_t s_stride = (a->max_chunk + 47) / 16 * 16 + 16; /* room for the 16-aligned start; not a power of two */
    const size_t converted = a->dtype ? (size_t)(G * bq_max * a->D + a->max_chunk * a->Dv) : 0,
                 floats = converted +
                          (size_t)(R_MAX * s_stride + blocks * a->D * 16 + 2 * G * bq_max + 4 * (s_stride / 16)),
                 vis_bytes = a->cells ? (size_t)(bq_max * s_stride) : 0;
    int working = 0;
#pragma omp parallel num_threads(threads)
    {
        struct scratch w;
        w.s_stride = s_stride;
        w.S = aligned_alloc(64, (floats * sizeof(float) + vis_bytes + 63) / 64 * 64);
        if (w.S) { /* a thread without scratch leaves the items to the others */
            __atomic_add_fetch(&working, 1, __ATOMIC_RELAXED);
            w.kp = w.S + R_MAX * w.s_stride, w.m = w.kp + blocks * a->D * 16, w.l = w.m + G * bq_max;
            w.runs = (int64_t *)(w.l + G * bq_max); /* 2 x (s_stride / 16) int64, in 4 x (s_stride / 16) floats */
            w.qf = (float *)(w.runs + 2 * (s_stride / 16)), w.vf = w.qf + G * bq_max * a->D;
            w.vis = (uint8_t *)(w.S + floats);
            for (;;) {
                const int64_t item = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
                if (item >= items) break;
                /* the longest items first, so that no thread is left with a long one at the end */
                run_item(a, &w, a->order[item / (a->B * a->Hkv)], item % (a->B * a->Hkv) / a->Hkv, item % a->Hkv);
            }
            free(w.S);
        }
    }
    return working == 0 && items > 0;
}

#else /* not x86-64 with GCC or Clang: the PyTorch path serves */

int attnkit_native_supported(void) { return 0; }
int attnkit_tiled_fwd(const struct attnkit_fwd_args *a, int threads) { (void)a, (void)threads; return 2; }

#endif

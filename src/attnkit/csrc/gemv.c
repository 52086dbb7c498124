/* y = x Wᵀ for the few rows of a decoding step, on x86-64 CPUs with AVX-512 (plain C with OpenMP, called through
 * ctypes like tiled_fwd.c).
 *
 * Decoding multiplies one to eight rows by every weight matrix of the model, so a step is bound by reading the
 * weights from memory once; PyTorch's CPU matmuls stream them at about half the memory bandwidth for so few
 * rows (benchmarks/RESULTS.md). Here each thread takes a contiguous band of W's rows (output features) and
 * reads it once, front to back: R rows at a time, 16 input features per vector, every row of x against each
 * loaded vector (x stays in L1), so W is read exactly once however many rows x has. R x B accumulators stay in
 * registers (R = 8 for one row of x, fewer for more); the tail of the input features is a masked load.
 *
 * W is float32 or bfloat16 (widened as read: bf16 is the top half of a float32); x and y are float32. The sums
 * run in float32 with fused multiply-adds, 16 lanes, then a lane reduction: the rounding differs from a BLAS in
 * the last bits only. */

#include <math.h>
#include <stdint.h>

#include "elements.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <omp.h>

#define GEMV_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define GEMV_INLINE static inline __attribute__((always_inline))

/* Ask for W's cache line ``offset`` (two panels ahead) to be on its way into L2 while this panel is computed:
 * with several rows of x the multiply-adds take about as long as the memory traffic, and without this hint the
 * two did not overlap. Into L2, not L1: eight rows of x fill most of L1 (18 KB for SmolLM2's 576 features) and are
 * read for every vector of W. Eight rows through SmolLM2's feed-forward weights: 27.7 -> 18.5 ms a step with an
 * L1 hint, 20.2 -> 17.4 ms from L1 to L2; one row: unchanged to slightly faster. A hint past the end of W is
 * harmless (prefetches do not fault). */
GEMV_INLINE GEMV_TARGET void prefetch_w(const void *w, int64_t offset, int bf16) {
    _mm_prefetch((const char *)w + offset * (bf16 ? 2 : 4), _MM_HINT_T1);
}

/* y[b, o .. o+R) for b < B: rows o .. o+R of W against the B rows of x. */
#define PANEL(R, B)                                                                                              \
    GEMV_INLINE GEMV_TARGET void panel_##R##_##B(const void *w, int bf16, int64_t in, const float *x,           \
                                                 int64_t x_stride, float *y, int64_t y_stride, int64_t o) {      \
        __m512 acc[R][B];                                                                                         \
        for (int r = 0; r < R; r++)                                                                               \
            for (int b = 0; b < B; b++) acc[r][b] = _mm512_setzero_ps();                                         \
        for (int64_t i = 0; i < in; i += 16) {                                                                    \
            const __mmask16 m = lanes(in - i);                                                                    \
            __m512 xv[B];                                                                                         \
            for (int b = 0; b < B; b++) xv[b] = _mm512_maskz_loadu_ps(m, x + b * x_stride + i);                  \
            for (int r = 0; r < R; r++) {                                                                         \
                prefetch_w(w, (o + 2 * R + r) * in + i, bf16);                                                       \
                const __m512 wv = load_widened(w, (o + r) * in + i, bf16, m);                                    \
                for (int b = 0; b < B; b++) acc[r][b] = _mm512_fmadd_ps(wv, xv[b], acc[r][b]);                  \
            }                                                                                                     \
        }                                                                                                         \
        for (int r = 0; r < R; r++)                                                                               \
            for (int b = 0; b < B; b++) y[b * y_stride + o + r] = _mm512_reduce_add_ps(acc[r][b]);              \
    }

PANEL(8, 1) PANEL(1, 1)
PANEL(4, 2) PANEL(1, 2)
PANEL(4, 3) PANEL(1, 3)
PANEL(4, 4) PANEL(1, 4)
PANEL(2, 5) PANEL(1, 5)
PANEL(2, 6) PANEL(1, 6)
PANEL(2, 7) PANEL(1, 7)
PANEL(2, 8) PANEL(1, 8)

/* Rows lo .. hi of W (a band): panels of R rows, then single rows. */
#define BAND(R, B)                                                                                               \
    for (o = lo; o + R <= hi; o += R) panel_##R##_##B(w, bf16, in, x, x_stride, y, y_stride, o);                \
    for (; o < hi; o++) panel_1_##B(w, bf16, in, x, x_stride, y, y_stride, o);                                  \
    break;

GEMV_INLINE GEMV_TARGET void band(const void *w, int bf16, int64_t in, const float *x, int64_t x_stride, int64_t B,
                                  float *y, int64_t y_stride, int64_t lo, int64_t hi) {
    int64_t o;
    switch (B) {
        case 1: BAND(8, 1)
        case 2: BAND(4, 2)
        case 3: BAND(4, 3)
        case 4: BAND(4, 4)
        case 5: BAND(2, 5)
        case 6: BAND(2, 6)
        case 7: BAND(2, 7)
        default: BAND(2, 8)
    }
}

/* y (B, sum of outs) = x (B, in) · [W_0; W_1; ...]ᵀ for ``count`` weights W_m (outs[m], in), each contiguous, side by
 * side in y's columns (a layer's q, k and v projections in one call: one fork of the threads instead of three).
 * Element type of every W: bf16 = 0 float32, 1 bfloat16; rows of x and y ``x_stride`` / ``y_stride`` floats apart;
 * 1 <= B <= 8. Each thread takes a band of every W (bands of multiples of 8 rows). Returns 0, or 1 for a B it does
 * not take. */
GEMV_TARGET int attnkit_gemv_many(int64_t count, const void *const *ws, const int64_t *outs, int bf16, int64_t in,
                                  const float *x, int64_t x_stride, int64_t B, float *y, int64_t y_stride,
                                  int threads) {
    if (B < 1 || B > 8) return 1;
    int64_t total = 0;
    for (int64_t m = 0; m < count; m++) total += outs[m];
    if (threads < 1 || total < 64 * threads) threads = 1; /* a small product is not worth waking the other threads */
#pragma omp parallel num_threads(threads)
    {
        const int64_t n = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t column = 0;
        for (int64_t m = 0; m < count; m++) {
            const int64_t out = outs[m];
            const int64_t lo = out * t / n / 8 * 8, hi = t == n - 1 ? out : out * (t + 1) / n / 8 * 8;
            band(ws[m], bf16, in, x, x_stride, B, y + column, y_stride, lo, hi);
            column += out;
        }
    }
    return 0;
}

/* One weight: y (B, out) = x (B, in) · W (out, in)ᵀ (see attnkit_gemv_many). */
GEMV_TARGET int attnkit_gemv(const void *w, int bf16, int64_t out, int64_t in, const float *x, int64_t x_stride,
                             int64_t B, float *y, int64_t y_stride, int threads) {
    return attnkit_gemv_many(1, &w, &out, bf16, in, x, x_stride, B, y, y_stride, threads);
}

/* The second half of a pre-norm decoder layer for a decoding step's B <= 8 rows, in one call (attnkit.nn.Block's
 * decoding path): o = attn · Woᵀ (+ bo); with a sandwich norm o = norm(o); x += o; h = norm(x); gated (wg given):
 * g, u = h · [Wg; Wu]ᵀ (+ biases), a = act(g) · u; plain (wg NULL): a = act(h · Wuᵀ + bu); d = a · Wdᵀ (+ bd); with
 * a sandwich norm d = norm(d); x += d. The norms are RMSNorm, v · rsqrt(mean(v²) + eps) · w, or · (1 + w) with
 * unit_offset (Gemma); or, with layer_norm, h's norm is a LayerNorm with bias norm_b (NULL: none) and there are no
 * sandwich norms. act: 0 SiLU, 1 GELU (erf), 2 GELU (tanh), 3 ReLU.
 * Weights, biases and norm weights contiguous, all float32 (bf16 = 0) or all bfloat16 (bf16 = 1); x updated in
 * place, float32. Float32 arithmetic throughout: equal to PyTorch's float32 ops up to rounding. */
struct attnkit_ffn_args {
    int64_t B, dim, hd, hidden;
    const float *attn; int64_t attn_stride;        /* (B, hd): the attention's merged heads */
    const void *wo, *bo;                           /* (dim, hd), (dim) or NULL */
    const void *post_attn_w;                       /* (dim) or NULL: Gemma's norm of the attention branch */
    float *x; int64_t x_stride;                    /* (B, dim), the residual stream */
    const void *norm_w;                            /* (dim): the feed-forward's norm */
    float eps; int64_t unit_offset;
    const void *wg, *wu, *wd, *bg, *bu, *bd;       /* (hidden, dim), (hidden, dim), (dim, hidden); biases or NULL */
    int64_t act;
    const void *post_ffn_w;                        /* (dim) or NULL */
    float *scratch;                                /* B * (3 * dim + 2 * hidden) floats */
    int64_t bf16;                                  /* the weights' type: 0 float32, 1 bfloat16 */
    const void *norm_b; int64_t layer_norm;        /* h's norm: 0 RMSNorm, 1 LayerNorm with bias norm_b or NULL */
};

/* out (B, dim) = RMSNorm of B rows of v (``v_stride`` floats apart) with weight w (Gemma's 1 + w when
 * ``unit_offset``): a decoding step's attention norm in one call, as the fused block computes its feed-forward's. */
int attnkit_rms_rows(const float *v, int64_t v_stride, float *out, int64_t B, int64_t dim, const float *w, float eps,
                     int64_t unit_offset) {
    rms_rows_typed(v, v_stride, out, B, dim, w, 0, eps, unit_offset);
    return 0;
}

static float activate(float g, int64_t act) {
    if (act == 0) return g / (1.0f + expf(-g));
    if (act == 1) return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
    if (act == 3) return g > 0.0f ? g : 0.0f;
    return 0.5f * g * (1.0f + tanhf(0.79788456080286536f * (g + 0.044715f * g * g * g)));
}

GEMV_TARGET int attnkit_decode_ffn(const struct attnkit_ffn_args *a, int threads) {
    const int64_t B = a->B, dim = a->dim, hidden = a->hidden, bf16 = a->bf16;
    if (B < 1 || B > 8 || a->act < 0 || a->act > 3 || bf16 < 0 || bf16 > 1 || a->layer_norm < 0 || a->layer_norm > 1
        || (a->layer_norm && (a->post_attn_w || a->post_ffn_w)))
        return 1;
    float *o = a->scratch, *h = o + B * dim, *gu = h + B * dim, *d = gu + B * 2 * hidden;
    /* o = attn · Woᵀ */
    if (attnkit_gemv(a->wo, (int)bf16, dim, a->hd, a->attn, a->attn_stride, B, o, dim, threads)) return 1;
    for (int64_t b = 0; b < B; b++) add_bias(o + b * dim, a->bo, dim, bf16);
    if (a->post_attn_w) rms_rows_typed(o, dim, o, B, dim, a->post_attn_w, bf16, a->eps, a->unit_offset);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < dim; i++) a->x[b * a->x_stride + i] += o[b * dim + i];
    /* h = norm(x); [g | u] = h · [Wg; Wu]ᵀ */
    norm_rows_typed(a->x, a->x_stride, h, B, dim, a->norm_w, a->norm_b, bf16, a->eps, a->unit_offset,
                    a->layer_norm);
    if (a->wg) { /* gated: [g | u] side by side in each row of gu, then act(g) · u into g */
        const void *gate_up[2] = {a->wg, a->wu};
        const int64_t outs[2] = {hidden, hidden};
        if (attnkit_gemv_many(2, gate_up, outs, (int)bf16, dim, h, dim, B, gu, 2 * hidden, threads)) return 1;
        for (int64_t b = 0; b < B; b++) {
            float *g = gu + b * 2 * hidden, *u = g + hidden;
            add_bias(g, a->bg, hidden, bf16);
            add_bias(u, a->bu, hidden, bf16);
            for (int64_t i = 0; i < hidden; i++) g[i] = activate(g[i], a->act) * u[i];
        }
    } else { /* plain: act(u) in the first half of each row of gu */
        if (attnkit_gemv(a->wu, (int)bf16, hidden, dim, h, dim, B, gu, 2 * hidden, threads)) return 1;
        for (int64_t b = 0; b < B; b++) {
            float *u = gu + b * 2 * hidden;
            add_bias(u, a->bu, hidden, bf16);
            for (int64_t i = 0; i < hidden; i++) u[i] = activate(u[i], a->act);
        }
    }
    /* d = a · Wdᵀ */
    if (attnkit_gemv(a->wd, (int)bf16, dim, hidden, gu, 2 * hidden, B, d, dim, threads)) return 1;
    for (int64_t b = 0; b < B; b++) add_bias(d + b * dim, a->bd, dim, bf16);
    if (a->post_ffn_w) rms_rows_typed(d, dim, d, B, dim, a->post_ffn_w, bf16, a->eps, a->unit_offset);
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < dim; i++) a->x[b * a->x_stride + i] += d[b * dim + i];
    return 0;
}

#else

int attnkit_gemv_many(int64_t count, const void *const *ws, const int64_t *outs, int bf16, int64_t in,
                      const float *x, int64_t x_stride, int64_t B, float *y, int64_t y_stride, int threads) {
    (void)count, (void)ws, (void)outs, (void)bf16, (void)in, (void)x, (void)x_stride, (void)B, (void)y;
    (void)y_stride, (void)threads;
    return 2; /* not built for this CPU: the caller uses PyTorch */
}

int attnkit_decode_ffn(const void *a, int threads) {
    (void)a, (void)threads;
    return 2; /* not built for this CPU: the caller uses PyTorch */
}

int attnkit_gemv(const void *w, int bf16, int64_t out, int64_t in, const float *x, int64_t x_stride, int64_t B,
                 float *y, int64_t y_stride, int threads) {
    (void)w, (void)bf16, (void)out, (void)in, (void)x, (void)x_stride, (void)B, (void)y, (void)y_stride;
    (void)threads;
    return 2; /* not built for this CPU: the caller uses PyTorch */
}

int attnkit_rms_rows(const float *v, int64_t v_stride, float *out, int64_t B, int64_t dim, const float *w, float eps,
                     int64_t unit_offset) {
    (void)v, (void)v_stride, (void)out, (void)B, (void)dim, (void)w, (void)eps, (void)unit_offset;
    return 2; /* not built for this CPU: the caller uses PyTorch */
}

#endif

/* A whole pre-norm decoder layer for one decoding step (one new token in each of B <= 8 rows), in one call from
 * Python (attnkit.nn.Block's decoding path): a step of a small model like SmolLM2-135M runs 30 narrow layers, and
 * in PyTorch each layer's norm, projections, rotary rotation, cache write and attention cost dozens of operator
 * calls, more time than reading the layer's weights. Here the first half of the layer:
 *
 *   h = norm(x) (RMSNorm or LayerNorm);  q, k, v = h · [Wq; Wk; Wv]ᵀ (+ biases);
 *   q, k = per-head RMSNorm (Qwen 3, Gemma 3; optional);
 *   q, k = RoPE(q, k) (the first R features of each head; cos and signed sin rows given per batch row);
 *   k, v -> the KV cache's slot ``pos``;  o = softmax(softcap(scale · q · Kᵀ) over the visible keys) · V
 *
 * and then the second half, attnkit_decode_ffn (gemv.c), on o. GQA: query head h reads key/value head
 * h / (H / Hkv). The visible keys of row b are the slots 0 .. pos, less those its key padding marks (0 = padding)
 * and those more than ``window`` slots back; a row with none visible gets zeros (as attnkit.attention gives a
 * fully-masked row). Keys and values behind the mask are never read, so a NaN there does not leak.
 *
 * Weights (projections, biases, norms) and the KV cache are all float32 or all bfloat16 (``bf16``: widened as read,
 * the new keys and values rounded to nearest-even as stored); x, cos, sin and the outputs are float32. Float32
 * arithmetic throughout: the same as PyTorch's float32 path up to rounding (exp, tanh and the sums' order); for a
 * bfloat16 model, more exact than PyTorch's bfloat16 path, which rounds every intermediate to bfloat16. */

#include <math.h>
#include <stdint.h>

#include "elements.h"

struct attnkit_ffn_args; /* gemv.c */

struct attnkit_attn_args {
    int64_t B, dim, H, Hkv, D, R;                  /* R: rotary features of a head (even, <= D; 0 = no RoPE) */
    const float *x; int64_t x_stride;              /* (B, dim): the residual stream, read */
    const void *norm_w; float eps; int64_t unit_offset;
    const void *wq, *wk, *wv, *bq, *bk, *bv;       /* (H·D, dim), (Hkv·D, dim) x2, contiguous; biases or NULL */
    const void *q_norm_w, *k_norm_w;               /* (D) each, or NULL: RMSNorm of each head */
    float qk_eps; int64_t qk_unit_offset;
    const float *cos, *sin;                        /* (B, R) each; sin signed: [-sin(first half), sin(second)] */
    void *k_cache, *v_cache;                       /* (B, Hkv, capacity, D), contiguous */
    int64_t capacity, pos;                         /* the slot this token is written to; pos < capacity */
    const uint8_t *key_padding; int64_t kp_stride; /* (B, >= pos + 1): 1 = token, 0 = padding; or NULL */
    int64_t window;                                /* keys at most this many slots back; < 0: no window */
    float scale, softcap;                          /* softcap <= 0: none */
    float *out;                                    /* (B, H·D): the heads' outputs side by side */
    float *scratch;                                /* B·dim + B·(H + 2·Hkv)·D + B·H·(pos + 1) floats */
    int64_t bf16;                                  /* weights and caches: 0 float32, 1 bfloat16 */
    const void *norm_b; int64_t layer_norm;        /* the norm: 0 RMSNorm, 1 LayerNorm with bias norm_b or NULL */
};

int attnkit_gemv_many(int64_t count, const void *const *ws, const int64_t *outs, int bf16, int64_t in,
                      const float *x, int64_t x_stride, int64_t B, float *y, int64_t y_stride, int threads);
int attnkit_decode_ffn(const struct attnkit_ffn_args *a, int threads);

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <omp.h>

#define DECODE_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

/* q · the cache's n elements from ``offset`` on */
DECODE_TARGET static float dot(const float *q, const void *cache, int64_t offset, int64_t n, int64_t bf16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = lanes(n - i);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), load_widened(cache, offset + i, bf16, m), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

/* y[i] = x[i]·cos[i] + x[i ± R/2]·sin[i] for i < R, in place: rotate_half(x)·sin with the sign carried by sin */
static void rotate(float *x, const float *cos, const float *sin, int64_t R) {
    const int64_t half = R / 2;
    for (int64_t i = 0; i < half; i++) {
        const float lo = x[i], hi = x[i + half];
        x[i] = lo * cos[i] + hi * sin[i];
        x[i + half] = hi * cos[i + half] + lo * sin[i + half];
    }
}

/* Head h of row b: o = softmax over the visible keys, times V (see the top of the file). */
DECODE_TARGET static void attend(const struct attnkit_attn_args *a, const float *q, int64_t b, int64_t h,
                                 float *scores, float *o) {
    const int64_t D = a->D, n = a->pos + 1, g = h / (a->H / a->Hkv), bf16 = a->bf16;
    const int64_t base = (b * a->Hkv + g) * a->capacity * D; /* this row's and head's first key and value */
    const uint8_t *pad = a->key_padding ? a->key_padding + b * a->kp_stride : NULL;
    const int64_t first = a->window >= 0 && a->pos - a->window > 0 ? a->pos - a->window : 0;
    float top = -INFINITY;
    for (int64_t j = first; j < n; j++) {
        if (pad && !pad[j]) continue;
        float s = dot(q, a->k_cache, base + j * D, D, bf16) * a->scale;
        if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
        scores[j] = s;
        if (s > top) top = s;
    }
    for (int64_t i = 0; i < D; i += 16) _mm512_mask_storeu_ps(o + i, lanes(D - i), _mm512_setzero_ps());
    if (top == -INFINITY) return; /* nothing visible: zeros */
    float total = 0.0f;
    for (int64_t j = first; j < n; j++) {
        if (pad && !pad[j]) continue;
        const float p = expf(scores[j] - top);
        total += p;
        const __m512 pv = _mm512_set1_ps(p);
        for (int64_t i = 0; i < D; i += 16) {
            const __mmask16 m = lanes(D - i);
            _mm512_mask_storeu_ps(o + i, m, _mm512_fmadd_ps(pv, load_widened(a->v_cache, base + j * D + i, bf16, m),
                                                            _mm512_maskz_loadu_ps(m, o + i)));
        }
    }
    const __m512 inv = _mm512_set1_ps(1.0f / total);
    for (int64_t i = 0; i < D; i += 16) {
        const __mmask16 m = lanes(D - i);
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(inv, _mm512_maskz_loadu_ps(m, o + i)));
    }
}

/* The layer's first half into a->out; 1 for sizes it does not take. */
DECODE_TARGET static int decode_attention(const struct attnkit_attn_args *a, int threads) {
    const int64_t B = a->B, H = a->H, Hkv = a->Hkv, D = a->D, n = a->pos + 1;
    if (B < 1 || B > 8 || Hkv < 1 || H % Hkv || a->R < 0 || a->R > D || a->R % 2 || a->pos < 0
        || a->pos >= a->capacity || a->bf16 < 0 || a->bf16 > 1 || a->layer_norm < 0 || a->layer_norm > 1)
        return 1;
    const int64_t bf16 = a->bf16;
    const int64_t width = (H + 2 * Hkv) * D; /* q, k, v of one row side by side */
    float *h = a->scratch, *qkv = h + B * a->dim, *scores = qkv + B * width;
    norm_rows_typed(a->x, a->x_stride, h, B, a->dim, a->norm_w, a->norm_b, bf16, a->eps, a->unit_offset,
                    a->layer_norm);
    const void *ws[3] = {a->wq, a->wk, a->wv};
    const int64_t outs[3] = {H * D, Hkv * D, Hkv * D};
    if (attnkit_gemv_many(3, ws, outs, (int)bf16, a->dim, h, a->dim, B, qkv, width, threads)) return 1;
    for (int64_t b = 0; b < B; b++) {
        float *row = qkv + b * width;
        add_bias(row, a->bq, H * D, bf16);
        add_bias(row + H * D, a->bk, Hkv * D, bf16);
        add_bias(row + (H + Hkv) * D, a->bv, Hkv * D, bf16);
        /* each head of q and k: norm, rotation; then k and v to the cache */
        for (int64_t head = 0; head < H + Hkv; head++) {
            float *v = row + head * D;
            const void *w = head < H ? a->q_norm_w : a->k_norm_w;
            if (w) rms_rows_typed(v, D, v, 1, D, w, bf16, a->qk_eps, a->qk_unit_offset);
            if (a->R) rotate(v, a->cos + b * a->R, a->sin + b * a->R, a->R);
        }
        for (int64_t g = 0; g < Hkv; g++) {
            const int64_t slot = ((b * Hkv + g) * a->capacity + a->pos) * D;
            for (int64_t i = 0; i < D; i++) {
                store_element(a->k_cache, slot + i, row[(H + g) * D + i], bf16);
                store_element(a->v_cache, slot + i, row[(H + Hkv + g) * D + i], bf16);
            }
        }
    }
    /* every (row, head) on its own: split over the threads when there is enough work to repay waking them */
    const int64_t tasks = B * H;
    const int use = threads > 1 && tasks * n * D >= 1 << 16 ? threads : 1;
#pragma omp parallel for num_threads(use) schedule(static)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t b = t / H, head = t % H;
        attend(a, qkv + b * width + head * D, b, head, scores + t * n, a->out + t * D);
    }
    return 0;
}

/* The whole layer: attention into a->out, then ffn (whose ``attn`` is a->out) adds both branches to x in place;
 * ffn NULL: the attention half only. 0 on success, 1 for sizes it does not take (nothing written to x then; the
 * cache slot ``pos`` may have been). */
DECODE_TARGET int attnkit_decode_layer(const struct attnkit_attn_args *a, const struct attnkit_ffn_args *ffn,
                                       int threads) {
    if (decode_attention(a, threads)) return 1;
    return ffn ? attnkit_decode_ffn(ffn, threads) : 0;
}

#else

int attnkit_decode_layer(const struct attnkit_attn_args *a, const struct attnkit_ffn_args *ffn, int threads) {
    (void)a, (void)ffn, (void)threads;
    return 2; /* not built for this CPU: the caller uses PyTorch */
}

#endif

/* The element types the decoding calls read weights and KV caches in: float32, or bfloat16 (the top half of a
 * float32: widened exactly, rounded to nearest-even when stored, as PyTorch converts). Activations stay float32. */

#ifndef ATTNKIT_ELEMENTS_H
#define ATTNKIT_ELEMENTS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* p[i] as a float32; bf16: p holds bfloat16 */
static inline float element(const void *p, int64_t i, int64_t bf16) {
    if (!bf16) return ((const float *)p)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)p)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* p[i] = v, rounded to bfloat16 as PyTorch rounds (to nearest, ties to even; inf stays inf, a float beyond the
 * largest bfloat16 becomes inf) when bf16; a NaN stays a NaN (the quiet NaN 0x7FC0; PyTorch's bit pattern may
 * differ) */
static inline void store_element(void *p, int64_t i, float v, int64_t bf16) {
    if (!bf16) {
        ((float *)p)[i] = v;
        return;
    }
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u)
        bits = 0x7FC00000u;
    else
        bits += 0x7FFFu + ((bits >> 16) & 1u);
    ((uint16_t *)p)[i] = (uint16_t)(bits >> 16);
}

/* out (B, dim) = RMSNorm of B rows of v (``v_stride`` floats apart; out may be v) with weight w of type bf16:
 * v · rsqrt(mean(v²) + eps) · w, or · (1 + w) with unit_offset (Gemma) */
static inline void rms_rows_typed(const float *v, int64_t v_stride, float *out, int64_t B, int64_t dim,
                                  const void *w, int64_t bf16, float eps, int64_t unit_offset) {
    for (int64_t b = 0; b < B; b++) {
        const float *row = v + b * v_stride;
        float sum = 0.0f;
        for (int64_t i = 0; i < dim; i++) sum += row[i] * row[i];
        const float scale = 1.0f / sqrtf(sum / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) {
            const float wi = element(w, i, bf16);
            out[b * dim + i] = unit_offset ? (row[i] * scale) * (1.0f + wi) : wi * (row[i] * scale);
        }
    }
}

/* out (B, dim) = LayerNorm of B rows of v (``v_stride`` floats apart; out may be v) with weight w and bias b (NULL:
 * none), both of type bf16: (v - mean(v)) · rsqrt(mean((v - mean(v))²) + eps) · w + b */
static inline void layer_norm_rows_typed(const float *v, int64_t v_stride, float *out, int64_t B, int64_t dim,
                                         const void *w, const void *b, int64_t bf16, float eps) {
    for (int64_t r = 0; r < B; r++) {
        const float *row = v + r * v_stride;
        float sum = 0.0f;
        for (int64_t i = 0; i < dim; i++) sum += row[i];
        const float mean = sum / (float)dim;
        float squares = 0.0f;
        for (int64_t i = 0; i < dim; i++) squares += (row[i] - mean) * (row[i] - mean);
        const float scale = 1.0f / sqrtf(squares / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) {
            const float normed = (row[i] - mean) * scale * element(w, i, bf16);
            out[r * dim + i] = b ? normed + element(b, i, bf16) : normed;
        }
    }
}

/* A decoding layer's norm: kind 0 RMSNorm (unit_offset: Gemma's 1 + w; b unused), 1 LayerNorm (with bias b or
 * NULL) */
static inline void norm_rows_typed(const float *v, int64_t v_stride, float *out, int64_t B, int64_t dim,
                                   const void *w, const void *b, int64_t bf16, float eps, int64_t unit_offset,
                                   int64_t kind) {
    if (kind == 1)
        layer_norm_rows_typed(v, v_stride, out, B, dim, w, b, bf16, eps);
    else
        rms_rows_typed(v, v_stride, out, B, dim, w, bf16, eps, unit_offset);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define ELEMENTS_SIMD static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

/* the first ``n`` of 16 lanes (all of them for n >= 16; n > 0) */
ELEMENTS_SIMD __mmask16 lanes(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* the lanes m of 16 consecutive elements of p from element ``offset`` on, widened to float32 (0 elsewhere); bf16:
 * p holds bfloat16 */
ELEMENTS_SIMD __m512 load_widened(const void *p, int64_t offset, int64_t bf16, __mmask16 m) {
    if (bf16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + offset);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)p + offset);
}
#endif

/* v[i] += bias[i] for i < n; bias NULL: nothing */
static inline void add_bias(float *v, const void *bias, int64_t n, int64_t bf16) {
    if (bias)
        for (int64_t i = 0; i < n; i++) v[i] += element(bias, i, bf16);
}

#endif

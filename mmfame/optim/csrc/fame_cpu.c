/* FAME's single-pass CPU kernel: each element of p, g, m1, m2, m3, v is read once and p, m1, m2,
 * m3, v written once (44 B/param in fp32). Plain C99 on raw pointers, called through ctypes (which
 * releases the GIL, so Python threads split the work); compiled on first use by
 * mmfame/optim/_cpu_kernel.py. Math and order follow _single_tensor_fame in fame.py. */
#include <math.h>
#include <stdint.h>

/* Flags are compile-time constants at every call (see DISPATCH below), so each of the 32
 * specialisations is a branch-free loop the compiler vectorises. */
static inline __attribute__((always_inline)) void fame_range(float *restrict p, const float *restrict g, float *restrict m1,
                              float *restrict m2, float *restrict m3, float *restrict v,
                              float *restrict v2, float *restrict v3, float *restrict vmax,
                              int64_t begin, int64_t end, float step_size, float bc2_sqrt,
                              float lr, float beta1, float beta2, float beta3, float beta4,
                              float eps, float wd, float sq_beta2, float sq_beta3,
                              const int has_wd, const int decoupled, const int amsgrad,
                              const int maximize, const int full) {
    const float decay = 1.0f - lr * wd;
#pragma GCC ivdep
    for (int64_t i = begin; i < end; ++i) {
        float grad = g[i];
        if (maximize) grad = -grad;
        float param = p[i];
        if (has_wd) {
            if (decoupled) param *= decay;
            else grad += wd * param;
        }
        const float a = beta1 * m1[i] + (1.0f - beta1) * grad;
        const float b = beta3 * m2[i] + (1.0f - beta3) * a;
        const float c = beta4 * m3[i] + (1.0f - beta4) * b;
        const float s = beta2 * v[i] + (1.0f - beta2) * grad * grad;
        float vhat = s;
        if (full) {
            const float s2 = sq_beta2 * v2[i] + (1.0f - sq_beta2) * s;
            const float s3 = sq_beta3 * v3[i] + (1.0f - sq_beta3) * s2;
            v2[i] = s2;
            v3[i] = s3;
            const float tema_v = 3.0f * s - 3.0f * s2 + s3;
            /* clamp_min(0) as torch does it: NaN stays NaN (fmaxf would make it 0, and GCC
             * does not vectorise fmaxf) */
            vhat = tema_v < 0.0f ? 0.0f : tema_v;
            if (s == INFINITY)  /* an overflowed v stays inf: inf - inf would make it NaN */
                vhat = s;
        }
        if (amsgrad) {  /* torch.maximum: NaN in either operand gives NaN */
            vhat = (vmax[i] > vhat || vmax[i] != vmax[i]) ? vmax[i] : vhat;
            vmax[i] = vhat;
        }
        m1[i] = a;
        m2[i] = b;
        m3[i] = c;
        v[i] = s;
        p[i] = param - step_size * ((3.0f * a - 3.0f * b + c) / (sqrtf(vhat) / bc2_sqrt + eps));
    }
}

#define ARGS p[t], g[t], m1[t], m2[t], m3[t], v[t], full ? v2[t] : 0, full ? v3[t] : 0, \
    amsgrad ? vmax[t] : 0, begin[k], end[k], step_size, bc2_sqrt, (float)lr, (float)beta1, \
    (float)beta2, (float)beta3, (float)beta4, (float)eps, (float)wd, (float)sq_beta2, \
    (float)sq_beta3
#define CASE(code) \
    case code: \
        fame_range(ARGS, (code) & 1, ((code) >> 1) & 1, ((code) >> 2) & 1, ((code) >> 3) & 1, \
                   ((code) >> 4) & 1); \
        break;

/* Update elements [begin[k], end[k]) of tensor index[k], for k < n. Unused pointer tables
 * (v2/v3 without full FAME, vmax without amsgrad) may be NULL. */
void fame_cpu_f32(int64_t n, const int64_t *index, const int64_t *begin, const int64_t *end,
                  float *const *p, const float *const *g, float *const *m1, float *const *m2,
                  float *const *m3, float *const *v, float *const *v2, float *const *v3,
                  float *const *vmax, const double *step, double lr, double beta1, double beta2,
                  double beta3, double beta4, double eps, double wd, double sq_beta2,
                  double sq_beta3, int decoupled, int amsgrad, int maximize, int full) {
    const int code = (wd != 0.0) | (decoupled != 0) << 1 | (amsgrad != 0) << 2 |
                     (maximize != 0) << 3 | (full != 0) << 4;
    for (int64_t k = 0; k < n; ++k) {
        const int64_t t = index[k];
        const float step_size = (float)(lr / (1.0 - pow(beta1, step[t])));
        const float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, step[t]));
        switch (code) {
            CASE(0) CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7)
            CASE(8) CASE(9) CASE(10) CASE(11) CASE(12) CASE(13) CASE(14) CASE(15)
            CASE(16) CASE(17) CASE(18) CASE(19) CASE(20) CASE(21) CASE(22) CASE(23)
            CASE(24) CASE(25) CASE(26) CASE(27) CASE(28) CASE(29) CASE(30) CASE(31)
        }
    }
}

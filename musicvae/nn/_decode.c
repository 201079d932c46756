/*
 * The free-running sampling loop of the categorical LSTM decoders, in native code (musicvae.nn.sampler).
 *
 * One call decodes a whole batch for every step: no Python, no tensor op and no allocation per step.
 * It computes what sampler._decode computes with torch ops (the same weight layout: gate rows
 * i, f, o, g; layer 0's token share gathered from rows of its kernel, its z/control share precomputed;
 * layer k >= 1 reading [h_{k-1} at t || h_k at t - 1]) and samples as torch.multinomial does
 * (argmax of softmax(logits / temperature) / q with the Exp(1) draws q that the caller drew from the
 * torch generator in the reference order), so a seed gives the reference tokens; float rounding
 * differs in the last bits (own exp/tanh, another summation order), which changes a token only at an
 * exact tie, as with the torch loop.
 *
 * Rows of a batch never interact, so the batch is cut into contiguous slices, one per thread, and each
 * thread runs every step of its slice with no synchronisation at all. Matrix products read weights
 * packed once per decoder (sampler._pack): panels of 16 output columns, K rows each, zero-padded, so
 * that a 6 x 16 register tile streams one panel with unit stride. The kernels use AVX2 and FMA and are
 * compiled for them alone (target pragma); `available()` tells the caller whether this CPU has them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PANEL 16
#define TILE_ROWS 6 /* 12 accumulators + 2 panel rows + 1 broadcast of the 16 ymm registers */
#define MAX_LAYERS 8
#define MAX_PARTS 8
#define MAX_THREADS 64

typedef struct {
    const float *w; /* panels [ceil(n / 16)][k][16] */
    int k, n;
} Packed;

typedef struct {
    int layers, units, steps, batch, out_dim, parts;
    int part_dim[MAX_PARTS], part_off[MAX_PARTS];
    const float *tokens;  /* layer 0's token rows [out_dim][4 units] */
    const float *aux;     /* layer 0's z/control share with biases: [batch][4 units] per step */
    Py_ssize_t aux_step;  /* floats from one step's aux to the next (0: the same at every step) */
    const float *first;   /* the step-0 token's share [batch][4 units], or NULL (a zero token) */
    const float *h0, *c0; /* initial state [layers][batch][units] */
    Packed kernel[MAX_LAYERS]; /* layer 0: recurrent (k = units); layer k >= 1: [W_ih || W_hh] (k = 2 units) */
    const float *bias[MAX_LAYERS]; /* layers k >= 1 (layer 0's bias is inside aux) */
    Packed out;
    const float *out_bias;
    const float *noise; /* Exp(1) draws [steps][parts: [batch][part_dim]], or NULL: argmax */
    float temperature;
    float *logits;   /* out: [steps][batch][out_dim] */
    int64_t *chosen; /* out: [steps][parts][batch] */
} Job;

#if (defined(__x86_64__) || defined(__i386__)) && !defined(MUSICVAE_NO_KERNELS)
#define HAVE_KERNELS 1 /* elsewhere the module builds, `available()` is False and the caller uses torch */
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

/* exp(x) for float lanes: Cody-Waite range reduction and a degree-6 polynomial (~1 ulp); 0 below -87. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 valid = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), valid);
}

static inline __m256 sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* tanh: an odd polynomial below |x| = 0.625 (no cancellation near 0), else 1 - 2 / (exp(2|x|) + 1). */
static inline __m256 tanh8(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 a = _mm256_andnot_ps(sign, x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    __m256 e = exp8(_mm256_min_ps(_mm256_add_ps(a, a), _mm256_set1_ps(88.0f)));
    __m256 large = _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
    large = _mm256_or_ps(large, _mm256_and_ps(x, sign));
    return _mm256_blendv_ps(large, small, _mm256_cmp_ps(a, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
}

static inline float sigmoid1(float x) { return 1.0f / (1.0f + expf(-x)); }

/* c[0 : cols] += (lo || hi). */
static inline void add_row(float *c, int cols, __m256 lo, __m256 hi) {
    if (cols == PANEL) {
        _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), lo));
        _mm256_storeu_ps(c + 8, _mm256_add_ps(_mm256_loadu_ps(c + 8), hi));
        return;
    }
    float t[PANEL];
    _mm256_storeu_ps(t, lo);
    _mm256_storeu_ps(t + 8, hi);
    for (int j = 0; j < cols; j++) c[j] += t[j];
}

/* C[R x 16 (cols valid)] += A[R x K] (row stride lda) @ one panel p [K x 16], R <= 6 a constant once
 * inlined. Named accumulators, not an array: gcc keeps an array of vectors in memory and stores it on
 * every iteration, which halves the speed. */
static inline __attribute__((always_inline)) void tile(const int R, int K, const float *A, Py_ssize_t lda,
                                                       const float *p, float *C, Py_ssize_t ldc, int cols) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 l0 = zero, h0 = zero, l1 = zero, h1 = zero, l2 = zero, h2 = zero;
    __m256 l3 = zero, h3 = zero, l4 = zero, h4 = zero, l5 = zero, h5 = zero;
    for (int k = 0; k < K; k++) {
        const float *a = A + k;
        __m256 b0 = _mm256_loadu_ps(p + PANEL * k), b1 = _mm256_loadu_ps(p + PANEL * k + 8), x;
        x = _mm256_broadcast_ss(a);
        l0 = _mm256_fmadd_ps(x, b0, l0);
        h0 = _mm256_fmadd_ps(x, b1, h0);
        if (R > 1) {
            x = _mm256_broadcast_ss(a + lda);
            l1 = _mm256_fmadd_ps(x, b0, l1);
            h1 = _mm256_fmadd_ps(x, b1, h1);
        }
        if (R > 2) {
            x = _mm256_broadcast_ss(a + 2 * lda);
            l2 = _mm256_fmadd_ps(x, b0, l2);
            h2 = _mm256_fmadd_ps(x, b1, h2);
        }
        if (R > 3) {
            x = _mm256_broadcast_ss(a + 3 * lda);
            l3 = _mm256_fmadd_ps(x, b0, l3);
            h3 = _mm256_fmadd_ps(x, b1, h3);
        }
        if (R > 4) {
            x = _mm256_broadcast_ss(a + 4 * lda);
            l4 = _mm256_fmadd_ps(x, b0, l4);
            h4 = _mm256_fmadd_ps(x, b1, h4);
        }
        if (R > 5) {
            x = _mm256_broadcast_ss(a + 5 * lda);
            l5 = _mm256_fmadd_ps(x, b0, l5);
            h5 = _mm256_fmadd_ps(x, b1, h5);
        }
    }
    add_row(C, cols, l0, h0);
    if (R > 1) add_row(C + ldc, cols, l1, h1);
    if (R > 2) add_row(C + 2 * ldc, cols, l2, h2);
    if (R > 3) add_row(C + 3 * ldc, cols, l3, h3);
    if (R > 4) add_row(C + 4 * ldc, cols, l4, h4);
    if (R > 5) add_row(C + 5 * ldc, cols, l5, h5);
}

/* One row (a matrix-vector product): four independent k streams, so the FMA latency does not bound it. */
static void tile1(int K, const float *A, const float *p, float *c, int cols) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 l0 = zero, h0 = zero, l1 = zero, h1 = zero, l2 = zero, h2 = zero, l3 = zero, h3 = zero;
    int k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *q = p + PANEL * k;
        __m256 x0 = _mm256_broadcast_ss(A + k), x1 = _mm256_broadcast_ss(A + k + 1);
        __m256 x2 = _mm256_broadcast_ss(A + k + 2), x3 = _mm256_broadcast_ss(A + k + 3);
        l0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q), l0);
        h0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q + 8), h0);
        l1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q + 16), l1);
        h1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q + 24), h1);
        l2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q + 32), l2);
        h2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q + 40), h2);
        l3 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q + 48), l3);
        h3 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q + 56), h3);
    }
    for (; k < K; k++) {
        __m256 x = _mm256_broadcast_ss(A + k);
        l0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p + PANEL * k), l0);
        h0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(p + PANEL * k + 8), h0);
    }
    add_row(c, cols, _mm256_add_ps(_mm256_add_ps(l0, l1), _mm256_add_ps(l2, l3)),
            _mm256_add_ps(_mm256_add_ps(h0, h1), _mm256_add_ps(h2, h3)));
}

/* C[M x W.n] (row stride ldc) += A[M x W.k] (row stride lda) @ W. */
static void gemm(int M, const float *A, Py_ssize_t lda, const Packed *W, float *C, Py_ssize_t ldc) {
    int panels = (W->n + PANEL - 1) / PANEL;
    for (int j = 0; j < panels; j++) {
        const float *p = W->w + (size_t)j * W->k * PANEL;
        int cols = W->n - PANEL * j < PANEL ? W->n - PANEL * j : PANEL;
        float *c = C + PANEL * j;
        int i = 0;
        for (; i + TILE_ROWS <= M; i += TILE_ROWS) tile(TILE_ROWS, W->k, A + i * lda, lda, p, c + i * ldc, ldc, cols);
        switch (M - i) {
        case 5: tile(5, W->k, A + i * lda, lda, p, c + i * ldc, ldc, cols); break;
        case 4: tile(4, W->k, A + i * lda, lda, p, c + i * ldc, ldc, cols); break;
        case 3: tile(3, W->k, A + i * lda, lda, p, c + i * ldc, ldc, cols); break;
        case 2: tile(2, W->k, A + i * lda, lda, p, c + i * ldc, ldc, cols); break;
        case 1: tile1(W->k, A + i * lda, p, c + i * ldc, cols); break;
        default: break;
        }
    }
}

/* The LSTM cell on one row's pre-activations g = (i, f, o, g'): c <- sigmoid(f) c + sigmoid(i) tanh(g');
 * h <- sigmoid(o) tanh(c), written to h_a and (when not NULL) h_b. */
static void cell(int n, float *g, float *c, float *h_a, float *h_b) {
    int j = 0;
    for (; j + 8 <= 3 * n; j += 8) _mm256_storeu_ps(g + j, sigmoid8(_mm256_loadu_ps(g + j)));
    for (; j < 3 * n; j++) g[j] = sigmoid1(g[j]);
    float *gi = g, *gf = g + n, *go = g + 2 * n, *gg = g + 3 * n;
    for (j = 0; j + 8 <= n; j += 8) {
        __m256 cc = _mm256_fmadd_ps(_mm256_loadu_ps(gi + j), tanh8(_mm256_loadu_ps(gg + j)),
                                    _mm256_mul_ps(_mm256_loadu_ps(gf + j), _mm256_loadu_ps(c + j)));
        _mm256_storeu_ps(c + j, cc);
        __m256 h = _mm256_mul_ps(_mm256_loadu_ps(go + j), tanh8(cc));
        _mm256_storeu_ps(h_a + j, h);
        if (h_b) _mm256_storeu_ps(h_b + j, h);
    }
    for (; j < n; j++) {
        float cc = gf[j] * c[j] + gi[j] * tanhf(gg[j]);
        c[j] = cc;
        float h = go[j] * tanhf(cc);
        h_a[j] = h;
        if (h_b) h_b[j] = h;
    }
}

/* The first index of the largest value (torch.argmax's tie rule). */
static int64_t argmax(const float *v, int d) {
    int64_t best = 0;
    for (int j = 1; j < d; j++)
        if (v[j] > v[best]) best = j;
    return best;
}

/* torch.multinomial(softmax(l / temperature), 1) given its Exp(1) draws q: argmax of p / q. */
static int64_t draw(const float *l, int d, const float *q, float temperature, float *scratch) {
    float m = -INFINITY;
    for (int j = 0; j < d; j++) {
        scratch[j] = l[j] / temperature;
        if (scratch[j] > m) m = scratch[j];
    }
    float total = 0.0f;
    int j = 0;
    __m256 vm = _mm256_set1_ps(m);
    for (; j + 8 <= d; j += 8) _mm256_storeu_ps(scratch + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(scratch + j), vm)));
    for (; j < d; j++) scratch[j] = expf(scratch[j] - m);
    for (j = 0; j < d; j++) total += scratch[j];
    for (j = 0; j < d; j++) scratch[j] = scratch[j] / total / q[j];
    return argmax(scratch, d);
}

/* Every step for rows [row0, row0 + rows) of the batch. Returns 0, or -1 when out of memory. */
static int run_slice(const Job *J, int row0, int rows) {
    const int n = J->units, G = 4 * n, L = J->layers, B = J->batch, D = J->out_dim;
    int widest = 0;
    for (int p = 0; p < J->parts; p++) widest = J->part_dim[p] > widest ? J->part_dim[p] : widest;
    size_t floats = (size_t)rows * (n + 2 * n * (L - 1) + G + L * n) + widest;
    float *mem = malloc(floats * sizeof(float));
    if (mem == NULL) return -1;
    float *x[MAX_LAYERS]; /* x[0]: h_0 [rows][n]; x[k]: [h_{k-1} || h_k] [rows][2n] */
    float *at = mem;
    x[0] = at;
    at += (size_t)rows * n;
    for (int k = 1; k < L; k++, at += (size_t)rows * 2 * n) x[k] = at;
    float *gates = at;
    at += (size_t)rows * G;
    float *c = at;
    at += (size_t)rows * L * n;
    float *scratch = at;

    for (int b = 0; b < rows; b++) {
        memcpy(x[0] + (size_t)b * n, J->h0 + (size_t)(row0 + b) * n, n * sizeof(float));
        for (int k = 1; k < L; k++)
            memcpy(x[k] + (size_t)b * 2 * n + n, J->h0 + ((size_t)k * B + row0 + b) * n, n * sizeof(float));
        for (int k = 0; k < L; k++)
            memcpy(c + ((size_t)k * rows + b) * n, J->c0 + ((size_t)k * B + row0 + b) * n, n * sizeof(float));
    }
    const int dsum = J->part_off[J->parts - 1] + J->part_dim[J->parts - 1];
    for (int t = 0; t < J->steps; t++) {
        const float *aux = J->aux + t * J->aux_step + (size_t)row0 * G;
        for (int b = 0; b < rows; b++) {
            float *g = gates + (size_t)b * G;
            memcpy(g, aux + (size_t)b * G, G * sizeof(float));
            if (t == 0) {
                if (J->first)
                    for (int j = 0; j < G; j++) g[j] += J->first[(size_t)(row0 + b) * G + j];
                continue;
            }
            for (int p = 0; p < J->parts; p++) {
                int64_t token = J->chosen[((size_t)(t - 1) * J->parts + p) * B + row0 + b];
                const float *row = J->tokens + (size_t)(J->part_off[p] + token) * G;
                for (int j = 0; j < G; j++) g[j] += row[j];
            }
        }
        gemm(rows, x[0], n, &J->kernel[0], gates, G);
        for (int b = 0; b < rows; b++)
            cell(n, gates + (size_t)b * G, c + (size_t)b * n, x[0] + (size_t)b * n,
                 L > 1 ? x[1] + (size_t)b * 2 * n : NULL);
        for (int k = 1; k < L; k++) {
            for (int b = 0; b < rows; b++) memcpy(gates + (size_t)b * G, J->bias[k], G * sizeof(float));
            gemm(rows, x[k], 2 * n, &J->kernel[k], gates, G);
            for (int b = 0; b < rows; b++)
                cell(n, gates + (size_t)b * G, c + ((size_t)k * rows + b) * n, x[k] + (size_t)b * 2 * n + n,
                     k + 1 < L ? x[k + 1] + (size_t)b * 2 * n : NULL);
        }
        float *logits = J->logits + ((size_t)t * B + row0) * D;
        for (int b = 0; b < rows; b++) memcpy(logits + (size_t)b * D, J->out_bias, D * sizeof(float));
        if (L == 1)
            gemm(rows, x[0], n, &J->out, logits, D);
        else
            gemm(rows, x[L - 1] + n, 2 * n, &J->out, logits, D);
        for (int b = 0; b < rows; b++) {
            for (int p = 0; p < J->parts; p++) {
                const float *l = logits + (size_t)b * D + J->part_off[p];
                int64_t token;
                if (J->noise == NULL) {
                    token = argmax(l, J->part_dim[p]);
                } else {
                    const float *q = J->noise + (size_t)t * B * dsum + (size_t)B * J->part_off[p] +
                                     (size_t)(row0 + b) * J->part_dim[p];
                    token = draw(l, J->part_dim[p], q, J->temperature, scratch);
                }
                J->chosen[((size_t)t * J->parts + p) * B + row0 + b] = token;
            }
        }
    }
    free(mem);
    return 0;
}

#pragma GCC pop_options

typedef struct {
    const Job *job;
    int row0, rows, status;
} Slice;

static void *slice_main(void *arg) {
    Slice *s = arg;
    s->status = run_slice(s->job, s->row0, s->rows);
    return NULL;
}

/* Cut the batch into `threads` slices; the calling thread runs the first. */
static int run_job(const Job *J, int threads) {
    if (threads > J->batch) threads = J->batch;
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    Slice slices[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    int per = (J->batch + threads - 1) / threads, count = 0;
    for (int row0 = 0; row0 < J->batch; row0 += per, count++) {
        slices[count] = (Slice){J, row0, J->batch - row0 < per ? J->batch - row0 : per, 0};
    }
    for (int i = 1; i < count; i++) started[i] = pthread_create(&ids[i], NULL, slice_main, &slices[i]) == 0;
    slice_main(&slices[0]);
    int status = slices[0].status;
    for (int i = 1; i < count; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            slice_main(&slices[i]); /* no thread to be had: run it here */
        if (slices[i].status) status = slices[i].status;
    }
    return status;
}
#endif /* HAVE_KERNELS */

/* ---- Python interface ---------------------------------------------------------------------- */

#ifdef HAVE_KERNELS
static int read_pointers(PyObject *seq, int count, const float **out, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(fast) != count) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d entries", what, count);
        Py_DECREF(fast);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        out[i] = (const float *)PyLong_AsVoidPtr(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}
#endif

static PyObject *decode(PyObject *self, PyObject *args) {
#ifndef HAVE_KERNELS
    PyErr_SetString(PyExc_RuntimeError, "the native sampling loop needs an x86-64 CPU with AVX2 and FMA");
    return NULL;
#else
    Job J;
    memset(&J, 0, sizeof J);
    unsigned long long tokens, aux, first, h0, c0, out_w, out_bias, noise, logits, chosen;
    PyObject *kernels, *biases, *parts;
    double temperature;
    int threads;
    if (!PyArg_ParseTuple(args, "(iiiiin)(KKKKKKKKKK)OOOdi", &J.layers, &J.units, &J.steps, &J.batch,
                          &J.out_dim, &J.aux_step, &tokens, &aux, &first, &h0, &c0, &out_w, &out_bias, &noise,
                          &logits, &chosen, &kernels, &biases, &parts, &temperature, &threads))
        return NULL;
    if (J.layers < 1 || J.layers > MAX_LAYERS || J.units < 1 || J.steps < 0 || J.batch < 1 || J.out_dim < 1) {
        PyErr_SetString(PyExc_ValueError, "decode: bad dimensions");
        return NULL;
    }
    const float *kernel_ptrs[MAX_LAYERS], *bias_ptrs[MAX_LAYERS];
    if (read_pointers(kernels, J.layers, kernel_ptrs, "kernels") ||
        read_pointers(biases, J.layers - 1, bias_ptrs + 1, "biases"))
        return NULL;
    PyObject *fast = PySequence_Fast(parts, "parts");
    if (fast == NULL) return NULL;
    J.parts = (int)PySequence_Fast_GET_SIZE(fast);
    int offset = 0;
    for (int p = 0; p < J.parts && p < MAX_PARTS; p++) {
        J.part_dim[p] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, p));
        J.part_off[p] = offset;
        offset += J.part_dim[p];
    }
    Py_DECREF(fast);
    if (PyErr_Occurred()) return NULL;
    if (J.parts < 1 || J.parts > MAX_PARTS || offset != J.out_dim) {
        PyErr_SetString(PyExc_ValueError, "decode: the parts must add up to the output depth");
        return NULL;
    }
    int missing = !tokens || !aux || !h0 || !c0 || !out_w || !out_bias || !logits || !chosen;
    for (int k = 0; k < J.layers; k++) missing |= !kernel_ptrs[k] || (k > 0 && !bias_ptrs[k]);
    if (missing) {
        PyErr_SetString(PyExc_ValueError, "decode: a required buffer is missing (address 0)");
        return NULL;
    }
    for (int k = 0; k < J.layers; k++) {
        J.kernel[k] = (Packed){kernel_ptrs[k], k == 0 ? J.units : 2 * J.units, 4 * J.units};
        J.bias[k] = k == 0 ? NULL : bias_ptrs[k];
    }
    J.out = (Packed){(const float *)(uintptr_t)out_w, J.units, J.out_dim};
    J.tokens = (const float *)(uintptr_t)tokens;
    J.aux = (const float *)(uintptr_t)aux;
    J.first = (const float *)(uintptr_t)first;
    J.h0 = (const float *)(uintptr_t)h0;
    J.c0 = (const float *)(uintptr_t)c0;
    J.out_bias = (const float *)(uintptr_t)out_bias;
    J.noise = (const float *)(uintptr_t)noise;
    J.temperature = (float)temperature;
    J.logits = (float *)(uintptr_t)logits;
    J.chosen = (int64_t *)(uintptr_t)chosen;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_job(&J, threads);
    Py_END_ALLOW_THREADS
    if (status) return PyErr_NoMemory();
    Py_RETURN_NONE;
#endif
}

static PyObject *available(PyObject *self, PyObject *unused) {
#ifdef HAVE_KERNELS
    __builtin_cpu_init();
    return PyBool_FromLong(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode((layers, units, steps, batch, out_dim, aux_step), (tokens, aux, first, h0, c0, out_w, out_bias, "
     "noise, logits, chosen), kernels, biases, parts, temperature, threads): the sampling loop on raw "
     "float32 buffers (addresses; 0 for none), see musicvae.nn.sampler."},
    {"available", available, METH_NOARGS, "Whether this CPU has AVX2 and FMA, which the loop needs."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decode", "The native sampling loop.", -1, methods};

PyMODINIT_FUNC PyInit__decode(void) { return PyModule_Create(&module); }

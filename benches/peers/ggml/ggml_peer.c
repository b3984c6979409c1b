// ggml (llama.cpp's tensor library, built from the source that the llama-cpp-sys-2 crate
// vendors: see build.sh) as a peer for kiln's quantized products, and as the reference for
// its quantizers.
//
//   ggml-peer bench THREADS REPS TYPES SHAPES MS
//       times ggml_mul_mat(w, x) for weights of each type (f32,f16,q8_0,q4_0,q4_K,q6_K) and
//       shape NxK (N rows of K values), activations of m rows: the median of REPS runs after
//       two warm-ups, one JSON object per line (the format of kiln's examples/qbench.rs).
//   ggml-peer quantize TYPE IN OUT
//       IN: f32 values in rows of 256; OUT: ggml_quantize_chunk's bytes (no importance matrix:
//       the reference quantizers, quantize_row_*_ref).
#include "ggml.h"
#include "ggml-cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum ggml_type type_of(const char *s) {
    if (!strcmp(s, "f32")) return GGML_TYPE_F32;
    if (!strcmp(s, "f16")) return GGML_TYPE_F16;
    if (!strcmp(s, "q8_0")) return GGML_TYPE_Q8_0;
    if (!strcmp(s, "q4_0")) return GGML_TYPE_Q4_0;
    if (!strcmp(s, "q4_K")) return GGML_TYPE_Q4_K;
    if (!strcmp(s, "q6_K")) return GGML_TYPE_Q6_K;
    fprintf(stderr, "unknown type %s\n", s);
    exit(2);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static unsigned long long lcg = 88172645463325252ull;
static float frand(void) {
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)(lcg >> 40) / (float)(1ull << 24) - 0.5f) * 0.07f;
}

static void bench(int threads, int reps, const char *tname, int n, int k, int m) {
    enum ggml_type type = type_of(tname);
    size_t wbytes = ggml_row_size(type, k) * n;
    struct ggml_init_params ip = {
        .mem_size = wbytes + (size_t)(m * k + m * n) * 4 + 16 * 1024 * 1024,
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    struct ggml_tensor *w = ggml_new_tensor_2d(ctx, type, k, n);
    struct ggml_tensor *x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, m);
    float *w32 = malloc((size_t)n * k * 4);
    for (size_t i = 0; i < (size_t)n * k; i++) w32[i] = frand();
    if (type == GGML_TYPE_F32) memcpy(w->data, w32, (size_t)n * k * 4);
    else if (type == GGML_TYPE_F16) ggml_fp32_to_fp16_row(w32, w->data, (int64_t)n * k);
    else ggml_quantize_chunk(type, w32, w->data, 0, n, k, NULL);
    free(w32);
    for (int i = 0; i < m * k; i++) ((float *)x->data)[i] = frand() * 30.0f;
    struct ggml_tensor *y = ggml_mul_mat(ctx, w, x);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, y);
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    struct ggml_cplan plan = ggml_graph_plan(gf, threads, tp);
    uint8_t *work = plan.work_size ? malloc(plan.work_size) : NULL;
    plan.work_data = work;
    double *t = malloc(sizeof(double) * reps);
    for (int r = -2; r < reps; r++) {
        double t0 = now();
        ggml_graph_compute(gf, &plan);
        if (r >= 0) t[r] = now() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    double s = t[reps / 2];
    printf("{\"engine\":\"ggml\",\"device\":\"cpu\",\"dtype\":\"%s\",\"m\":%d,\"n\":%d,\"k\":%d,"
           "\"ms\":%.4f,\"gbs\":%.2f,\"gflops\":%.2f}\n",
           tname, m, n, k, s * 1e3, wbytes / s / 1e9, 2.0 * m * n * k / s / 1e9);
    fflush(stdout);
    free(t);
    free(work);
    ggml_threadpool_free(tp);
    ggml_free(ctx);
}

static void quantize(const char *tname, const char *in, const char *out) {
    enum ggml_type type = type_of(tname);
    FILE *f = fopen(in, "rb");
    if (!f) { perror(in); exit(1); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *x = malloc(len);
    if (fread(x, 1, len, f) != (size_t)len) { perror(in); exit(1); }
    fclose(f);
    int rows = (int)(len / 4 / 256);
    size_t bytes = ggml_row_size(type, 256) * rows;
    void *q = malloc(bytes);
    ggml_quantize_chunk(type, x, q, 0, rows, 256, NULL);
    f = fopen(out, "wb");
    fwrite(q, 1, bytes, f);
    fclose(f);
}

int main(int argc, char **argv) {
    ggml_cpu_init();
    if (argc == 5 && !strcmp(argv[1], "quantize")) {
        quantize(argv[2], argv[3], argv[4]);
        return 0;
    }
    if (argc != 7 || strcmp(argv[1], "bench")) {
        fprintf(stderr, "usage: ggml-peer bench THREADS REPS TYPES SHAPES MS | quantize TYPE IN OUT\n");
        return 2;
    }
    int threads = atoi(argv[2]), reps = atoi(argv[3]);
    char types[256], shapes[256], ms[256];
    // Nested loops over the comma lists (strtok_r keeps them apart).
    snprintf(shapes, sizeof shapes, "%s", argv[5]);
    char *s1, *s2, *s3;
    for (char *sh = strtok_r(shapes, ",", &s1); sh; sh = strtok_r(NULL, ",", &s1)) {
        int n, k;
        if (sscanf(sh, "%dx%d", &n, &k) != 2) return 2;
        snprintf(types, sizeof types, "%s", argv[4]);
        for (char *ty = strtok_r(types, ",", &s2); ty; ty = strtok_r(NULL, ",", &s2)) {
            snprintf(ms, sizeof ms, "%s", argv[6]);
            for (char *mm = strtok_r(ms, ",", &s3); mm; mm = strtok_r(NULL, ",", &s3))
                bench(threads, reps, ty, n, k, atoi(mm));
        }
    }
    return 0;
}

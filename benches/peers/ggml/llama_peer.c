// llama.cpp as a reference and a peer for kiln-llm: loads a GGUF file through llama.cpp's own
// API and prints, one line each, what kiln's tests and benchmarks compare against.
//
//   llama-peer tokens MODEL TEXT             the ids of TEXT (BOS added as the model says)
//   llama-peer logits MODEL THREADS N TEXT   the prompt's ids, every prompt position's logits,
//                                            then N greedy tokens, each with the logits after it
//   llama-peer bench MODEL THREADS P N REPS  prefill P tokens and decode N, REPS times: tokens/s
//   llama-peer chat MODEL SYSTEM USER        the model's chat template applied (llama.cpp's
//                                            llama_chat_apply_template) to a system turn (none
//                                            if empty) and a user turn, with the assistant's
//                                            header: its ids (special tokens parsed), then
//                                            "text" and the prompt's bytes to the end
//   llama-peer quantize IN OUT FTYPE         llama.cpp's quantizer (llama-quantize), FTYPE one of
//                                            f16, q8_0, q4_0, q4_k_m
//
// The KV cache is kept in f32 (llama.cpp's default is f16) and flash attention is off, so the
// logits are llama.cpp's arithmetic on the file's weights and nothing else.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static struct llama_model *load(const char *path) {
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *m = llama_model_load_from_file(path, mp);
    if (!m) { fprintf(stderr, "llama-peer: cannot load %s\n", path); exit(1); }
    return m;
}

static struct llama_context *context(struct llama_model *m, int threads, int n_ctx, int f32_cache) {
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    if (f32_cache) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) { fprintf(stderr, "llama-peer: cannot make a context\n"); exit(1); }
    return c;
}

static int tokenize(const struct llama_vocab *v, const char *text, llama_token *out, int max) {
    int n = llama_tokenize(v, text, (int)strlen(text), out, max, true, false);
    if (n < 0) { fprintf(stderr, "llama-peer: text too long\n"); exit(1); }
    return n;
}

static void print_logits(struct llama_context *c, int i, int n_vocab) {
    const float *l = llama_get_logits_ith(c, i);
    printf("logits");
    for (int j = 0; j < n_vocab; j++) printf(" %.9g", l[j]);
    printf("\n");
}

static int argmax(const float *l, int n) {
    int best = 0;
    for (int j = 1; j < n; j++) if (l[j] > l[best]) best = j;
    return best;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void decode(struct llama_context *c, llama_token *toks, int n, int pos, int all_logits) {
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = toks[i];
        b.pos[i] = pos + i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i == n - 1;
    }
    b.n_tokens = n;
    if (llama_decode(c, b) != 0) { fprintf(stderr, "llama-peer: decode failed\n"); exit(1); }
    llama_batch_free(b);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama-peer tokens|logits|bench MODEL ...\n");
        return 2;
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    if (!strcmp(argv[1], "quantize") && argc >= 5) {
        struct llama_model_quantize_params qp = llama_model_quantize_default_params();
        const char *names[] = {"f16", "q8_0", "q4_0", "q4_k_m"};
        enum llama_ftype types[] = {LLAMA_FTYPE_MOSTLY_F16, LLAMA_FTYPE_MOSTLY_Q8_0,
                                    LLAMA_FTYPE_MOSTLY_Q4_0, LLAMA_FTYPE_MOSTLY_Q4_K_M};
        int k = -1;
        for (int i = 0; i < 4; i++) if (!strcmp(argv[4], names[i])) k = i;
        if (k < 0) { fprintf(stderr, "llama-peer: unknown type %s\n", argv[4]); return 2; }
        qp.ftype = types[k];
        qp.nthread = 2;
        return llama_model_quantize(argv[2], argv[3], &qp) == 0 ? 0 : 1;
    }
    struct llama_model *m = load(argv[2]);
    const struct llama_vocab *v = llama_model_get_vocab(m);
    int n_vocab = llama_vocab_n_tokens(v);
    static llama_token toks[65536];
    if (!strcmp(argv[1], "tokens")) {
        int n = tokenize(v, argv[3], toks, 65536);
        printf("tokens");
        for (int i = 0; i < n; i++) printf(" %d", toks[i]);
        printf("\n");
    } else if (!strcmp(argv[1], "chat") && argc >= 5) {
        const char *tmpl = llama_model_chat_template(m, NULL);
        if (!tmpl) { fprintf(stderr, "llama-peer: the model has no chat template\n"); return 1; }
        struct llama_chat_message msgs[2] = {{"system", argv[3]}, {"user", argv[4]}};
        int sys = argv[3][0] != 0;
        static char buf[1 << 16];
        int len = llama_chat_apply_template(tmpl, sys ? msgs : msgs + 1, sys ? 2 : 1, true, buf,
                                            (int)sizeof buf);
        if (len < 0 || len >= (int)sizeof buf) { fprintf(stderr, "llama-peer: template failed\n"); return 1; }
        int n = llama_tokenize(v, buf, len, toks, 65536, true, true);
        if (n < 0) { fprintf(stderr, "llama-peer: text too long\n"); return 1; }
        printf("tokens");
        for (int i = 0; i < n; i++) printf(" %d", toks[i]);
        printf("\ntext\n");
        fwrite(buf, 1, len, stdout);
    } else if (!strcmp(argv[1], "logits") && argc >= 6) {
        int threads = atoi(argv[3]), gen = atoi(argv[4]);
        int n = tokenize(v, argv[5], toks, 65536);
        struct llama_context *c = context(m, threads, n + gen + 8, 1);
        printf("tokens");
        for (int i = 0; i < n; i++) printf(" %d", toks[i]);
        printf("\n");
        if (getenv("LLAMA_PEER_SERIAL")) {
            // The prompt one token at a time (the single-row kernels), for comparison.
            for (int i = 0; i < n; i++) {
                decode(c, toks + i, 1, i, 1);
                print_logits(c, -1, n_vocab);
            }
        } else {
            decode(c, toks, n, 0, 1);
            for (int i = 0; i < n; i++) print_logits(c, i, n_vocab);
        }
        for (int g = 0; g < gen; g++) {
            llama_token t = argmax(llama_get_logits_ith(c, -1), n_vocab);
            printf("next %d\n", t);
            decode(c, &t, 1, n + g, 0);
            print_logits(c, -1, n_vocab);
        }
        llama_free(c);
    } else if (!strcmp(argv[1], "bench") && argc >= 7) {
        int threads = atoi(argv[3]), p = atoi(argv[4]), gen = atoi(argv[5]), reps = atoi(argv[6]);
        for (int i = 0; i < p; i++) toks[i] = (i * 7919 + 13) % n_vocab;
        struct llama_context *c = context(m, threads, p + gen + 8, 0);
        for (int r = 0; r < reps; r++) {
            llama_memory_clear(llama_get_memory(c), true);
            double t0 = now();
            decode(c, toks, p, 0, 0);
            double t1 = now();
            for (int g = 0; g < gen; g++) {
                llama_token t = argmax(llama_get_logits_ith(c, -1), n_vocab);
                decode(c, &t, 1, p + g, 0);
            }
            double t2 = now();
            printf("{\"prefill_tok_s\": %.3f, \"decode_tok_s\": %.3f}\n", p / (t1 - t0),
                   gen / (t2 - t1));
            fflush(stdout);
        }
        llama_free(c);
    } else {
        fprintf(stderr, "llama-peer: unknown command or missing arguments\n");
        return 2;
    }
    llama_model_free(m);
    return 0;
}

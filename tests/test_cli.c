/* The bit command line, run as a user would: exit codes, JSON output, files written. */
#include <fcntl.h>
#include <jansson.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arch.h"
#include "ftjson.h"
#include "modelmeta.h"
#include "t.h"
#include "tcli.h"

static char err[512];

static json_t *read_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fprintf(stderr, "  %s: %s\n", path, je.text);
    return j;
}

static void help_and_usage(void)
{
    T_CHECK(bit("--help", NULL) == 0);
    T_CHECK(bit("", NULL) == 2);
    T_CHECK(bit("frobnicate", NULL) == 2 && stderr_has("unknown command"));
    const char *subs[] = {"inspect", "predict", "bench", "finetune", "pretrain", "eval", "dataset"};
    for (int i = 0; i < 7; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", subs[i]);
        T_CHECKF(bit(a, NULL) == 0, "%s", a);
    }
    T_CHECK(bit("bench --batch 0 --arch R50x1", NULL) == 2 && stderr_has("--batch"));
}

static void inspect(void)
{
    char out[600], args[1200];
    snprintf(out, sizeof out, "%s/inspect.json", t_tmpdir());
    snprintf(args, sizeof args, "inspect %s", t_fixture("model2.npz"));
    T_REQUIRE(bit(args, out) == 0);
    json_t *j = read_json(out);
    T_REQUIRE(j);
    eng_arch a = {{2, 1, 1, 2}, 32, 7};
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "architecture")), "custom"));
    T_CHECK(json_integer_value(json_object_get(j, "head")) == 7);
    T_CHECK(json_integer_value(json_object_get(j, "width")) == 32);
    T_CHECK(json_integer_value(json_array_get(json_object_get(j, "units"), 3)) == 2);
    T_CHECK(json_integer_value(json_object_get(j, "parameters")) == eng_arch_param_count(&a));
    json_decref(j);
    snprintf(args, sizeof args, "inspect %s", t_fixture("logits.npy"));
    T_CHECK(bit(args, NULL) == 1 && stderr_has("not a readable npz"));
}

static void predict_tensor(void)
{
    char out[600], args[2000];
    snprintf(out, sizeof out, "%s/logits.npy", t_tmpdir());
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s --threads 1 --precision f32",
             t_fixture("model.npz"), t_fixture("input.npy"), out);
    T_REQUIRE(bit(args, NULL) == 0);
    eng_tensor *got = NULL, *ref = NULL;
    T_REQUIRE(eng_npy_load(out, &got, err, sizeof err) == 0);
    T_REQUIRE(eng_npy_load(t_fixture("logits.npy"), &ref, err, sizeof err) == 0);
    T_REQUIRE(got->ndim == 2 && got->shape[0] == 4 && got->shape[1] == 10);
    const float *g = got->data, *r = ref->data;
    for (int i = 0; i < 40; i++) /* manifest: logits atol 3e-5, rtol 3e-4 */
        T_CHECKF(fabs(g[i] - r[i]) <= 3e-5 + 3e-4 * fabs(r[i]), "%d: %g vs %g", i, g[i], r[i]);
    eng_tensor_free(got);
    eng_tensor_free(ref);
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s", t_fixture("model.npz"),
             t_fixture("labels.npy"), out);
    T_CHECK(bit(args, NULL) == 1 && stderr_has("float32 [N, 3, H, W]"));
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s", t_fixture("input.npy"),
             t_fixture("input.npy"), out);
    T_CHECK(bit(args, NULL) == 1 && stderr_has("bit predict:"));
}

static void bench_json(void)
{
    char out[600], args[1200];
    snprintf(out, sizeof out, "%s/bench.json", t_tmpdir());
    snprintf(args, sizeof args, "bench --model %s --batch 2 --res 64 --iters 3 --threads 1",
             t_fixture("model.npz"));
    T_REQUIRE(bit(args, out) == 0);
    json_t *j = read_json(out);
    T_REQUIRE(j);
    T_CHECK(json_real_value(json_object_get(j, "images_per_sec")) > 0);
    T_CHECK(json_real_value(json_object_get(j, "gflops")) > 0);
    T_CHECK(json_real_value(json_object_get(j, "ms_per_batch")) > 0);
    T_CHECK(json_integer_value(json_object_get(j, "threads")) == 1);
    json_decref(j);
    T_REQUIRE(bit("bench --arch R50x1 --head 10 --batch 1 --res 32 --iters 1 --warmup 0", out) == 0);
    j = read_json(out);
    T_REQUIRE(j);
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "architecture")), "R50x1"));
    json_decref(j);
}

/* --profile: every kind of pass timed, adding up to no more than the step; with --data the
 * batches come through the loader and its wait is timed too. */
static void bench_profile(void)
{
    char data[600], out[600], args[2000];
    snprintf(data, sizeof data, "%s/bench-data.npz", t_tmpdir());
    snprintf(out, sizeof out, "%s/bench.json", t_tmpdir());
    int64_t xs[] = {6, 3, 64, 64}, ys[] = {6};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < 6; i++) ((int64_t *)y->data)[i] = i % 3;
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    T_REQUIRE(eng_npz_save(data, z, 0, err, sizeof err) == 0);
    eng_npz_free(z);
    const char *kinds[] = {"conv_fwd", "conv_bwd_data", "conv_bwd_weights", "gn_relu_fwd",
                           "gn_relu_recompute", "gn_relu_bwd", "pool", "head", "ws", "sgd",
                           "reorder", "loader_wait"};
    snprintf(args, sizeof args, "bench --model %s --batch 2 --res 64 --iters 2 --train --profile "
             "--data %s --precision f32", t_fixture("model.npz"), data);
    T_REQUIRE(bit(args, out) == 0);
    json_t *j = read_json(out), *p = json_object_get(j, "profile");
    T_REQUIRE(p);
    double sum = 0, mean = json_real_value(json_object_get(j, "mean_ms"));
    for (int i = 0; i < 12; i++) {
        json_t *v = json_object_get(p, kinds[i]);
        T_CHECKF(json_is_real(v) && (json_real_value(v) > 0 || i == 11), "%s", kinds[i]);
        sum += json_real_value(v);
    }
    T_CHECKF(sum <= mean * 1.001 && sum > 0.5 * mean, "profile %g of %g ms", sum, mean);
    double own = json_real_value(json_object_get(j, "own_pct"));
    T_CHECK(own > 0 && own < 100);
    json_decref(j);
    snprintf(args, sizeof args, "bench --model %s --batch 2 --res 32 --iters 1 --data %s",
             t_fixture("model.npz"), data);
    T_CHECK(bit(args, NULL) == 1 && stderr_has("not --res 32"));
}

/* The logits `bit predict --tensor` writes for input.npy under env with precision prec. */
static eng_tensor *predict_logits(const char *env, const char *prec)
{
    char out[600], args[2000];
    eng_tensor *y = NULL;
    snprintf(out, sizeof out, "%s/logits-%s.npy", t_tmpdir(), prec);
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s --precision %s",
             t_fixture("model.npz"), t_fixture("input.npy"), out, prec);
    if (bit_env(env, args, NULL) == 0) eng_npy_load(out, &y, err, sizeof err);
    return y;
}

static int same_tensor(const eng_tensor *a, const eng_tensor *b)
{
    return a && b && eng_tensor_bytes(a) == eng_tensor_bytes(b) &&
           !memcmp(a->data, b->data, eng_tensor_bytes(a));
}

/* --precision auto follows the ISA oneDNN dispatches to: with oneDNN held to AVX-512 without
 * bf16 it is f32, bit for bit, and inspect and bench say so; unlimited, it is bf16 exactly
 * when the ISA has AVX512-BF16 or AMX. */
static void precision_auto(void)
{
    const char *cap = "ONEDNN_MAX_CPU_ISA=AVX512_CORE";
    char out[600], args[1200];
    snprintf(out, sizeof out, "%s/inspect.json", t_tmpdir());
    snprintf(args, sizeof args, "inspect %s", t_fixture("model.npz"));
    T_REQUIRE(bit(args, out) == 0);
    json_t *j = read_json(out);
    const char *prec = json_string_value(json_object_get(j, "precision"));
    const char *got = json_string_value(json_object_get(j, "isa"));
    char isa[64]; /* kept past json_decref */
    snprintf(isa, sizeof isa, "%s", got ? got : "");
    T_REQUIRE(*isa && prec);
    int has_bf16 = strstr(isa, "bf16") || strstr(isa, "amx");
    T_CHECKF(!strcmp(prec, has_bf16 ? "bf16" : "f32"), "isa %s, auto -> %s", isa, prec);
    json_decref(j);
    eng_tensor *f32 = predict_logits("", "f32"), *a = predict_logits("", "auto");
    eng_tensor *bf = has_bf16 ? predict_logits("", "bf16") : NULL;
    T_CHECK(f32 && same_tensor(a, has_bf16 ? bf : f32));
    eng_tensor_free(a), eng_tensor_free(bf);
    if (!strstr(isa, "avx512")) { /* the cap below cannot bind on this CPU */
        eng_tensor_free(f32);
        return;
    }
    T_REQUIRE(bit_env(cap, args, out) == 0);
    j = read_json(out);
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "isa")), "avx512_core"));
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "precision")), "f32"));
    json_decref(j);
    eng_tensor *capped = predict_logits(cap, "auto"), *capped_f32 = predict_logits(cap, "f32");
    T_CHECK(same_tensor(capped, capped_f32));
    T_CHECK(same_tensor(capped, f32));
    eng_tensor_free(capped), eng_tensor_free(capped_f32), eng_tensor_free(f32);
    snprintf(out, sizeof out, "%s/bench.json", t_tmpdir());
    T_REQUIRE(bit_env(cap, "bench --arch R50x1 --head 10 --batch 1 --res 32 --iters 1 --warmup 0", out) == 0);
    j = read_json(out);
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "precision")), "f32"));
    T_CHECK(!strcmp(json_string_value(json_object_get(j, "isa")), "avx512_core"));
    json_decref(j);
    T_CHECK(bit("bench --arch R50x1 --precision fp16", NULL) == 2 && stderr_has("auto, f32 or bf16"));
    T_CHECK(bit("serve --precision fp16", NULL) == 2 && stderr_has("auto, f32 or bf16"));
    T_CHECK(bit_env("BIT_PRECISION=half", "serve", NULL) == 2 && stderr_has("not 'half'"));
}

/* Reads stdout lines of a run into a JSON array (one object per line). */
static json_t *read_lines(const char *path)
{
    json_t *arr = json_array();
    FILE *f = fopen(path, "r");
    char line[65536];
    while (f && fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        if (j) json_array_append_new(arr, j);
    }
    if (f) fclose(f);
    return arr;
}

/* An image through the CLI equals the reference preprocessing through the tensor path. */
static void predict_images(void)
{
    char out[600], args[3000], npy[600], lab[600];
    snprintf(out, sizeof out, "%s/pred.jsonl", t_tmpdir());
    snprintf(lab, sizeof lab, "%s/labels.txt", t_tmpdir());
    FILE *f = fopen(lab, "w");
    for (int i = 0; i < 10; i++) fprintf(f, "class-%d\n", i);
    fclose(f);
    snprintf(args, sizeof args, "predict --model %s --labels %s --res 128 --top-k 3 %s %s",
             t_fixture("model.npz"), lab, t_fixture("img_graphic64x48.png"), t_fixture("img_rgb160.jpg"));
    T_REQUIRE(bit(args, out) == 0);
    json_t *lines = read_lines(out);
    T_REQUIRE(json_array_size(lines) == 2);
    json_t *p0 = json_object_get(json_array_get(lines, 0), "predictions");
    T_EQ(json_array_size(p0), 3);
    double prev = 2, sum = 0;
    for (size_t i = 0; i < json_array_size(p0); i++) {
        json_t *e = json_array_get(p0, i);
        double sc = json_real_value(json_object_get(e, "score"));
        int idx = (int)json_integer_value(json_object_get(e, "index"));
        char want[32];
        snprintf(want, sizeof want, "class-%d", idx);
        T_CHECK(sc <= prev && sc > 0);
        T_CHECK(!strcmp(json_string_value(json_object_get(e, "label")), want));
        prev = sc, sum += sc;
    }
    T_CHECK(sum <= 1.0 + 1e-6);
    /* the same image as the fixture's preprocessed tensor: identical top class and score */
    eng_tensor *pre = NULL;
    T_REQUIRE(eng_npy_load(t_fixture("pre_graphic64x48.npy"), &pre, err, sizeof err) == 0);
    pre->ndim = 4, pre->shape[0] = 1, pre->shape[1] = 3, pre->shape[2] = 128, pre->shape[3] = 128;
    snprintf(npy, sizeof npy, "%s/pre.npy", t_tmpdir());
    T_REQUIRE(eng_npy_save(npy, pre, err, sizeof err) == 0);
    eng_tensor_free(pre);
    char lo[600];
    snprintf(lo, sizeof lo, "%s/pre_logits.npy", t_tmpdir());
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s", t_fixture("model.npz"), npy, lo);
    T_REQUIRE(bit(args, NULL) == 0);
    eng_tensor *lg = NULL;
    T_REQUIRE(eng_npy_load(lo, &lg, err, sizeof err) == 0);
    const float *z = lg->data;
    int best = 0;
    for (int j = 1; j < 10; j++) best = z[j] > z[best] ? j : best;
    T_CHECK(json_integer_value(json_object_get(json_array_get(p0, 0), "index")) == best);
    eng_tensor_free(lg);
    json_decref(lines);
    /* a file that is not an image: an error line and exit status 1, the others still answered */
    snprintf(args, sizeof args, "predict --model %s %s %s", t_fixture("model.npz"),
             t_fixture("manifest.json"), t_fixture("img_graphic64x48.png"));
    T_EQ(bit(args, out), 1);
    lines = read_lines(out);
    T_CHECK(json_array_size(lines) == 2 && json_object_get(json_array_get(lines, 0), "error") &&
            strstr(json_string_value(json_object_get(json_array_get(lines, 0), "error")),
                   "unsupported image format"));
    json_decref(lines);
}

/* finetune -> eval -> predict on the run directory, and dataset inspect, through the CLI. */
static void finetune_eval_predict(void)
{
    char data[600], run[600], out[600], args[3000];
    snprintf(data, sizeof data, "%s/two.npz", t_tmpdir());
    snprintf(run, sizeof run, "%s/run", t_tmpdir());
    snprintf(out, sizeof out, "%s/o.json", t_tmpdir());
    int64_t xs[] = {12, 3, 32, 32}, ys[] = {12};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < 12; i++) {
        ((int64_t *)y->data)[i] = i % 2;
        for (int k = 0; k < 3 * 32 * 32; k++) ((float *)x->data)[i * 3 * 1024 + k] = (i % 2) ? 0.5f : -0.5f;
    }
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    T_REQUIRE(eng_npz_save(data, z, 1, err, sizeof err) == 0);
    eng_npz_free(z);
    snprintf(args, sizeof args, "dataset inspect %s", data);
    T_REQUIRE(bit(args, out) == 0);
    json_t *j = read_json(out);
    T_CHECK(json_integer_value(json_object_get(j, "num_classes")) == 2);
    json_decref(j);
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s --steps 6 --batch 4 --json",
             t_fixture("model.npz"), data, run);
    T_REQUIRE(bit(args, out) == 0);
    json_t *lines = read_lines(out);
    json_t *last = json_array_get(lines, json_array_size(lines) - 1);
    T_CHECK(!strcmp(json_string_value(json_object_get(last, "type")), "done"));
    json_decref(lines);
    snprintf(args, sizeof args, "eval --model %s --data %s", run, data);
    T_REQUIRE(bit(args, out) == 0);
    j = read_json(out);
    T_CHECK(json_object_get(j, "top1") && json_integer_value(json_object_get(j, "examples")) >= 2);
    json_decref(j);
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s --steps 6", t_fixture("model.npz"), data, run);
    T_CHECK(bit(args, NULL) == 1 && stderr_has("already holds a run"));
    snprintf(args, sizeof args, "finetune --model %s --data %s", t_fixture("model.npz"), data);
    T_CHECK(bit(args, NULL) == 2 && stderr_has("--out"));
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s/r2 --res 100,200", t_fixture("model.npz"), data, t_tmpdir());
    T_CHECK(bit(args, NULL) == 2 && stderr_has("--res"));
    snprintf(args, sizeof args, "dataset inspect %s", t_fixture("input.npy"));
    T_CHECK(bit(args, NULL) == 1 && stderr_has("bit dataset:"));
}


/* A two-class tensor dataset with class names, as bit finetune takes it. */
static const char *named_dataset(void)
{
    static char data[600];
    snprintf(data, sizeof data, "%s/named.npz", t_tmpdir());
    int64_t xs[] = {12, 3, 32, 32}, ys[] = {12}, cs[] = {2};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    eng_tensor *c = eng_tensor_new(ENG_STR, 4 * 5, 1, cs);
    for (int i = 0; i < 12; i++) {
        ((int64_t *)y->data)[i] = i % 2;
        for (int k = 0; k < 3 * 32 * 32; k++) ((float *)x->data)[i * 3 * 1024 + k] = (i % 2) ? 0.5f : -0.5f;
    }
    const char *names[2] = {"left", "right"};
    for (int i = 0; i < 2; i++)
        for (int k = 0; names[i][k]; k++) ((uint32_t *)c->data)[i * 5 + k] = (uint32_t)names[i][k];
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y), eng_npz_put(z, "classes", c);
    eng_npz_save(data, z, 0, err, sizeof err);
    eng_npz_free(z);
    return data;
}

/* Long options are taken whole: getopt_long would take --step for --steps. */
static void exact_option_names(void)
{
    char args[2000];
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s/abbrev --step 3", t_fixture("model.npz"),
             named_dataset(), t_tmpdir());
    T_CHECK(bit(args, NULL) == 2 && stderr_has("unknown option --step; did you mean --steps?"));
    char run[600];
    snprintf(run, sizeof run, "%s/abbrev", t_tmpdir());
    T_NE(access(run, F_OK), 0); /* nothing ran */
    T_CHECK(bit("predict --mod x.npz a.jpg", NULL) == 2 && stderr_has("did you mean --model?"));
    T_CHECK(bit("bench --arch R50x1 --iter 1", NULL) == 2 && stderr_has("did you mean --iters?"));
    T_CHECK(bit("serve --listn 127.0.0.1:0", NULL) == 2 && stderr_has("did you mean --listen?"));
    T_CHECK(bit("jobs --frobnicate", NULL) == 2 && stderr_has("unknown option --frobnicate (`bit jobs --help`"));
    T_CHECK(bit("dataset inspect x --seeds 1", NULL) == 2 && stderr_has("did you mean --seed?"));
    /* a value that happens to start with -- is a value, not an option */
    T_CHECK(bit("predict --model --weird.npz a.jpg", NULL) == 1 && stderr_has("--weird.npz"));
}

/* bit finetune says what it resolved, in its own option names, before the first step; with
 * --json that is the first line. --resolution is --res. */
static void finetune_prints_what_it_resolved(void)
{
    char args[3000], out[600];
    snprintf(out, sizeof out, "%s/resolved.jsonl", t_tmpdir());
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s/resolved --steps 2 --batch 4 "
             "--resolution 32,32 --batch-split 2", t_fixture("model.npz"), named_dataset(), t_tmpdir());
    T_REQUIRE(bit(args, NULL) == 0);
    T_CHECK(stderr_has("bit finetune: starting at step 0 of ") &&
            stderr_has("resolved: --batch 4 --batch-split 2 --base-lr 0.003 --schedule ") &&
            stderr_has(" --res 32,32 --mixup 0 --seed 0"));
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s/resolved-json --steps 2 --batch 4 --json",
             t_fixture("model.npz"), named_dataset(), t_tmpdir());
    T_REQUIRE(bit(args, out) == 0);
    json_t *lines = read_lines(out), *first = json_array_get(lines, 0);
    T_CHECK(!strcmp(json_string_value(json_object_get(first, "type")), "start") &&
            json_integer_value(json_object_get(json_object_get(first, "hyperparameters"), "batch")) == 4 &&
            json_is_false(json_object_get(first, "resume")));
    json_decref(lines);
}

/* What a terminal shows: \r goes to the line start, ESC[K erases to its end, \n commits the
 * line. Returns the committed lines (and the last, uncommitted one) joined by \n. */
static void screen_of(const char *raw, char *out, size_t len)
{
    char line[4096] = "";
    size_t col = 0, o = 0;
    for (const char *p = raw; *p; p++) {
        if (*p == '\r') col = 0;
        else if (*p == '\033' && p[1] == '[' && p[2] == 'K') line[col] = 0, p += 2;
        else if (*p == '\n') o += (size_t)snprintf(out + o, o < len ? len - o : 0, "%s\n", line), line[0] = 0, col = 0;
        else if (col < sizeof line - 1) {
            int end = !line[col];
            line[col++] = *p;
            if (end) line[col] = 0;
        }
    }
    snprintf(out + o, o < len ? len - o : 0, "%s", line);
}

/* On a terminal, checkpoint and evaluation messages go above the live progress line, never
 * into it. */
static void live_line_on_a_terminal(void)
{
    int fd;
    char run[600], data[600];
    snprintf(run, sizeof run, "%s/tty", t_tmpdir());
    snprintf(data, sizeof data, "%s", named_dataset());
    pid_t pid = forkpty(&fd, NULL, NULL, NULL);
    T_REQUIRE(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1); /* stdout: the final JSON line; stderr stays on the terminal */
        const char *bin = getenv("BIT_BIN");
        execl(bin, bin, "finetune", "--model", t_fixture("model.npz"), "--data", data, "--out", run,
              "--steps", "6", "--batch", "4", "--save-every", "1", "--eval-every", "2", "--threads", "1",
              (char *)NULL);
        _exit(127);
    }
    static char raw[1 << 16], screen[1 << 16];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, raw + got, sizeof raw - 1 - got);
        if (k <= 0) break; /* EIO once the child is gone */
        got += (size_t)k;
    }
    raw[got] = 0;
    int st;
    waitpid(pid, &st, 0);
    close(fd);
    T_REQUIRE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    screen_of(raw, screen, sizeof screen);
    int checkpoints = 0, evals = 0, bad = 0, progress_lines = 0;
    for (char *l = strtok(screen, "\n"); l; l = strtok(NULL, "\n")) {
        int progress = strstr(l, "img/s") || (strstr(l, "step ") == l && strchr(l, '/'));
        progress_lines += progress;
        checkpoints += strstr(l, "checkpoint saved") != NULL;
        evals += strstr(l, "val top-1") != NULL;
        if (progress && (strstr(l, "checkpoint") || strstr(l, "val top-1"))) bad++, fprintf(stderr, "  mixed: %s\n", l);
        if (strstr(l, "bit finetune:") && strstr(l, "bit finetune:") != l) bad++, fprintf(stderr, "  inside: %s\n", l);
    }
    /* one live line, redrawn: no stale progress lines left between the messages */
    T_CHECKF(checkpoints >= 6 && evals >= 3 && !bad && progress_lines == 1,
             "%d checkpoints, %d evaluations, %d broken lines, %d progress lines", checkpoints, evals, bad,
             progress_lines);
    T_CHECK(strstr(raw, "\r\033[K") != NULL); /* it did draw a live line */
}

/* A model copied out of a run (or downloaded from the server) still knows its classes and
 * resolution: bit predict uses them when nothing else says. */
static void predict_uses_what_the_model_carries(void)
{
    char args[3000], run[600], copy[600], out[600];
    snprintf(run, sizeof run, "%s/carry", t_tmpdir());
    snprintf(copy, sizeof copy, "%s/carried.npz", t_tmpdir());
    snprintf(out, sizeof out, "%s/carry.jsonl", t_tmpdir());
    snprintf(args, sizeof args, "finetune --model %s --data %s --out %s --steps 2 --batch 4", t_fixture("model.npz"),
             named_dataset(), run);
    T_REQUIRE(bit(args, NULL) == 0);
    snprintf(args, sizeof args, "%s/model.npz", run);
    void *b;
    size_t len;
    T_REQUIRE(eng_file_read(args, 1 << 30, &b, &len, err, sizeof err) == 0);
    T_REQUIRE(eng_file_write_atomic(copy, b, len, err, sizeof err) == 0);
    free(b);
    double score[3];
    const char *res[] = {"", "--res 32", "--res 128"};
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "predict --model %s %s --top-k 2 %s", copy, res[i], t_fixture("img_rgb160.jpg"));
        T_REQUIRE(bit(args, out) == 0);
        json_t *lines = read_lines(out), *p = json_object_get(json_array_get(lines, 0), "predictions");
        const char *label = json_string_value(json_object_get(json_array_get(p, 0), "label"));
        T_CHECKF(label && (!strcmp(label, "left") || !strcmp(label, "right")), "label %s", label ? label : "?");
        score[i] = json_number_value(json_object_get(json_array_get(p, 0), "score"));
        json_decref(lines);
    }
    T_CHECK(score[0] == score[1]);   /* the carried resolution is 32 */
    T_CHECK(score[0] != score[2]);   /* and it matters */
    eng_meta m;
    T_REQUIRE(eng_meta_read(copy, &m, err, sizeof err) == 0);
    T_CHECK(m.resolution == 32 && m.labels && m.labels->n == 2 && !strcmp(m.labels->names[1], "right"));
    eng_meta_clear(&m);
}

/* bit help api lists every field of a job, each with its bit finetune option. */
static void help_api_lists_every_job_field(void)
{
    char out[600];
    snprintf(out, sizeof out, "%s/api.txt", t_tmpdir());
    T_REQUIRE(bit("help api", out) == 0);
    void *buf;
    size_t len;
    T_REQUIRE(eng_file_read(out, 1 << 20, &buf, &len, err, sizeof err) == 0);
    char *txt = realloc(buf, len + 1);
    txt[len] = 0;
    const char *top[] = {"dataset ", "base_model ", "name ", "hyperparameters "};
    for (int i = 0; i < 4; i++) T_CHECKF(strstr(txt, top[i]), "lacks %s", top[i]);
    for (size_t i = 0; ft_param_field(i); i++) {
        const ft_field_doc *d = ft_param_field(i);
        char line[200];
        snprintf(line, sizeof line, "    %s%s%s%s", d->name, d->alias ? " (" : "", d->alias ? d->alias : "", d->alias ? ")" : "");
        T_CHECKF(strstr(txt, line) && strstr(txt, d->cli), "bit help api lacks %s / %s", d->name, d->cli);
    }
    free(txt);
}

int main(void)
{
    T_RUN(help_and_usage);
    T_RUN(inspect);
    T_RUN(predict_tensor);
    T_RUN(bench_json);
    T_RUN(precision_auto);
    T_RUN(bench_profile);
    T_RUN(predict_images);
    T_RUN(finetune_eval_predict);
    T_RUN(exact_option_names);
    T_RUN(finetune_prints_what_it_resolved);
    T_RUN(live_line_on_a_terminal);
    T_RUN(predict_uses_what_the_model_carries);
    T_RUN(help_api_lists_every_job_field);
    return t_done();
}

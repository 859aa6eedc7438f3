/* The bit command line, run as a user would: exit codes, JSON output, files written. */
#include <jansson.h>
#include <sys/wait.h>

#include "arch.h"
#include "t.h"

static char err[512];

/* Runs `bit ARGS` with stdout to out_path (if given); returns the exit status. */
static int bit(const char *args, const char *out_path)
{
    char cmd[4096];
    const char *bin = getenv("BIT_BIN");
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s/stderr.txt", bin ? bin : "./bit", args,
             out_path ? out_path : "/dev/null", t_tmpdir());
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static json_t *read_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    if (!j) fprintf(stderr, "  %s: %s\n", path, je.text);
    return j;
}

static int stderr_has(const char *needle)
{
    char path[600];
    void *buf;
    size_t len;
    snprintf(path, sizeof path, "%s/stderr.txt", t_tmpdir());
    if (eng_file_read(path, 1 << 20, &buf, &len, err, sizeof err)) return 0;
    char *s = realloc(buf, len + 1);
    s[len] = 0;
    int found = strstr(s, needle) != NULL;
    if (!found) fprintf(stderr, "  stderr lacks '%s': %s\n", needle, s);
    free(s);
    return found;
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
    snprintf(args, sizeof args, "predict --model %s --tensor %s --out %s --threads 1",
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
    T_CHECK(json_array_size(p0) == 3);
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
    T_CHECK(bit(args, out) == 1);
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

int main(void)
{
    T_RUN(help_and_usage);
    T_RUN(inspect);
    T_RUN(predict_tensor);
    T_RUN(bench_json);
    T_RUN(predict_images);
    T_RUN(finetune_eval_predict);
    return t_done();
}

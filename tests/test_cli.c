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
    const char *subs[] = {"inspect", "predict", "bench"};
    for (int i = 0; i < 3; i++) {
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

int main(void)
{
    T_RUN(help_and_usage);
    T_RUN(inspect);
    T_RUN(predict_tensor);
    T_RUN(bench_json);
    return t_done();
}

/* Checkpoint I/O: .npy and .npz reading and writing, the BiT schema, architecture inference. */
#include <stdint.h>
#include <unistd.h>

#include "arch.h"
#include "npz.h"
#include "t.h"

static char err[512];

static int write_bytes(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b, 1, n, f);
    fclose(f);
    return w == n ? 0 : -1;
}

static eng_tensor *parse_with_header(const char *dict, size_t data_bytes, int *rc)
{
    unsigned char buf[512] = "\x93NUMPY\x01\x00";
    size_t hl = strlen(dict);
    buf[8] = (unsigned char)hl;
    buf[9] = 0;
    memcpy(buf + 10, dict, hl);
    memset(buf + 10 + hl, 0, data_bytes);
    eng_tensor *t = NULL;
    *rc = eng_npy_parse(buf, 10 + hl + data_bytes, &t, err, sizeof err);
    return t;
}

static void npy_headers(void)
{
    int rc;
    eng_tensor *t = parse_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                                      24, &rc);
    T_REQUIRE(rc == 0 && t);
    T_CHECK(t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->dtype == ENG_F32);
    eng_tensor_free(t);
    t = parse_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (), }", 8, &rc);
    T_CHECK(rc == 0 && t && t->ndim == 0 && t->dtype == ENG_I64);
    eng_tensor_free(t);
    /* Each of these must be refused with a reason, not crash. */
    const char *bad[] = {
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 99999999999999999999), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }",
        "{'descr': '<f4', 'fortran_order': False, }",
        "{'descr': 42, 'fortran_order': False, 'shape': (2, 3), }",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        t = parse_with_header(bad[i], 24, &rc);
        T_CHECKF(rc < 0 && !t && err[0], "accepted %s", bad[i]);
        eng_tensor_free(t);
    }
    t = parse_with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, &rc);
    T_CHECK(strstr(err, "big-endian") != NULL);
    T_CHECK(eng_npy_parse("\x93NUMPY", 6, &t, err, sizeof err) < 0);
    T_CHECK(eng_npy_parse("hello world, not numpy", 22, &t, err, sizeof err) < 0);
}

static void npy_fixture_and_roundtrip(void)
{
    eng_tensor *t = NULL, *u = NULL;
    T_REQUIRE(eng_npy_load(t_fixture("input.npy"), &t, err, sizeof err) == 0);
    int64_t shape[] = {4, 3, 64, 64};
    T_CHECK(eng_tensor_is_f32(t, 4, shape));
    char path[600];
    snprintf(path, sizeof path, "%s/rt.npy", t_tmpdir());
    T_EQ(eng_npy_save(path, t, err, sizeof err), 0);
    T_EQ(eng_npy_load(path, &u, err, sizeof err), 0);
    T_CHECK(u && eng_tensor_is_f32(u, 4, shape) && !memcmp(t->data, u->data, eng_tensor_bytes(t)));
    eng_tensor_free(u);
    u = NULL;
    /* Every truncation of the file is an error, never a crash. */
    void *buf;
    size_t len;
    T_REQUIRE(eng_file_read(path, 1 << 30, &buf, &len, err, sizeof err) == 0);
    for (size_t cut = 0; cut < len; cut += cut < 200 ? 1 : 4099) {
        T_CHECKF(eng_npy_parse(buf, cut, &u, err, sizeof err) < 0, "cut at %zu", cut);
        eng_tensor_free(u);
        u = NULL;
    }
    free(buf);
    eng_tensor *l = NULL;
    T_CHECK(eng_npy_load(t_fixture("labels.npy"), &l, err, sizeof err) == 0);
    T_CHECK(l && l->dtype == ENG_I64 && l->ndim == 1 && l->shape[0] == 4 &&
            ((int64_t *)l->data)[0] == 7);
    eng_tensor_free(l);
    T_CHECK(eng_npy_load(t_fixture("raw_rgb160.npy"), &l, err, sizeof err) == 0);
    T_CHECK(l && l->dtype == ENG_U8 && l->ndim == 3 && l->shape[2] == 3);
    eng_tensor_free(l);
    eng_tensor_free(t);
}

static void npz_roundtrip(int compress)
{
    eng_npz *z = eng_npz_new(), *r = NULL;
    int64_t s1[] = {3, 5}, s2[] = {7};
    eng_tensor *a = eng_tensor_new(ENG_F32, 0, 2, s1), *b = eng_tensor_new(ENG_I64, 0, 1, s2);
    for (int i = 0; i < 15; i++) ((float *)a->data)[i] = (float)i * 0.5f - 3;
    for (int i = 0; i < 7; i++) ((int64_t *)b->data)[i] = (int64_t)i * 1000000007LL;
    T_REQUIRE(eng_npz_put(z, "resnet/x/kernel", a) == 0 && eng_npz_put(z, "y", b) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/rt%d.npz", t_tmpdir(), compress);
    T_REQUIRE(eng_npz_save(path, z, compress, err, sizeof err) == 0);
    T_REQUIRE(eng_npz_load(path, NULL, &r, err, sizeof err) == 0);
    T_CHECK(r->n == 2);
    const eng_tensor *ra = eng_npz_get(r, "resnet/x/kernel"), *rb = eng_npz_get(r, "y");
    T_CHECK(ra && eng_tensor_is_f32(ra, 2, s1) && !memcmp(ra->data, a->data, 60));
    T_CHECK(rb && rb->dtype == ENG_I64 && !memcmp(rb->data, b->data, 56));
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    T_NE(access(tmp, F_OK), 0); /* no temporary left behind */
    eng_npz_free(z);
    eng_npz_free(r);
}

/* An empty archive (a linear probe's optimizer.npz) saves and loads as empty. */
static void npz_empty(void)
{
    eng_npz *z = eng_npz_new(), *r = NULL;
    char path[600];
    snprintf(path, sizeof path, "%s/empty.npz", t_tmpdir());
    T_REQ_EQ(eng_npz_save(path, z, 0, err, sizeof err), 0);
    T_REQ_EQ(eng_npz_load(path, NULL, &r, err, sizeof err), 0);
    T_EQ(r->n, 0);
    eng_npz_free(z);
    eng_npz_free(r);
}

static void npz_stored(void) { npz_roundtrip(0); }
static void npz_deflated(void) { npz_roundtrip(1); }

static void npz_fixture_model(void)
{
    eng_npz *z = NULL;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    eng_arch a;
    T_REQUIRE(eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    T_CHECK(a.units[0] == 1 && a.units[1] == 1 && a.units[2] == 1 && a.units[3] == 1);
    T_CHECK(a.width == 32 && a.head == 10);
    T_CHECK(!strcmp(eng_arch_name(&a), "custom"));
    int64_t total = 0;
    for (int i = 0; i < z->n; i++) total += eng_tensor_numel(z->tensors[i]);
    T_EQ(total, eng_arch_param_count(&a));
    /* A deflated copy of the same checkpoint loads identically. */
    char path[600];
    snprintf(path, sizeof path, "%s/model_deflated.npz", t_tmpdir());
    T_REQUIRE(eng_npz_save(path, z, 1, err, sizeof err) == 0);
    eng_npz *d = NULL;
    T_REQUIRE(eng_npz_load(path, NULL, &d, err, sizeof err) == 0);
    eng_arch b;
    T_CHECK(eng_arch_from_npz(d, &b, err, sizeof err) == 0 && !memcmp(&a, &b, sizeof a));
    for (int i = 0; i < z->n; i++) {
        const eng_tensor *t = eng_npz_get(d, z->names[i]);
        T_CHECK(t && !memcmp(t->data, z->tensors[i]->data, eng_tensor_bytes(t)));
    }
    eng_npz_free(d);
    eng_npz_free(z);
    T_REQUIRE(eng_npz_load(t_fixture("model2.npz"), NULL, &z, err, sizeof err) == 0);
    T_REQUIRE(eng_arch_from_npz(z, &a, err, sizeof err) == 0);
    T_CHECK(a.units[0] == 2 && a.units[1] == 1 && a.units[2] == 1 && a.units[3] == 2);
    T_CHECK(a.width == 32 && a.head == 7);
    eng_npz_free(z);
}

static void npz_corrupt_files(void)
{
    void *buf;
    size_t len;
    T_REQUIRE(eng_file_read(t_fixture("model.npz"), 1 << 30, &buf, &len, err, sizeof err) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/bad.npz", t_tmpdir());
    eng_npz *z = NULL;
    /* Truncations at many points, including inside the central directory. */
    size_t cuts[] = {0, 1, 22, 100, len / 3, len / 2, len - 100, len - 22, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        T_REQUIRE(write_bytes(path, buf, cuts[i]) == 0);
        T_CHECKF(eng_npz_load(path, NULL, &z, err, sizeof err) < 0, "cut %zu", cuts[i]);
        eng_npz_free(z);
        z = NULL;
    }
    /* Flipped bytes: either a clean error or (if the flip hits slack) a load; never a crash. */
    unsigned char *c = malloc(len);
    for (size_t pos = 7; pos < len; pos += len / 61) {
        memcpy(c, buf, len);
        c[pos] ^= 0x5a;
        T_REQUIRE(write_bytes(path, c, len) == 0);
        if (eng_npz_load(path, NULL, &z, err, sizeof err) == 0) {
            eng_arch a;
            (void)eng_arch_from_npz(z, &a, err, sizeof err);
            eng_npz_free(z);
        }
        z = NULL;
    }
    free(c);
    free(buf);
    T_CHECK(eng_npz_load("/nonexistent/model.npz", NULL, &z, err, sizeof err) < 0);
    eng_npz_limits lim = {.max_entries = 3};
    T_CHECK(eng_npz_load(t_fixture("model.npz"), &lim, &z, err, sizeof err) == ENG_ELIMIT);
}

static void schema_errors_name_the_key(void)
{
    eng_npz *z = NULL;
    T_REQUIRE(eng_npz_load(t_fixture("model.npz"), NULL, &z, err, sizeof err) == 0);
    const char *k = "resnet/block3/unit01/b/standardized_conv2d/kernel";
    int64_t wrong[] = {3, 3, 128, 127};
    eng_npz_put(z, k, eng_tensor_new(ENG_F32, 0, 4, wrong));
    eng_arch a;
    T_EQ(eng_arch_from_npz(z, &a, err, sizeof err), ENG_EFORMAT);
    T_CHECKF(strstr(err, k) && strstr(err, "[3, 3, 128, 128]"), "%s", err);
    eng_npz_free(z);
    z = eng_npz_new();
    T_CHECK(eng_arch_from_npz(z, &a, err, sizeof err) == ENG_EFORMAT && strstr(err, "root_block"));
    eng_npz_free(z);
}

static void released_architectures(void)
{
    eng_arch a;
    T_REQUIRE(eng_arch_by_name("BiT-M-R50x1", 21843, &a, err, sizeof err) == 0);
    T_CHECK(!strcmp(eng_arch_name(&a), "R50x1"));
    /* BiT-M-R50x1: 23.5 M backbone + 2048 * 21843 + 21843 head parameters. */
    int64_t n = eng_arch_param_count(&a);
    T_CHECKF(n == 23500352 + 2048LL * 21843 + 21843, "R50x1 has %lld", (long long)n);
    /* 4.1 GFLOP-ish multiply-adds at 224 for ResNet-50 (2x for FLOPs). */
    double g = eng_arch_flops(&a, 224, 224) / 1e9;
    T_CHECKF(g > 8.0 && g < 8.5 + 2 * 2048.0 * 21843 / 1e9, "%.3f", g);
    const char *names[] = {"R50x3", "R101x1", "R101x3", "R152x2", "R152x4"};
    for (int i = 0; i < 5; i++) {
        T_EQ(eng_arch_by_name(names[i], 1000, &a, err, sizeof err), 0);
        T_CHECK(!strcmp(eng_arch_name(&a), names[i]));
    }
    T_CHECK(eng_arch_by_name("R18", 10, &a, err, sizeof err) < 0);
    /* Spatial trace of the fixtures' manifest, odd sizes included. */
    int hw[5][2];
    eng_arch_spatial(96, 80, hw);
    T_CHECK(hw[0][0] == 24 && hw[0][1] == 20 && hw[1][0] == 12 && hw[1][1] == 10);
    T_CHECK(hw[2][0] == 6 && hw[2][1] == 5 && hw[3][0] == 3 && hw[3][1] == 3);
}

static void init_and_save_roundtrip(void)
{
    eng_arch a = {{1, 2, 1, 1}, 32, 5}, b;
    eng_npz *z = NULL, *r = NULL;
    T_REQUIRE(eng_arch_init(&a, 7, 1, &z, err, sizeof err) == 0);
    char path[600];
    snprintf(path, sizeof path, "%s/init.npz", t_tmpdir());
    T_REQUIRE(eng_npz_save(path, z, 0, err, sizeof err) == 0);
    T_REQUIRE(eng_npz_load(path, NULL, &r, err, sizeof err) == 0);
    T_CHECK(eng_arch_from_npz(r, &b, err, sizeof err) == 0 && !memcmp(&a, &b, sizeof a));
    eng_npz_free(z);
    eng_npz_free(r);
}

int main(void)
{
    T_RUN(npy_headers);
    T_RUN(npy_fixture_and_roundtrip);
    T_RUN(npz_stored);
    T_RUN(npz_deflated);
    T_RUN(npz_fixture_model);
    T_RUN(npz_corrupt_files);
    T_RUN(schema_errors_name_the_key);
    T_RUN(released_architectures);
    T_RUN(init_and_save_roundtrip);
    T_RUN(npz_empty);
    return t_done();
}

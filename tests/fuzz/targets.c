/* The bodies of the fuzz targets (see targets.h). Every target feeds the bytes through the
 * project's own API, exactly as the daemon or the CLI would, and then checks what that API
 * promises about an accepted input: round trips, sizes, limits, cleanup. */
#include "tests/fuzz/targets.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ftjson.h"
#include "arc.h"
#include "arch.h"
#include "finetune.h"
#include "image.h"
#include "npz.h"
#include "server/http/srv_int.h"

unsigned long fz_accepted;

#define FZ_ASSERT(c)                                                                   \
    do {                                                                               \
        if (!(c)) {                                                                    \
            fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* ---- shared helpers ------------------------------------------------------------------ */

/* The input as an anonymous in-memory file, for APIs that want a path or a descriptor:
 * nothing touches the disk and nothing is left behind. */
static int fz_memfd(const uint8_t *d, size_t n)
{
    int fd = memfd_create("fz", MFD_CLOEXEC);
    FZ_ASSERT(fd >= 0);
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, d + off, n - off);
        FZ_ASSERT(w > 0);
        off += (size_t)w;
    }
    return fd;
}

static char tmp_dir[512];

static void tmp_dir_remove(void)
{
    char err[256];
    arc_remove_tree(tmp_dir, err, sizeof err);
}

/* One scratch directory per process, removed at exit. */
static const char *fz_tmpdir(void)
{
    if (!tmp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/bit-fuzz-XXXXXX", base && *base ? base : "/tmp");
        FZ_ASSERT(mkdtemp(tmp_dir));
        atexit(tmp_dir_remove);
    }
    return tmp_dir;
}

typedef struct rd {
    const uint8_t *d;
    size_t n;
} rd;

static int rd_u8(rd *r, uint8_t *v)
{
    if (!r->n) return 0;
    *v = *r->d++;
    r->n--;
    return 1;
}

/* ---- .npy ------------------------------------------------------------------------------ */

static int same_tensor(const eng_tensor *a, const eng_tensor *b)
{
    return a->dtype == b->dtype && a->itemsize == b->itemsize && a->ndim == b->ndim &&
           !memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim) &&
           !memcmp(a->data, b->data, eng_tensor_bytes(a));
}

static void npy_strings(const eng_tensor *t)
{
    char s[64];
    for (int64_t i = 0; t->dtype == ENG_STR && i < eng_tensor_numel(t) && i < 4; i++) {
        int rc = eng_tensor_str(t, i, s, sizeof s);
        FZ_ASSERT(rc == 0 || rc == ENG_EFORMAT || rc == ENG_ELIMIT);
        FZ_ASSERT(rc || strlen(s) < sizeof s);
    }
}

/* What eng_npy_serialize writes, eng_npy_parse must read back unchanged. */
static void npy_roundtrip(const eng_tensor *t)
{
    char err[256];
    void *buf = NULL;
    size_t len = 0;
    eng_tensor *back = NULL, *copy = eng_tensor_clone(t);
    FZ_ASSERT(copy && same_tensor(t, copy));
    FZ_ASSERT(eng_npy_serialize(t, &buf, &len, err, sizeof err) == 0);
    FZ_ASSERT(eng_npy_parse(buf, len, &back, err, sizeof err) == 0);
    FZ_ASSERT(same_tensor(t, back));
    free(buf);
    eng_tensor_free(back);
    eng_tensor_free(copy);
}

int fz_npy(const uint8_t *d, size_t n)
{
    char err[256] = "";
    eng_tensor *t = NULL;
    int rc = eng_npy_parse(d, n, &t, err, sizeof err);
    FZ_ASSERT(rc <= 0 && (rc == 0) == (t != NULL) && (rc == 0 || err[0]));
    if (rc) return 0;
    FZ_ASSERT(t->ndim >= 0 && t->ndim <= ENG_MAX_DIMS && t->itemsize > 0);
    char shape[160];
    eng_shape_str(t->ndim, t->shape, shape, sizeof shape);
    /* The data is the file's tail, byte for byte: no trailing or missing bytes. */
    size_t bytes = eng_tensor_bytes(t);
    FZ_ASSERT(bytes <= n && !memcmp(t->data, d + n - bytes, bytes));
    npy_strings(t);
    npy_roundtrip(t);
    eng_tensor_free(t);
    fz_accepted++;
    return 0;
}

/* ---- .npz ------------------------------------------------------------------------------ */

int fz_npz(const uint8_t *d, size_t n)
{
    char path[64], err[512] = "";
    int fd = fz_memfd(d, n);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    eng_npz_limits lim = {.max_entries = 256, .max_total_bytes = 16 << 20};
    eng_npz *z = NULL, *h = NULL;
    int rc = eng_npz_load(path, &lim, &z, err, sizeof err);
    /* The header-only reader (checkpoint probes) accepts whatever the full one does, with the
     * same keys, dtypes and shapes; it may accept more (it never reads the data). */
    int hrc = eng_npz_load_headers(path, &lim, &h, err, sizeof err);
    close(fd);
    FZ_ASSERT(rc <= 0 && (rc == 0) == (z != NULL) && (rc == 0 || err[0]));
    FZ_ASSERT(hrc <= 0 && (hrc == 0) == (h != NULL));
    if (!rc) {
        FZ_ASSERT(hrc == 0 && h->n == z->n);
        for (int i = 0; i < z->n && !hrc; i++) {
            const eng_tensor *a = z->tensors[i], *b = eng_npz_get(h, z->names[i]);
            FZ_ASSERT(b && !b->data && b->dtype == a->dtype && b->itemsize == a->itemsize &&
                      b->ndim == a->ndim && !memcmp(b->shape, a->shape, sizeof a->shape));
        }
    }
    eng_npz_free(h);
    if (rc) return 0;
    FZ_ASSERT(z->n >= 0 && z->n <= lim.max_entries);
    uint64_t total = 0;
    for (int i = 0; i < z->n; i++) {
        /* Keys are unique, so each one finds its own tensor. */
        FZ_ASSERT(eng_npz_get(z, z->names[i]) == z->tensors[i]);
        total += eng_tensor_bytes(z->tensors[i]);
    }
    FZ_ASSERT(total <= lim.max_total_bytes);
    eng_npz_free(z);
    fz_accepted++;
    return 0;
}

/* ---- checkpoint schema ---------------------------------------------------------------- */

#define ARCH_TMPL_MAX 192

typedef struct tmpl {
    eng_param p[ARCH_TMPL_MAX];
    size_t n;
} tmpl;

static void tmpl_cb(const eng_param *p, void *ud)
{
    tmpl *t = ud;
    FZ_ASSERT(t->n < ARCH_TMPL_MAX);
    t->p[t->n++] = *p;
}

/* Built once per header: formatting ~170 keys would otherwise dominate each run. */
static const tmpl *arch_template(int header)
{
    static const int heads[4] = {0, 1, 10, 100};
    static tmpl cache[8];
    tmpl *t = &cache[header & 7];
    eng_arch a = {{4, 4, 6, 4}, header & 1 ? 64 : 32, heads[(header >> 1) & 3]};
    if (!t->n) eng_arch_params(&a, tmpl_cb, t);
    return t;
}

/* Around every bound the schema checks: kernel sides, group multiples, width and head caps. */
static const int64_t ODD_DIMS[16] = {0,  1,  2,  3,    5,    7,       8,       31,
                                     32, 33, 64, 4096, 4097, 1000000, 1000001, 1ll << 31};

/* A raw record: key bytes, then ndim and the dimensions. 0 when the input ran out. */
static int raw_record(rd *r, uint8_t arg, char *key, int *ndim, int64_t *shape)
{
    size_t klen = arg % 64u;
    uint8_t b;
    if (r->n < klen) return 0;
    memcpy(key, r->d, klen);
    key[klen] = 0;
    r->d += klen, r->n -= klen;
    if (!rd_u8(r, &b)) return 0;
    *ndim = b % (ENG_MAX_DIMS + 1);
    for (int i = 0; i < *ndim; i++) {
        if (!rd_u8(r, &b)) return 0;
        shape[i] = ODD_DIMS[b & 15];
    }
    return 1;
}

/* The schema checks read dtypes and shapes only, so these tensors carry no data and a
 * checkpoint of any size costs nothing (eng_tensor_free releases a NULL data pointer).
 * NULL for a shape no .npy could have (over the parser's 16 GiB), which would test nothing. */
static eng_tensor *shape_only(eng_dtype dt, int ndim, const int64_t *shape)
{
    size_t bytes = dt == ENG_I64 ? 8 : dt == ENG_U8 ? 1 : 4;
    for (int i = 0; i < ndim; i++)
        if (eng_mul_size(bytes, (size_t)shape[i], &bytes)) return NULL;
    if (bytes > (size_t)16 << 30) return NULL;
    eng_tensor *t = calloc(1, sizeof *t);
    FZ_ASSERT(t);
    t->dtype = dt;
    t->itemsize = dt == ENG_I64 ? 8 : dt == ENG_U8 ? 1 : 4;
    t->ndim = ndim;
    memcpy(t->shape, shape, sizeof *shape * (size_t)ndim);
    return t;
}

/* Adds one record's tensor to z. 0 at the end of input. */
static int arch_record(rd *r, const tmpl *t, eng_npz *z)
{
    uint8_t op, arg;
    char key[128];
    int ndim;
    int64_t shape[ENG_MAX_DIMS];
    eng_dtype dt = ENG_F32;
    if (!rd_u8(r, &op) || !rd_u8(r, &arg)) return 0;
    if (op >> 6 == 3) {
        if (!raw_record(r, arg, key, &ndim, shape)) return 0;
    } else {
        const eng_param *p = &t->p[arg % t->n];
        snprintf(key, sizeof key, "%s", p->key);
        ndim = p->ndim;
        memcpy(shape, p->shape, sizeof p->shape);
        if (op >> 6 == 1) shape[(op & 3) % ndim] = ODD_DIMS[(op >> 2) & 15];
        if (op >> 6 == 2) dt = op & 1 ? ENG_I64 : ENG_U8;
    }
    eng_tensor *x = shape_only(dt, ndim, shape);
    FZ_ASSERT(!x || eng_npz_put(z, key, x) == 0);
    return 1;
}

typedef struct count_ctx {
    const eng_npz *z;
    int64_t numel;
} count_ctx;

static void count_cb(const eng_param *p, void *ud)
{
    count_ctx *c = ud;
    const eng_tensor *t = eng_npz_get(c->z, p->key);
    FZ_ASSERT(t && eng_tensor_is_f32(t, p->ndim, p->shape));
    c->numel += eng_tensor_numel(t);
}

/* An accepted checkpoint is exactly what the inferred architecture says it is. */
static void arch_accepted(const eng_npz *z, const eng_arch *a)
{
    char err[512];
    const eng_tensor *root = eng_npz_get(z, "resnet/root_block/standardized_conv2d/kernel");
    FZ_ASSERT(eng_arch_check(z, a, err, sizeof err) == 0);
    FZ_ASSERT(root && a->width == root->shape[3] && a->width % ENG_GN_GROUPS == 0);
    for (int b = 0; b < 4; b++) FZ_ASSERT(a->units[b] >= 1 && a->units[b] <= 99);
    FZ_ASSERT(a->head >= 0);
    count_ctx c = {z, 0};
    eng_arch_params(a, count_cb, &c);
    FZ_ASSERT(c.numel == eng_arch_param_count(a));
    const char *name = eng_arch_name(a);
    eng_arch same;
    if (strcmp(name, "custom")) {
        FZ_ASSERT(eng_arch_by_name(name, a->head, &same, err, sizeof err) == 0);
        FZ_ASSERT(!memcmp(&same, a, sizeof same));
    }
    double flops = eng_arch_flops(a, 224, 224);
    FZ_ASSERT(flops > 0 && isfinite(flops));
}

int fz_arch(const uint8_t *d, size_t n)
{
    char err[512] = "";
    if (!n) return 0;
    const tmpl *t = arch_template(d[0]);
    rd r = {d + 1, n - 1};
    eng_npz *z = eng_npz_new();
    FZ_ASSERT(z);
    while (arch_record(&r, t, z)) {
    }
    eng_arch a;
    int rc = eng_arch_from_npz(z, &a, err, sizeof err);
    FZ_ASSERT(rc == 0 || (rc == ENG_EFORMAT && err[0]));
    if (!rc) arch_accepted(z, &a), fz_accepted++;
    eng_npz_free(z);
    return 0;
}

typedef struct seed_ctx {
    const tmpl *t;
    uint8_t *out;
    size_t len, cap;
} seed_ctx;

static void seed_cb(const eng_param *p, void *ud)
{
    seed_ctx *s = ud;
    size_t i = 0;
    while (i < s->t->n && strcmp(s->t->p[i].key, p->key)) i++;
    FZ_ASSERT(i < s->t->n && i < 256);
    if (s->len + 2 <= s->cap) s->out[s->len] = 0, s->out[s->len + 1] = (uint8_t)i;
    s->len += 2;
}

size_t fz_arch_seed(const int units[4], int header, uint8_t *out, size_t cap)
{
    const tmpl *t = arch_template(header);
    eng_arch a = {{units[0], units[1], units[2], units[3]}, (int)t->p[0].shape[3], 0};
    if (t->p[t->n - 1].kind == ENG_P_HEAD_B) a.head = (int)t->p[t->n - 1].shape[0];
    seed_ctx s = {t, out, 1, cap};
    if (!cap) return 0;
    out[0] = (uint8_t)header;
    eng_arch_params(&a, seed_cb, &s);
    return s.len <= cap ? s.len : 0;
}

/* ---- images ---------------------------------------------------------------------------- */

#define IMG_FZ_MAX_PIXELS 4000000u

/* The first byte is the decoder's size hint: 0 (full size) for half the inputs. */
int fz_image(const uint8_t *d, size_t n)
{
    char err[512] = "";
    if (!n) return 0;
    int hint = d[0] < 128 ? 0 : (d[0] - 127) * 4;
    d++, n--;
    img_info info;
    int prc = img_probe(d, n, &info, err, sizeof err);
    img_limits lim = {.max_pixels = IMG_FZ_MAX_PIXELS, .max_side = 16384};
    img_rgb8 *img = NULL;
    int rc = img_decode(d, n, &lim, hint, &img, err, sizeof err);
    FZ_ASSERT(rc <= 0 && (rc == 0) == (img != NULL) && (rc == 0 || err[0]));
    if (rc) return 0;
    /* Decoding reads everything probing reads, and reports the same picture. */
    FZ_ASSERT(prc == 0 && info.format == img_sniff(d, n));
    FZ_ASSERT(img->w >= 1 && img->h >= 1 && (uint64_t)img->w * img->h <= IMG_FZ_MAX_PIXELS);
    if (hint == 0 || info.format == IMG_PNG) {
        FZ_ASSERT(img->w == info.width && img->h == info.height);
    } else {
        FZ_ASSERT(img->w <= info.width && img->h <= info.height);
        FZ_ASSERT((img->w == info.width && img->h == info.height) ||
                  (img->w >= hint && img->h >= hint));
    }
    img_rgb8_free(img);
    fz_accepted++;
    return 0;
}

/* ---- dataset archives ----------------------------------------------------------------- */

typedef struct walk_sum {
    uint64_t files, bytes;
} walk_sum;

/* Relative, '/'-separated, and no component empty, "." or "..". */
static int rel_path_ok(const char *rel)
{
    for (const char *c = rel;; c++) {
        size_t n = strcspn(c, "/");
        if (!n || (n == 1 && c[0] == '.') || (n == 2 && !memcmp(c, "..", 2))) return 0;
        c += n;
        if (!*c) return 1;
    }
}

static int walk_cb(const char *rel, uint64_t size, void *ud)
{
    walk_sum *w = ud;
    FZ_ASSERT(rel_path_ok(rel));
    w->files++;
    w->bytes += size;
    return 0;
}

int fz_archive(const uint8_t *d, size_t n)
{
    char dest[600], err[1024] = "";
    snprintf(dest, sizeof dest, "%s/x", fz_tmpdir());
    int fd = fz_memfd(d, n);
    arc_limits lim = {.max_entry_bytes = 1 << 20, .max_total_bytes = 8 << 20,
                      .max_entries = 512, .max_path = 1024, .max_depth = 16};
    arc_report rep;
    int rc = arc_extract_fd(fd, dest, &lim, &rep, err, sizeof err);
    close(fd);
    struct stat st;
    FZ_ASSERT(rc <= 0 && (rc == 0 || err[0]));
    if (rc) {
        /* A failed extraction leaves nothing: the destination it created is gone. */
        FZ_ASSERT(lstat(dest, &st) != 0 && errno == ENOENT);
        return 0;
    }
    /* What is on disk is what the report says was written, and within the limits. */
    walk_sum w = {0, 0};
    FZ_ASSERT(arc_walk(dest, walk_cb, &w, err, sizeof err) == 0);
    FZ_ASSERT(w.files == rep.files && w.bytes == rep.bytes && rep.files >= 1);
    FZ_ASSERT(rep.bytes <= rep.unpacked && rep.unpacked <= lim.max_total_bytes);
    FZ_ASSERT(rep.entries <= lim.max_entries);
    FZ_ASSERT(arc_remove_tree(dest, err, sizeof err) == 0);
    fz_accepted++;
    return 0;
}

/* ---- job JSON ------------------------------------------------------------------------- */

static void params_in_range(const ft_params *p)
{
    FZ_ASSERT(p->steps >= 0 && p->steps <= 100000000);
    FZ_ASSERT(p->batch >= 0 && p->batch <= 65536 && p->batch_split >= 0 && p->batch_split <= 65536);
    FZ_ASSERT(!p->batch || !p->batch_split || p->batch % p->batch_split == 0);
    FZ_ASSERT(p->nsched == 0 || (p->nsched >= 2 && p->nsched <= ENG_MAX_SCHEDULE));
    for (int i = 0; i < p->nsched; i++)
        FZ_ASSERT(p->schedule[i] >= 1 && (!i || p->schedule[i] > p->schedule[i - 1]));
    FZ_ASSERT(p->base_lr == 0 || (p->base_lr >= 1e-9 && p->base_lr <= 10));
    FZ_ASSERT(p->mixup == -1 || (p->mixup >= 0 && p->mixup <= 100));
    FZ_ASSERT(p->weight_decay == -1 || (p->weight_decay >= 0 && p->weight_decay <= 1));
    FZ_ASSERT((p->no_augment == 0 || p->no_augment == 1) && (p->no_shuffle == 0 || p->no_shuffle == 1));
    FZ_ASSERT(!p->crop || (p->crop >= 32 && p->crop <= p->precrop && p->precrop <= 4096));
}

/* A resolved run is one the trainer can execute: a valid schedule, batch and resolution. */
static void resolve_ok(const ft_params *p, const ft_data_info *info)
{
    char err[512] = "";
    ft_resolved r;
    int rc = ft_resolve(p, info, &r, err, sizeof err);
    FZ_ASSERT(rc == 0 || (rc == ENG_EINVAL && err[0]));
    if (rc) return;
    const eng_hyper *h = &r.h;
    FZ_ASSERT(h->nsched >= 2 && h->nsched <= ENG_MAX_SCHEDULE && h->schedule[0] >= 1);
    for (int i = 1; i < h->nsched; i++) FZ_ASSERT(h->schedule[i] > h->schedule[i - 1]);
    FZ_ASSERT(h->batch >= 1 && r.batch_split >= 1 && r.micro * r.batch_split == h->batch);
    FZ_ASSERT(h->crop >= 32 && h->crop <= h->precrop && h->precrop <= 4096);
    FZ_ASSERT(h->base_lr > 0 && isfinite(h->base_lr) && h->mixup_alpha >= 0);
    FZ_ASSERT(r.save_every >= 1 && r.eval_every >= 0);
    FZ_ASSERT(eng_hyper_lr(h, 0) == 0 && eng_hyper_lr(h, h->schedule[h->nsched - 1]) < 0);
    /* what a job stores is what its worker runs */
    json_t *j = ft_resolved_json(&r);
    ft_resolved back;
    FZ_ASSERT(j && ft_resolved_from_json(j, &back) == 0);
    json_t *j2 = ft_resolved_json(&back);
    FZ_ASSERT(json_equal(j, j2));
    json_decref(j);
    json_decref(j2);
}

/* A POST /v1/jobs body (its "hyperparameters"), or a bare hyper-parameter object. */
int fz_params(const uint8_t *d, size_t n)
{
    static const ft_data_info infos[3] = {
        {.train_images = 500, .median_w = 64, .median_h = 48},
        {.train_images = 1000000, .median_w = 640, .median_h = 480},
        {.train_images = 20000, .median_w = 64, .median_h = 64, .tensor_h = 64, .tensor_w = 64},
    };
    char err[512] = "";
    json_error_t je;
    json_t *doc = json_loadb((const char *)d, n, 0, &je);
    if (!doc) return 0;
    json_t *hp = json_is_object(doc) ? json_object_get(doc, "hyperparameters") : NULL;
    ft_params p;
    int rc = ft_params_from_json(hp ? hp : doc, &p, err, sizeof err);
    FZ_ASSERT(rc == 0 || (rc == ENG_EINVAL && !strncmp(err, "hyperparameters", 15)));
    if (!rc) {
        params_in_range(&p);
        for (int i = 0; i < 3; i++) resolve_ok(&p, &infos[i]);
        fz_accepted++;
    }
    json_decref(doc);
    return 0;
}

/* ---- HTTP: routing, percent-decoding, query strings, auth, multipart type -------------- */

static int fz_handler(srv_req *r, void *ud) { return 0; }

/* The daemon's route table (api/openapi.yaml) and a deep all-parameter route. */
static srv *fz_server(void)
{
    static const char *const routes[][2] = {
        {"GET", "/healthz"}, {"GET", "/readyz"}, {"GET", "/metrics"},
        {"POST", "/v1/datasets"}, {"GET", "/v1/datasets"}, {"GET", "/v1/datasets/{id}"},
        {"DELETE", "/v1/datasets/{id}"}, {"POST", "/v1/jobs"}, {"GET", "/v1/jobs"},
        {"GET", "/v1/jobs/{id}"}, {"DELETE", "/v1/jobs/{id}"}, {"POST", "/v1/jobs/{id}/cancel"},
        {"GET", "/v1/jobs/{id}/events"}, {"GET", "/v1/jobs/{id}/checkpoints"},
        {"GET", "/v1/models"}, {"GET", "/v1/models/{id}"}, {"DELETE", "/v1/models/{id}"},
        {"GET", "/v1/models/{id}/download"}, {"POST", "/v1/models/{id}/classify"},
        {"PUT", "/{a}/{b}/{c}/{d}/{e}"},
    };
    static srv *s;
    char err[256];
    if (s) return s;
    srv_config c;
    srv_config_init(&c);
    c.token = FZ_TOKEN;
    c.temp_dir = fz_tmpdir();
    c.max_parts = 8;
    c.max_memory_body = 4096;
    FZ_ASSERT(srv_new(&c, &s, err, sizeof err) == 0);
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        FZ_ASSERT(srv_route(s, routes[i][0], routes[i][1], fz_handler, NULL, SRV_BODY_AUTO) == 0);
    return s;
}

/* Every byte as %XX: decoding that must give back exactly v. */
static char *pct_encode(const char *v)
{
    size_t n = strlen(v);
    char *o = malloc(3 * n + 1);
    FZ_ASSERT(o);
    for (size_t i = 0; i < n; i++) snprintf(o + 3 * i, 4, "%%%02X", (unsigned char)v[i]);
    o[3 * n] = 0;
    return o;
}

/* A decoded string is NUL-free, no longer than its source, and survives re-encoding. */
static void pct_check(const char *in, size_t n, int plus)
{
    char *out = malloc(n + 1), *again = malloc(n + 1);
    size_t len = 0, len2 = 0;
    FZ_ASSERT(out && again);
    if (srv__pct_decode(in, n, plus, out, &len) == 0) {
        FZ_ASSERT(len <= n && strlen(out) == len);
        char *enc = pct_encode(out);
        char *big = realloc(again, strlen(enc) + 1);
        FZ_ASSERT(big);
        again = big;
        FZ_ASSERT(srv__pct_decode(enc, strlen(enc), 0, again, &len2) == 0);
        FZ_ASSERT(len2 == len && !memcmp(out, again, len));
        free(enc);
    }
    free(out);
    free(again);
}

/* Splits a query string as libmicrohttpd does ('&' between pairs, the first '=' in each)
 * and decodes each piece as srv__parse_query does. */
static void query_check(const char *q)
{
    while (q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t klen = eq ? (size_t)(eq - q) : len;
        pct_check(q, klen, 1);
        if (eq) pct_check(eq + 1, len - klen - 1, 1);
        q = amp ? amp + 1 : NULL;
    }
}

static const char *req_param(const srv_req *r, size_t i)
{
    return r->route->segs[i] ? r->route->segs[i] : srv_param(r, r->route->names[i]);
}

/* Re-encodes the matched path from the route and the decoded parameters: it must match the
 * same route with the same parameters. */
static void match_again(srv *s, const srv_req *r)
{
    size_t len = 1;
    for (size_t i = 0; i < r->route->nseg; i++) len += 3 * strlen(req_param(r, i)) + 1;
    char *path = malloc(len), allow[256] = "";
    FZ_ASSERT(path);
    path[0] = 0;
    for (size_t i = 0; i < r->route->nseg; i++) {
        char *enc = pct_encode(req_param(r, i));
        strcat(strcat(path, "/"), r->route->segs[i] ? r->route->segs[i] : enc);
        free(enc);
    }
    srv_req r2 = {.s = s, .method = r->method, .path = path};
    FZ_ASSERT(srv__match(&r2, allow, sizeof allow) == SRV_M_OK && r2.route == r->route);
    for (size_t i = 0; i < r->nparams; i++)
        FZ_ASSERT(!strcmp(srv_param(&r2, r->params[i].k), r->params[i].v));
    srv__kv_free(r2.params, r2.nparams);
    free(path);
}

static int route_check(srv *s, const char *method, const char *path)
{
    char allow[256] = "";
    srv_req r = {.s = s, .method = method, .path = path};
    int m = srv__match(&r, allow, sizeof allow);
    FZ_ASSERT(m == SRV_M_OK || m == SRV_M_NOTFOUND || m == SRV_M_METHOD ||
              m == SRV_M_BADENC || m == SRV_M_BADPARAM);
    FZ_ASSERT(m != SRV_M_METHOD || allow[0]);
    if (m == SRV_M_OK) {
        size_t want = 0;
        for (size_t i = 0; i < r.route->nseg; i++) want += !r.route->segs[i];
        FZ_ASSERT(!strcmp(r.route->method, method) && r.nparams == want);
        for (size_t i = 0; i < r.nparams; i++) {
            const char *v = r.params[i].v;
            FZ_ASSERT(v[0] && strlen(v) <= SRV_PARAM_MAX && !strpbrk(v, "/\\"));
            FZ_ASSERT(strcmp(v, ".") && strcmp(v, ".."));
        }
        match_again(s, &r);
    }
    srv__kv_free(r.params, r.nparams);
    return m;
}

/* The check of srv__auth_ok, written the obvious way. */
static int auth_expected(const char *h)
{
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h);
    while (n && h[n - 1] == ' ') n--;
    return n == strlen(FZ_TOKEN) && !memcmp(h, FZ_TOKEN, n);
}

static void ctype_check(srv *s, const char *ctype)
{
    srv_req r = {.s = s, .body_tmp = -1, .out.fd = -1};
    int rc = srv__mp_new(&r, ctype);
    FZ_ASSERT(rc == 0 ? r.mp && r.kind == SRV_MULTIPART && !r.out.set
                      : !r.mp && r.out.set && r.out.status == 400);
    srv__body_free(&r);
    srv__out_free(&r.out);
}

/* Input: "METHOD TARGET\nAUTHORIZATION\nCONTENT-TYPE", each line optional (a C string, as
 * libmicrohttpd hands them over: everything after a NUL is ignored). */
int fz_http(const uint8_t *d, size_t n)
{
    srv *s = fz_server();
    char *buf = strndup((const char *)d, n);
    FZ_ASSERT(buf);
    char *auth = strchr(buf, '\n'), *ctype = NULL;
    if (auth) *auth++ = 0, ctype = strchr(auth, '\n');
    if (ctype) *ctype++ = 0;
    char *target = strchr(buf, ' ');
    const char *method = buf;
    if (target) *target++ = 0;
    else target = buf, method = "GET";
    char *query = strchr(target, '?');
    if (query) *query++ = 0;
    pct_check(target, strlen(target), 0);
    int m = route_check(s, method, target);
    if (query) query_check(query);
    FZ_ASSERT(srv__auth_ok(s, auth) == auth_expected(auth));
    if (ctype) ctype_check(s, ctype);
    free(buf);
    fz_accepted += m == SRV_M_OK;
    return 0;
}

/* ---- multipart ------------------------------------------------------------------------ */

/* What a parse produced, reduced to what must not depend on how the body was cut up. */
typedef struct mp_sum {
    int rc, status;
    size_t nparts;
    uint64_t hash;
} mp_sum;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static uint64_t fnv_str(uint64_t h, const char *s) { return fnv(h, s ? s : "\1", s ? strlen(s) + 1 : 1); }

static uint64_t part_hash(uint64_t h, const srv_part *p, size_t max_mem)
{
    FZ_ASSERT(p->name);
    h = fnv_str(fnv_str(fnv_str(h, p->name), p->filename), p->content_type);
    FZ_ASSERT(!p->content_type || strlen(p->content_type) <= 255);
    if (!p->filename) {
        FZ_ASSERT(p->data && !p->path && p->fd < 0 && p->size <= max_mem && !p->data[p->size]);
        return fnv(h, p->data, (size_t)p->size);
    }
    /* The client's name without any directory or control character. */
    FZ_ASSERT(!strpbrk(p->filename, "/\\") && strcmp(p->filename, ".") && strcmp(p->filename, ".."));
    for (const char *c = p->filename; *c; c++) FZ_ASSERT((unsigned char)*c >= 0x20 && *c != 0x7f);
    struct stat st;
    FZ_ASSERT(!p->data && p->path && p->fd >= 0 && fstat(p->fd, &st) == 0);
    FZ_ASSERT((uint64_t)st.st_size == p->size);
    char buf[4096];
    for (off_t off = 0; off < st.st_size;) {
        ssize_t k = pread(p->fd, buf, sizeof buf, off);
        FZ_ASSERT(k > 0);
        h = fnv(h, buf, (size_t)k);
        off += k;
    }
    return h;
}

/* Feeds the body in pieces of 1..64 bytes drawn from seed, or whole when seed is 0. */
static mp_sum mp_run(const uint8_t *d, size_t n, uint32_t seed)
{
    int whole = seed == 0;
    srv *s = fz_server();
    srv_req r = {.s = s, .body_tmp = -1, .out.fd = -1, .mode = SRV_BODY_AUTO, .cap = 64 << 20};
    FZ_ASSERT(srv__mp_new(&r, "multipart/form-data; boundary=\"" FZ_BOUNDARY "\"") == 0);
    int rc = 0;
    for (size_t off = 0; off < n && !rc;) {
        seed = seed * 1103515245u + 12345u;
        size_t k = whole ? n : 1 + (seed >> 16) % 64;
        if (k > n - off) k = n - off;
        rc = srv__body_feed(&r, (const char *)d + off, k);
        off += k;
    }
    if (!rc) rc = srv__body_finish(&r);
    mp_sum m = {rc, r.out.set ? r.out.status : 0, r.nparts, 14695981039346656037ull};
    FZ_ASSERT(rc <= 0 && (rc == 0) == !r.out.set && r.nparts <= s->cfg.max_parts);
    for (size_t i = 0; !rc && i < r.nparts; i++)
        m.hash = part_hash(m.hash, &r.parts[i], s->cfg.max_memory_body);
    srv__body_free(&r);
    srv__out_free(&r.out);
    return m;
}

/* The parse must not depend on how the network cut the body: whole and in random pieces
 * give the same parts, or the same error. */
int fz_multipart(const uint8_t *d, size_t n)
{
    if (!n) return 0;
    uint32_t seed = d[0] | 0x100u;
    mp_sum whole = mp_run(d + 1, n - 1, 0), cut = mp_run(d + 1, n - 1, seed);
    FZ_ASSERT(whole.rc == cut.rc && whole.status == cut.status);
    FZ_ASSERT(whole.nparts == cut.nparts && whole.hash == cut.hash);
    fz_accepted += whole.rc == 0;
    return 0;
}

const fz_target fz_targets[] = {
    {"npy", fz_npy},       {"npz", fz_npz},       {"arch", fz_arch},
    {"image", fz_image},   {"archive", fz_archive}, {"params", fz_params},
    {"http", fz_http},     {"multipart", fz_multipart},
};
const size_t fz_ntargets = sizeof fz_targets / sizeof fz_targets[0];

#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npz.h"
#include "preproc.h"

#define MAX_CLASSES 100000
#define MAX_BAD_SHOWN 5
#define DEFAULT_HOLDOUT 0.1
#define ENG_MIN_RES_DS 32

typedef struct ds_item {
    char *path; /* image file (absolute); NULL for tensor examples */
    int64_t row; /* tensor examples: row of x (src 0) or x_val (src 1) */
    int src, label, w, h;
} ds_item;

typedef struct ds_list {
    ds_item *v;
    int64_t n, cap;
} ds_list;

struct ds_dataset {
    int tensor;
    char *tmpdir; /* our unpack directory, removed by ds_free */
    char **classes;
    int ncls;
    ds_list split[2];
    const char *validation; /* how the validation split was made */
    eng_npz *z;
    const eng_tensor *x[2];
    int th, tw, median_w, median_h, few_shot;
    int64_t non_image, undecodable;
    char bad[MAX_BAD_SHOWN][512];
    img_limits img;
};

static int list_reserve(ds_list *l, int64_t cap)
{
    if (cap <= l->cap) return 0;
    ds_item *v = realloc(l->v, sizeof *v * (size_t)cap);
    if (!v) return ENG_ENOMEM;
    l->v = v, l->cap = cap;
    return 0;
}

static int list_push(ds_list *l, ds_item it)
{
    if (l->n == l->cap && list_reserve(l, l->cap ? 2 * l->cap : 256)) return ENG_ENOMEM;
    l->v[l->n++] = it;
    return 0;
}

static void list_free(ds_list *l)
{
    for (int64_t i = 0; i < l->n; i++) free(l->v[i].path);
    free(l->v);
    memset(l, 0, sizeof *l);
}

void ds_free(ds_dataset *d)
{
    if (!d) return;
    list_free(&d->split[0]);
    list_free(&d->split[1]);
    for (int i = 0; i < d->ncls; i++) free(d->classes[i]);
    free(d->classes);
    eng_npz_free(d->z);
    if (d->tmpdir) {
        char e[256];
        arc_remove_tree(d->tmpdir, e, sizeof e);
        free(d->tmpdir);
    }
    free(d);
}

int ds_num_classes(const ds_dataset *d) { return d->ncls; }
const char *ds_class_name(const ds_dataset *d, int i) { return d->classes[i]; }
int64_t ds_size(const ds_dataset *d, ds_split s) { return d->split[s].n; }
int ds_label(const ds_dataset *d, ds_split s, int64_t i) { return d->split[s].v[i].label; }
void ds_tensor_size(const ds_dataset *d, int *h, int *w) { *h = d->th, *w = d->tw; }
void ds_median_size(const ds_dataset *d, int *w, int *h) { *w = d->median_w, *h = d->median_h; }

static int find_class(const ds_dataset *d, const char *name)
{
    int lo = 0, hi = d->ncls - 1; /* classes are sorted */
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(d->classes[mid], name);
        if (!c) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* ---------------------------------------------------------------- image folders */

typedef struct walk_ctx {
    ds_dataset *d;
    const char *root;
    int split, building; /* building: collect class names (train); else look them up */
    ds_list *out;
    char **names; /* class names seen while building, in walk (sorted) order */
    int nnames, capnames;
    int64_t loose; /* files outside any class folder */
    int rc;
    char *err;
    size_t errlen;
} walk_ctx;

static int add_name(walk_ctx *w, const char *name, size_t len)
{
    if (w->nnames && strlen(w->names[w->nnames - 1]) == len &&
        !strncmp(w->names[w->nnames - 1], name, len))
        return w->nnames - 1;
    if (w->nnames == MAX_CLASSES) return ENG_ELIMIT;
    if (w->nnames == w->capnames) {
        int cap = w->capnames ? 2 * w->capnames : 64;
        char **n = realloc(w->names, sizeof *n * (size_t)cap);
        if (!n) return ENG_ENOMEM;
        w->names = n, w->capnames = cap;
    }
    if (!(w->names[w->nnames] = strndup(name, len))) return ENG_ENOMEM;
    return w->nnames++;
}

/* arc_walk visits files in sorted order, so class folders arrive sorted and grouped. */
static int walk_cb(const char *rel, uint64_t size, void *ud)
{
    walk_ctx *w = ud;
    (void)size;
    const char *slash = strchr(rel, '/');
    if (!slash) {
        w->loose++;
        return 0;
    }
    int label;
    if (w->building) {
        label = add_name(w, rel, (size_t)(slash - rel));
        if (label < 0)
            return eng_errf(w->err, w->errlen, label, label == ENG_ELIMIT ? "more than %d classes"
                                                                           : "out of memory",
                            MAX_CLASSES);
    } else {
        char name[1024];
        snprintf(name, sizeof name, "%.*s", (int)(slash - rel), rel);
        if ((label = find_class(w->d, name)) < 0)
            return eng_errf(w->err, w->errlen, ENG_EFORMAT,
                            "val/%s: class not present in the training split", name);
    }
    char *path;
    if (asprintf(&path, "%s/%s", w->root, rel) < 0) return ENG_ENOMEM;
    ds_item it = {.path = path, .label = label, .src = w->split};
    if (list_push(w->out, it)) {
        free(path);
        return ENG_ENOMEM;
    }
    return 0;
}

static int is_dir(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* "train/" (and optionally "val/") alone at the top means split layout; anything else is
 * class folders at the top. */
static int split_layout(const char *dir)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/train", dir);
    if (!is_dir(p)) return 0;
    DIR *dh = opendir(dir);
    if (!dh) return 0;
    struct dirent *e;
    int other = 0;
    while ((e = readdir(dh)))
        if (e->d_name[0] != '.' && strcmp(e->d_name, "train") && strcmp(e->d_name, "val")) other = 1;
    closedir(dh);
    return !other;
}

/* Decodes every image once (JPEG at 1/8 scale where possible): keeps the usable ones with
 * their original size, counts non-images, records the first few undecodable ones. */
static int validate_images(ds_dataset *d, ds_list *l)
{
    int64_t n = l->n;
    char **why = calloc((size_t)n ? (size_t)n : 1, sizeof *why);
    if (!why) return ENG_ENOMEM;
    #pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < n; i++) {
        ds_item *it = &l->v[i];
        char e[400];
        void *buf = NULL;
        size_t len = 0;
        img_info info;
        img_rgb8 *img = NULL;
        size_t cap = d->img.max_file_bytes ? d->img.max_file_bytes : IMG_DEFAULT_MAX_FILE_BYTES;
        int rc = eng_file_read(it->path, cap, &buf, &len, e, sizeof e);
        if (!rc && img_sniff(buf, len) == IMG_UNKNOWN) {
            it->label = -1; /* not an image: skipped quietly, counted */
        } else if (rc || (rc = img_probe(buf, len, &info, e, sizeof e)) ||
                   (rc = img_decode(buf, len, &d->img, 32, &img, e, sizeof e))) {
            it->label = -2;
            why[i] = strdup(e);
        } else {
            it->w = info.width, it->h = info.height;
        }
        img_rgb8_free(img);
        free(buf);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        ds_item it = l->v[i];
        if (it.label >= 0) {
            l->v[k++] = it;
            continue;
        }
        if (it.label == -1) d->non_image++;
        else if (d->undecodable++ < MAX_BAD_SHOWN)
            snprintf(d->bad[d->undecodable - 1], sizeof d->bad[0], "%s", why[i] ? why[i] : "?");
        free(it.path);
        free(why[i]);
    }
    free(why);
    l->n = k;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void median_size(ds_dataset *d)
{
    const ds_list *l = &d->split[DS_TRAIN];
    int *w = malloc(sizeof(int) * (size_t)(l->n ? l->n : 1)), *h = malloc(sizeof(int) * (size_t)(l->n ? l->n : 1));
    if (w && h && l->n) {
        for (int64_t i = 0; i < l->n; i++) w[i] = l->v[i].w, h[i] = l->v[i].h;
        qsort(w, (size_t)l->n, sizeof *w, cmp_int);
        qsort(h, (size_t)l->n, sizeof *h, cmp_int);
        d->median_w = w[l->n / 2], d->median_h = h[l->n / 2];
    }
    free(w);
    free(h);
}

/* Moves, per class, round(frac * n) shuffled training examples (seeded) to validation,
 * always leaving one in training; or keeps only k per class (few-shot). Order stays stable. */
static int select_per_class(ds_dataset *d, double frac, int k, uint64_t seed, char *err,
                            size_t errlen)
{
    ds_list *tr = &d->split[DS_TRAIN];
    char *mark = calloc((size_t)(tr->n ? tr->n : 1), 1);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)(tr->n ? tr->n : 1));
    int rc = 0;
    if (!mark || !idx) { rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory"); goto fail; }
    for (int c = 0; c < d->ncls; c++) {
        int64_t m = 0;
        for (int64_t i = 0; i < tr->n; i++)
            if (tr->v[i].label == c) idx[m++] = i;
        eng_rng r;
        eng_rng_seed3(&r, seed, (uint64_t)c, k ? 2 : 1);
        for (int64_t i = m - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)eng_rng_below(&r, (uint64_t)i + 1), t = idx[i];
            idx[i] = idx[j], idx[j] = t;
        }
        if (k && m < k) {
            rc = eng_errf(err, errlen, ENG_EINVAL,
                          "class '%s' has %lld training images, fewer than examples_per_class %d",
                          d->classes[c], (long long)m, k);
            goto fail;
        }
        int64_t take = k ? m - k : (int64_t)(frac * m + 0.5);
        if (!k && take > m - 1) take = m - 1;
        for (int64_t i = 0; i < take; i++) mark[idx[i]] = 1;
    }
    ds_list keep = {0}, *val = &d->split[DS_VAL];
    if (list_reserve(&keep, tr->n ? tr->n : 1) || list_reserve(val, val->n + tr->n + 1)) {
        free(keep.v);
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < tr->n; i++) {
        if (!mark[i]) keep.v[keep.n++] = tr->v[i];
        else if (k) free(tr->v[i].path); /* few-shot drops the rest */
        else val->v[val->n++] = tr->v[i];
    }
    free(tr->v);
    *tr = keep;
fail:
    free(mark);
    free(idx);
    return rc;
}

static int walk_split(ds_dataset *d, const char *root, int split, int building, char *err,
                      size_t errlen)
{
    walk_ctx w = {.d = d, .root = root, .split = split, .building = building,
                  .out = &d->split[split], .err = err, .errlen = errlen};
    int rc = arc_walk(root, walk_cb, &w, err, errlen);
    if (building && !rc) {
        d->classes = w.names, d->ncls = w.nnames;
        w.names = NULL, w.nnames = 0;
    }
    for (int i = 0; i < w.nnames; i++) free(w.names[i]);
    free(w.names);
    d->non_image += w.loose;
    return rc == ENG_ENOMEM ? eng_errf(err, errlen, rc, "out of memory listing %s", root) : rc;
}

static int check_classes(ds_dataset *d, char *err, size_t errlen)
{
    if (d->ncls < 2)
        return eng_errf(err, errlen, ENG_EFORMAT,
                        "a dataset needs at least 2 classes (class folders), found %d", d->ncls);
    int64_t *per = calloc((size_t)d->ncls, sizeof *per);
    if (!per) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int64_t i = 0; i < d->split[DS_TRAIN].n; i++) per[d->split[DS_TRAIN].v[i].label]++;
    int rc = 0;
    for (int c = 0; c < d->ncls && !rc; c++)
        if (!per[c])
            rc = eng_errf(err, errlen, ENG_EFORMAT, "class '%s' has no usable training image%s",
                          d->classes[c], d->undecodable ? " (see the undecodable files)" : "");
    free(per);
    return rc;
}

static int open_images(ds_dataset *d, const char *dir, const ds_opts *o, char *err, size_t errlen)
{
    char train[4200], val[4200];
    int split = split_layout(dir), rc;
    snprintf(train, sizeof train, split ? "%s/train" : "%s", dir);
    snprintf(val, sizeof val, "%s/val", dir);
    int has_val = split && is_dir(val);
    if ((rc = walk_split(d, train, DS_TRAIN, 1, err, errlen))) return rc;
    if (has_val && (rc = walk_split(d, val, DS_VAL, 0, err, errlen))) return rc;
    if ((rc = validate_images(d, &d->split[DS_TRAIN])) || (rc = validate_images(d, &d->split[DS_VAL])))
        return eng_errf(err, errlen, rc, "out of memory checking images");
    if ((rc = check_classes(d, err, errlen))) return rc;
    median_size(d);
    d->validation = has_val ? "val folder" : "held out from train";
    if (!has_val && (rc = select_per_class(d, o->holdout > 0 ? o->holdout : DEFAULT_HOLDOUT, 0,
                                           o->seed, err, errlen)))
        return rc;
    return 0;
}

/* ---------------------------------------------------------------- tensor datasets */

static int tensor_pair(ds_dataset *d, const char *xk, const char *yk, int src, char *err,
                       size_t errlen)
{
    const eng_tensor *x = eng_npz_get(d->z, xk), *y = eng_npz_get(d->z, yk);
    if (!x && !y && src == 1) return 0;
    if (!x || !y)
        return eng_errf(err, errlen, ENG_EFORMAT, "tensor dataset needs both '%s' and '%s'", xk, yk);
    if (x->dtype != ENG_F32 || x->ndim != 4 || x->shape[1] != 3 || x->shape[2] < ENG_MIN_RES_DS ||
        x->shape[3] < ENG_MIN_RES_DS || x->shape[2] > 4096 || x->shape[3] > 4096)
        return eng_errf(err, errlen, ENG_EFORMAT,
                        "'%s' must be float32 [N, 3, H, W] with 32 <= H, W <= 4096", xk);
    if (src == 1 && (x->shape[2] != d->th || x->shape[3] != d->tw))
        return eng_errf(err, errlen, ENG_EFORMAT, "'%s' and 'x' differ in height or width", xk);
    d->th = (int)x->shape[2], d->tw = (int)x->shape[3];
    if (y->dtype != ENG_I64 || y->ndim != 1 || y->shape[0] != x->shape[0])
        return eng_errf(err, errlen, ENG_EFORMAT, "'%s' must be int64 [N] matching '%s'", yk, xk);
    const int64_t *lab = y->data;
    d->x[src] = x;
    ds_list *l = &d->split[src];
    if (list_reserve(l, y->shape[0] + 1)) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int64_t i = 0; i < y->shape[0]; i++) {
        if (lab[i] < 0 || lab[i] >= MAX_CLASSES)
            return eng_errf(err, errlen, ENG_EFORMAT, "%s[%lld] = %lld is not a class index", yk,
                            (long long)i, (long long)lab[i]);
        l->v[l->n++] = (ds_item){.row = i, .src = src, .label = (int)lab[i], .w = d->tw, .h = d->th};
        if (lab[i] >= d->ncls) d->ncls = (int)lab[i] + 1;
    }
    return 0;
}

static int tensor_classes(ds_dataset *d, char *err, size_t errlen)
{
    const eng_tensor *c = eng_npz_get(d->z, "classes");
    int n = d->ncls;
    if (c) {
        if (c->dtype != ENG_STR || c->ndim != 1 || c->shape[0] < n || c->shape[0] > MAX_CLASSES)
            return eng_errf(err, errlen, ENG_EFORMAT,
                            "'classes' must be a 1-D string array naming every label");
        n = (int)c->shape[0];
    }
    d->classes = calloc((size_t)(n ? n : 1), sizeof *d->classes);
    if (!d->classes) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        char name[1024];
        if (c && eng_tensor_str(c, i, name, sizeof name))
            return eng_errf(err, errlen, ENG_EFORMAT, "classes[%d] is not a valid string", i);
        if (!c) snprintf(name, sizeof name, "%d", i);
        if (!(d->classes[i] = strdup(name))) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        d->ncls = i + 1;
    }
    return 0;
}

static int open_tensors(ds_dataset *d, const char *path, const ds_opts *o, char *err,
                        size_t errlen)
{
    int rc = eng_npz_load(path, NULL, &d->z, err, errlen);
    if (rc) return rc;
    d->tensor = 1;
    if ((rc = tensor_pair(d, "x", "y", DS_TRAIN, err, errlen)) ||
        (rc = tensor_pair(d, "x_val", "y_val", DS_VAL, err, errlen)) ||
        (rc = tensor_classes(d, err, errlen)) || (rc = check_classes(d, err, errlen)))
        return rc;
    d->median_w = d->tw, d->median_h = d->th;
    d->validation = d->x[DS_VAL] ? "x_val" : "held out from train";
    if (!d->x[DS_VAL] && (rc = select_per_class(d, o->holdout > 0 ? o->holdout : DEFAULT_HOLDOUT,
                                                0, o->seed, err, errlen)))
        return rc;
    return 0;
}

/* ---------------------------------------------------------------- opening */

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

/* Unpacks an archive into o->unpack_dir or a fresh temporary directory (ours to remove). */
static int unpack(ds_dataset *d, const char *path, const ds_opts *o, char *dir, size_t dirlen,
                  char *err, size_t errlen)
{
    if (o->unpack_dir) {
        snprintf(dir, dirlen, "%s", o->unpack_dir);
    } else {
        const char *tmp = getenv("TMPDIR");
        char parent[4096];
        snprintf(parent, sizeof parent, "%s/bit-ds-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(parent)) return eng_errf(err, errlen, ENG_EIO, "mkdtemp: %s", strerror(errno));
        if (!(d->tmpdir = strdup(parent))) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        snprintf(dir, dirlen, "%s/data", parent);
    }
    return arc_extract_path(path, dir, &o->arc, NULL, err, errlen);
}

int ds_open(const char *path, const ds_opts *opts, ds_dataset **out, char *err, size_t errlen)
{
    ds_opts o = {0};
    if (opts) o = *opts;
    *out = NULL;
    if (o.holdout < 0 || o.holdout >= 1 || o.examples_per_class < 0)
        return eng_errf(err, errlen, ENG_EINVAL, "holdout must be in [0, 1), examples_per_class >= 0");
    ds_dataset *d = calloc(1, sizeof *d);
    if (!d) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    d->img = o.img;
    struct stat st;
    int rc;
    char dir[4200];
    if (stat(path, &st) != 0) {
        rc = eng_errf(err, errlen, ENG_ENOTFOUND, "%s: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = open_images(d, path, &o, err, errlen);
    } else if (ends_with(path, ".npz")) {
        rc = open_tensors(d, path, &o, err, errlen);
    } else if (!(rc = unpack(d, path, &o, dir, sizeof dir, err, errlen))) {
        rc = open_images(d, dir, &o, err, errlen);
    }
    if (!rc && o.examples_per_class)
        rc = select_per_class(d, 0, o.examples_per_class, o.seed, err, errlen);
    d->few_shot = o.examples_per_class;
    if (rc) {
        ds_free(d);
        return rc;
    }
    *out = d;
    return 0;
}

uint64_t ds_fingerprint(const ds_dataset *d)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
#define MIX(p, n) for (size_t k_ = 0; k_ < (n); k_++) h = (h ^ ((const unsigned char *)(p))[k_]) * 1099511628211ull
    for (int c = 0; c < d->ncls; c++) MIX(d->classes[c], strlen(d->classes[c]) + 1);
    for (int s = 0; s < 2; s++)
        for (int64_t i = 0; i < d->split[s].n; i++) {
            const ds_item *it = &d->split[s].v[i];
            const char *name = it->path ? strrchr(it->path, '/') : NULL;
            if (name) MIX(name, strlen(name));
            MIX(&it->row, sizeof it->row);
            MIX(&it->label, sizeof it->label);
        }
#undef MIX
    return h;
}

json_t *ds_summary(const ds_dataset *d)
{
    json_t *o = json_object(), *cls = json_array(), *splits = json_object(), *bad = json_array();
    for (int c = 0; c < d->ncls; c++) json_array_append_new(cls, json_string(d->classes[c]));
    static const char *names[] = {"train", "val"};
    for (int s = 0; s < 2; s++) {
        json_t *per = json_object();
        int64_t *cnt = calloc((size_t)d->ncls, sizeof *cnt);
        for (int64_t i = 0; cnt && i < d->split[s].n; i++) cnt[d->split[s].v[i].label]++;
        for (int c = 0; cnt && c < d->ncls; c++)
            json_object_set_new(per, d->classes[c], json_integer(cnt[c]));
        free(cnt);
        json_object_set_new(splits, names[s], json_pack("{s:I, s:o}", "total",
                                                        (json_int_t)d->split[s].n, "per_class", per));
    }
    for (int i = 0; i < d->undecodable && i < MAX_BAD_SHOWN; i++)
        json_array_append_new(bad, json_string(d->bad[i]));
    json_object_set_new(o, "kind", json_string(d->tensor ? "tensors" : "images"));
    json_object_set_new(o, "num_classes", json_integer(d->ncls));
    json_object_set_new(o, "classes", cls);
    json_object_set_new(o, "splits", splits);
    json_object_set_new(o, "validation", json_string(d->validation));
    json_object_set_new(o, "examples_per_class", d->few_shot ? json_integer(d->few_shot) : json_null());
    json_object_set_new(o, "skipped", json_pack("{s:I, s:I, s:o}", "non_image",
                                                (json_int_t)d->non_image, "undecodable",
                                                (json_int_t)d->undecodable, "undecodable_first", bad));
    json_object_set_new(o, "median_image_size", json_pack("[i,i]", d->median_w, d->median_h));
    return o;
}

int ds_example(const ds_dataset *d, ds_split s, int64_t i, int augment, int precrop, int crop,
               eng_rng *rng, float *dst, char *err, size_t errlen)
{
    if (i < 0 || i >= d->split[s].n) return eng_errf(err, errlen, ENG_EINVAL, "no example %lld", (long long)i);
    const ds_item *it = &d->split[s].v[i];
    if (d->tensor) {
        const eng_tensor *x = d->x[it->src];
        size_t per = (size_t)3 * d->th * d->tw;
        memcpy(dst, (const float *)x->data + per * (size_t)it->row, per * sizeof(float));
        return 0;
    }
    img_rgb8 *img = NULL;
    int rc = img_load_file(it->path, &d->img, augment ? precrop : crop, &img, err, errlen);
    if (!rc) {
        if (augment) {
            pre_aug aug;
            pre_aug_draw(rng, precrop, crop, &aug);
            rc = pre_train(img, precrop, crop, &aug, dst, err, errlen);
        } else {
            rc = pre_eval(img, crop, dst, err, errlen);
        }
    }
    img_rgb8_free(img);
    return rc;
}

/* Datasets and the batch loader. Every dataset is built here: JPEG and PNG files from the
 * timg.h encoders, archives with libarchive's writer, .npz files with eng_npz. Expected
 * values are recomputed from what each test wrote, never typed in.
 * `test_dataset --bench [N]` measures the loader's end-to-end throughput on N 1024x768 JPEGs
 * instead (not run by make check); DS_TEST_VERBOSE=1 shows a summary and every refusal. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dataset.h"
#include "npz.h"
#include "preproc.h"
#include "t.h"
#include "timg.h"

static char err[1024];

/* ---- building datasets ----------------------------------------------------------------- */

/* What a test wrote: each usable image with its class and size. */
typedef struct rec {
    char cls[32], rel[128];
    int w, h;
} rec;

typedef struct tree {
    char dir[600];
    rec r[256];
    int n;
} tree;

static void tree_init(tree *t, const char *name)
{
    snprintf(t->dir, sizeof t->dir, "%s/%s", t_tmpdir(), name);
    arc_remove_tree(t->dir, err, sizeof err);
    mkdir(t->dir, 0755);
    t->n = 0;
}

/* A JPEG (or PNG) of w x h whose pixels also depend on seed, at dir/rel. */
static int put_image(const char *dir, const char *rel, int w, int h, int png, uint64_t seed)
{
    uint8_t *px = make_rgb(w, h), *nz = make_noise(w * h * 3, seed);
    for (int i = 0; i < w * h * 3; i++) px[i] = (uint8_t)(px[i] / 2 + nz[i] / 2);
    size_t len = 0;
    jpeg_opts jo = {.quality = 90};
    png_opts po = {PNG_COLOR_TYPE_RGB, 8, 0, NULL, 0, NULL, 0, NULL};
    uint8_t *b = png ? png_encode(px, (size_t)w * 3, w, h, &po, &len) : jpeg_encode(px, w, h, &jo, &len);
    int rc = b ? timg_put(dir, rel, b, len) : -1;
    free(px), free(nz), free(b);
    return rc;
}

/* A usable image of class cls at [prefix]cls/name, recorded. */
static void add(tree *t, const char *prefix, const char *cls, const char *name, int w, int h)
{
    rec *r = &t->r[t->n];
    snprintf(r->cls, sizeof r->cls, "%s", cls);
    snprintf(r->rel, sizeof r->rel, "%s%s/%s", prefix, cls, name);
    r->w = w, r->h = h;
    int png = strstr(name, ".png") != NULL;
    if (put_image(t->dir, r->rel, w, h, png, (uint64_t)t->n + 1) == 0) t->n++;
}

static int put_text(const char *dir, const char *rel, const char *s)
{
    return timg_put(dir, rel, s, strlen(s));
}

/* A JPEG cut in half: the header is fine, the scan data ends early. */
static int put_truncated(const char *dir, const char *rel)
{
    size_t len;
    jpeg_opts o = {.quality = 90};
    uint8_t *j = jpeg_rgb(64, 48, &o, &len);
    int rc = timg_put(dir, rel, j, len / 2);
    free(j);
    return rc;
}

/* n images of class cls under prefix, every fifth one a folder deeper. Sides differ from
 * image to image (7 and 5 are prime to 97 and 89), so a median is never a tie by accident. */
static void add_class(tree *t, const char *prefix, const char *cls, int n, int png_every)
{
    for (int i = 0; i < n; i++) {
        char name[64];
        int png = png_every && i % png_every == 0;
        snprintf(name, sizeof name, "%s%03d.%s", i % 5 == 4 ? "sub/" : "", i, png ? "png" : "jpg");
        add(t, prefix, cls, name, 36 + t->n * 7 % 97, 33 + t->n * 5 % 89);
    }
}

static const rec *find_rec(const tree *t, const char *rel)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->r[i].rel, rel)) return &t->r[i];
    return NULL;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_i(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* The classes of t in sorted order (strcmp, as ImageFolder): written into names. */
static int sorted_classes(const tree *t, const char **names)
{
    int n = 0;
    for (int i = 0; i < t->n; i++) {
        int seen = 0;
        for (int k = 0; k < n; k++) seen |= !strcmp(names[k], t->r[i].cls);
        if (!seen) names[n++] = t->r[i].cls;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_cstr);
    return n;
}

static int64_t skipped(const json_t *s, const char *key)
{
    return json_integer_value(json_object_get(json_object_get(s, "skipped"), key));
}

static int64_t per_class(const json_t *s, const char *split, const char *cls)
{
    json_t *sp = json_object_get(json_object_get(s, "splits"), split);
    return json_integer_value(json_object_get(json_object_get(sp, "per_class"), cls));
}

static int dir_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return n == 0;
}

static int exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static ds_dataset *open_ok(const char *path, const ds_opts *o)
{
    ds_dataset *d = NULL;
    if (ds_open(path, o, &d, err, sizeof err)) fprintf(stderr, "  ds_open %s: %s\n", path, err);
    return d;
}

/* Every example of d (both splits) is one of t's usable images, at most once, with the label
 * of its class folder; returns how many of t's images were found. */
static int check_examples(const tree *t, const ds_dataset *d, const char *prefix_val)
{
    int seen[256] = {0}, found = 0;
    for (int s = 0; s < 2; s++)
        for (int64_t i = 0; i < ds_size(d, (ds_split)s); i++) {
            const char *name = ds_example_name(d, (ds_split)s, i);
            const rec *r = name ? find_rec(t, name) : NULL;
            T_CHECKF(r != NULL, "example %s is not one of the usable images", name ? name : "?");
            if (!r) continue;
            T_CHECKF(!seen[r - t->r]++, "%s appears twice", name);
            found += seen[r - t->r] == 1;
            T_CHECKF(!strcmp(ds_class_name(d, ds_label(d, (ds_split)s, i)), r->cls),
                     "%s labelled %s", name, ds_class_name(d, ds_label(d, (ds_split)s, i)));
            if (prefix_val) /* a val/ folder: the split follows the folder */
                T_CHECKF((s == DS_VAL) == !strncmp(name, prefix_val, strlen(prefix_val)),
                         "%s in split %d", name, s);
        }
    return found;
}

/* The median of each side over the training examples, from the sizes the test wrote. */
static void expected_median(const tree *t, const ds_dataset *d, int *mw, int *mh)
{
    int64_t n = ds_size(d, DS_TRAIN);
    int *w = malloc(sizeof(int) * (size_t)n), *h = malloc(sizeof(int) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        const rec *r = find_rec(t, ds_example_name(d, DS_TRAIN, i));
        w[i] = r ? r->w : -1, h[i] = r ? r->h : -1;
    }
    qsort(w, (size_t)n, sizeof *w, cmp_i);
    qsort(h, (size_t)n, sizeof *h, cmp_i);
    *mw = n % 2 ? w[n / 2] : (w[n / 2 - 1] + w[n / 2]) / 2;
    *mh = n % 2 ? h[n / 2] : (h[n / 2 - 1] + h[n / 2]) / 2;
    free(w), free(h);
}

/* Four classes written in unsorted order ("Zebra" sorts first under strcmp), JPEGs and PNGs
 * of varying sizes, some one folder deeper; and files that must be skipped and counted. */
enum { MIXED_NON_IMAGE = 2, MIXED_OUTSIDE = 1 };
static const char *const MIXED_BAD[] = {"dog/broken.jpg", "bird/fake.png"};

static void mixed_tree(tree *t, const char *name)
{
    tree_init(t, name);
    add_class(t, "", "dog", 7, 3);
    add_class(t, "", "cat", 20, 0);
    add_class(t, "", "Zebra", 3, 0);
    add_class(t, "", "bird", 12, 4);
    put_text(t->dir, "cat/notes.txt", "not an image");
    put_text(t->dir, "dog/labels.csv", "a,b\n");
    put_text(t->dir, "cat/.DS_Store", "hidden: ignored, not counted");
    put_text(t->dir, "README.txt", "outside any class folder");
    put_truncated(t->dir, MIXED_BAD[0]);
    put_text(t->dir, MIXED_BAD[1], "text named like an image");
}

static int bad_listed(const json_t *s, const char *name)
{
    json_t *a = json_object_get(json_object_get(s, "skipped"), "undecodable_first");
    for (size_t i = 0; i < json_array_size(a); i++) {
        const char *m = json_string_value(json_array_get(a, i));
        if (m && !strncmp(m, name, strlen(name)) && !strncmp(m + strlen(name), ": ", 2)) return 1;
    }
    return 0;
}

/* ---- class folders --------------------------------------------------------------------- */

static void class_folders(void)
{
    tree t;
    mixed_tree(&t, "mixed");
    ds_opts o = {.seed = 3};
    ds_dataset *d = open_ok(t.dir, &o);
    T_REQUIRE(d);
    const char *names[16];
    int nc = sorted_classes(&t, names);
    T_EQ(ds_num_classes(d), nc);
    for (int c = 0; c < nc && c < ds_num_classes(d); c++)
        T_CHECKF(!strcmp(ds_class_name(d, c), names[c]), "class %d is %s", c, ds_class_name(d, c));
    T_CHECK(ds_class_name(d, nc) == NULL && ds_label(d, DS_TRAIN, -1) == -1);
    T_EQ(check_examples(&t, d, NULL), t.n);
    json_t *s = ds_summary(d);
    if (getenv("DS_TEST_VERBOSE")) {
        char *txt = json_dumps(s, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", txt);
        free(txt);
    }
    T_CHECK(skipped(s, "non_image") == MIXED_NON_IMAGE);
    T_CHECK(skipped(s, "outside_class") == MIXED_OUTSIDE);
    T_CHECK(skipped(s, "undecodable") == 2);
    T_CHECK(bad_listed(s, MIXED_BAD[0]) && bad_listed(s, MIXED_BAD[1]));
    for (int c = 0; c < nc; c++) {
        int64_t tr = 0, va = 0;
        for (int64_t i = 0; i < ds_size(d, DS_TRAIN); i++) tr += ds_label(d, DS_TRAIN, i) == c;
        for (int64_t i = 0; i < ds_size(d, DS_VAL); i++) va += ds_label(d, DS_VAL, i) == c;
        T_CHECK(per_class(s, "train", names[c]) == tr && per_class(s, "val", names[c]) == va);
    }
    int mw, mh, ew, eh;
    ds_median_size(d, &mw, &mh);
    expected_median(&t, d, &ew, &eh);
    json_t *m = json_object_get(s, "median_image_size");
    T_CHECKF(mw == ew && mh == eh, "median %dx%d, want %dx%d", mw, mh, ew, eh);
    T_CHECK(json_integer_value(json_array_get(m, 0)) == ew && json_integer_value(json_array_get(m, 1)) == eh);
    T_CHECK(!strcmp(json_string_value(json_object_get(s, "validation")), "held out from train"));
    json_decref(s);
    ds_free(d);
}

static void train_val_layout(void)
{
    tree t;
    tree_init(&t, "split");
    add_class(&t, "train/", "b", 6, 0);
    add_class(&t, "train/", "a", 5, 2);
    add_class(&t, "train/", "c", 4, 0);
    add_class(&t, "val/", "a", 2, 0);
    add_class(&t, "val/", "c", 3, 0);
    put_text(t.dir, "README.md", "outside any split");
    put_image(t.dir, "test/a/0.jpg", 40, 40, 0, 1); /* a test/ split is ignored */
    ds_dataset *d = open_ok(t.dir, NULL);
    T_REQUIRE(d);
    const char *names[16];
    int nc = sorted_classes(&t, names);
    T_EQ(ds_num_classes(d), nc);
    T_CHECK(check_examples(&t, d, "val/") == t.n);
    int64_t nval = 0;
    for (int i = 0; i < t.n; i++) nval += !strncmp(t.r[i].rel, "val/", 4);
    T_CHECK(ds_size(d, DS_VAL) == nval && ds_size(d, DS_TRAIN) == t.n - nval);
    json_t *s = ds_summary(d);
    T_CHECK(!strcmp(json_string_value(json_object_get(s, "validation")), "val folder"));
    T_CHECK(json_is_null(json_object_get(s, "holdout")));
    T_CHECK(skipped(s, "outside_class") == 1 && skipped(s, "non_image") == 0);
    json_decref(s);
    ds_free(d);
    tree_init(&t, "split-empty-val"); /* a val/ without images: held out as without val/ */
    add_class(&t, "train/", "a", 10, 0);
    add_class(&t, "train/", "b", 10, 0);
    put_text(t.dir, "val/a/notes.txt", "no image");
    T_REQUIRE((d = open_ok(t.dir, NULL)) != NULL);
    T_EQ(ds_size(d, DS_VAL), 2 * (int64_t)floor(0.1 * 10 + 0.5));
    T_EQ(check_examples(&t, d, NULL), t.n);
    ds_free(d);
}

/* A class that happens to be called "train" (it holds images, not class folders). */
static void train_as_class(void)
{
    tree t;
    tree_init(&t, "train-class");
    add_class(&t, "", "train", 3, 0);
    add_class(&t, "", "bus", 4, 0);
    ds_dataset *d = open_ok(t.dir, NULL);
    T_REQUIRE(d);
    T_CHECK(ds_num_classes(d) == 2 && !strcmp(ds_class_name(d, 1), "train"));
    T_EQ(check_examples(&t, d, NULL), t.n);
    ds_free(d);
}

static void expect_error(const char *dir, int code, const char *needle)
{
    ds_dataset *d = NULL;
    err[0] = 0;
    int rc = ds_open(dir, NULL, &d, err, sizeof err);
    T_CHECKF(rc == code, "%s: rc %d (want %d): %s", dir, rc, code, err);
    T_CHECKF(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
    T_EQ(d, NULL);
    if (getenv("DS_TEST_VERBOSE")) printf("     refused: %s\n", err);
    ds_free(d);
}

static void bad_layouts(void)
{
    tree t;
    tree_init(&t, "val-unknown");
    add_class(&t, "train/", "a", 3, 0);
    add_class(&t, "train/", "b", 3, 0);
    add_class(&t, "val/", "a", 1, 0);
    add_class(&t, "val/", "zz", 1, 0);
    expect_error(t.dir, ENG_EFORMAT, "val/zz");
    tree_init(&t, "one-class");
    add_class(&t, "", "only", 4, 0);
    expect_error(t.dir, ENG_EFORMAT, "at least 2 classes");
    tree_init(&t, "corrupt-class");
    add_class(&t, "", "a", 3, 0);
    put_truncated(t.dir, "b/only.jpg");
    expect_error(t.dir, ENG_EFORMAT, "'b'");
    tree_init(&t, "empty-class");
    add_class(&t, "", "a", 3, 0);
    add_class(&t, "", "b", 3, 0);
    char p[800];
    snprintf(p, sizeof p, "%s/c", t.dir);
    mkdir(p, 0755);
    expect_error(t.dir, ENG_EFORMAT, "'c'");
    tree_init(&t, "extra-split");
    add_class(&t, "train/", "a", 2, 0);
    add_class(&t, "train/", "b", 2, 0);
    add_class(&t, "", "other", 2, 0);
    expect_error(t.dir, ENG_EFORMAT, "other");
    expect_error("/nonexistent/dataset", ENG_ENOTFOUND, "/nonexistent/dataset");
}

/* ---- hold-out and few-shot ------------------------------------------------------------- */

static const char *const HOLD_CLS[] = {"w", "x", "y", "z"};
static const int HOLD_N[] = {5, 14, 25, 40};

static void holdout_tree(tree *t)
{
    tree_init(t, "holdout");
    for (int c = 0; c < 4; c++) add_class(t, "", HOLD_CLS[c], HOLD_N[c], 0);
}

/* 1 when both datasets hold the same examples in the same splits and order. */
static int same_split(const ds_dataset *a, const ds_dataset *b)
{
    for (int s = 0; s < 2; s++) {
        if (ds_size(a, (ds_split)s) != ds_size(b, (ds_split)s)) return 0;
        for (int64_t i = 0; i < ds_size(a, (ds_split)s); i++)
            if (strcmp(ds_example_name(a, (ds_split)s, i), ds_example_name(b, (ds_split)s, i)))
                return 0;
    }
    return 1;
}

static int64_t count_label(const ds_dataset *d, ds_split s, int c)
{
    int64_t n = 0;
    for (int64_t i = 0; i < ds_size(d, s); i++) n += ds_label(d, s, i) == c;
    return n;
}

/* Each class of n images gives round(frac * n) to validation (at least one stays). */
static void check_stratified(const tree *t, const ds_dataset *d, double frac)
{
    T_CHECK(check_examples(t, d, NULL) == t->n);
    for (int c = 0; c < 4; c++) {
        int64_t want = (int64_t)floor(frac * HOLD_N[c] + 0.5);
        if (want > HOLD_N[c] - 1) want = HOLD_N[c] - 1;
        T_CHECKF(count_label(d, DS_VAL, c) == want, "class %s: %lld held out of %d at %.2f, want %lld",
                 HOLD_CLS[c], (long long)count_label(d, DS_VAL, c), HOLD_N[c], frac, (long long)want);
        T_EQ(count_label(d, DS_TRAIN, c), HOLD_N[c] - want);
    }
}

static void holdout(void)
{
    tree t;
    holdout_tree(&t);
    ds_opts o1 = {.seed = 1}, o2 = {.seed = 2}, o3 = {.seed = 1, .holdout = 0.3};
    ds_dataset *a = open_ok(t.dir, &o1), *b = open_ok(t.dir, &o1), *c = open_ok(t.dir, &o2),
               *e = open_ok(t.dir, &o3);
    if (a && b && c && e) {
        T_CHECK(same_split(a, b) && ds_fingerprint(a) == ds_fingerprint(b));
        T_CHECK(!same_split(a, c) && ds_fingerprint(a) != ds_fingerprint(c));
        check_stratified(&t, a, 0.1);
        check_stratified(&t, c, 0.1);
        check_stratified(&t, e, 0.3);
        json_t *s = ds_summary(e);
        T_CHECK(json_real_value(json_object_get(s, "holdout")) == 0.3);
        json_decref(s);
    }
    T_CHECK(a && b && c && e);
    ds_free(a), ds_free(b), ds_free(c), ds_free(e);
}

static void few_shot(void)
{
    tree t;
    holdout_tree(&t);
    ds_opts full = {.seed = 5}, k3 = {.seed = 5, .examples_per_class = 3};
    ds_opts k3b = {.seed = 6, .examples_per_class = 3};
    ds_dataset *f = open_ok(t.dir, &full), *a = open_ok(t.dir, &k3), *b = open_ok(t.dir, &k3),
               *c = open_ok(t.dir, &k3b);
    T_REQUIRE(f && a && b && c);
    for (int k = 0; k < 4; k++) T_CHECK(count_label(a, DS_TRAIN, k) == k3.examples_per_class);
    T_CHECK(same_split(a, b) && ds_fingerprint(a) == ds_fingerprint(b));
    T_CHECK(!same_split(a, c));
    /* K draws from what the hold-out left: validation does not depend on K. */
    T_EQ(ds_size(a, DS_VAL), ds_size(f, DS_VAL));
    for (int64_t i = 0; i < ds_size(a, DS_VAL) && i < ds_size(f, DS_VAL); i++)
        T_CHECK(!strcmp(ds_example_name(a, DS_VAL, i), ds_example_name(f, DS_VAL, i)));
    for (int64_t i = 0; i < ds_size(a, DS_TRAIN); i++) { /* a subset of the full training split */
        int in = 0;
        for (int64_t j = 0; j < ds_size(f, DS_TRAIN); j++)
            in |= !strcmp(ds_example_name(a, DS_TRAIN, i), ds_example_name(f, DS_TRAIN, j));
        T_CHECK(in);
    }
    json_t *s = ds_summary(a);
    T_CHECK(json_integer_value(json_object_get(s, "examples_per_class")) == 3);
    json_decref(s);
    int small = 0; /* the class with the fewest training images after the hold-out */
    for (int k = 1; k < 4; k++)
        if (count_label(f, DS_TRAIN, k) < count_label(f, DS_TRAIN, small)) small = k;
    ds_opts too_many = {.seed = 5, .examples_per_class = (int)count_label(f, DS_TRAIN, small) + 1};
    ds_dataset *x = NULL;
    T_CHECK(ds_open(t.dir, &too_many, &x, err, sizeof err) == ENG_EINVAL && !x);
    char want[64];
    snprintf(want, sizeof want, "'%s'", HOLD_CLS[small]);
    T_CHECKF(strstr(err, want) != NULL, "%s", err);
    ds_free(f), ds_free(a), ds_free(b), ds_free(c);
}

/* ---- archives -------------------------------------------------------------------------- */

/* Points TMPDIR (where ds_open unpacks) at a fresh empty directory; returns its path. */
static const char *scratch_tmp(const char *name, char *old, size_t oldlen)
{
    static char p[700];
    const char *cur = getenv("TMPDIR");
    snprintf(old, oldlen, "%s", cur ? cur : "");
    snprintf(p, sizeof p, "%s/%s", t_tmpdir(), name);
    arc_remove_tree(p, err, sizeof err);
    mkdir(p, 0755);
    setenv("TMPDIR", p, 1);
    return p;
}

static void restore_tmp(const char *old)
{
    if (*old) setenv("TMPDIR", old, 1);
    else unsetenv("TMPDIR");
}

/* The summary without "root", which names the wrapper folder an archive may add. */
static json_t *summary_sans_root(const ds_dataset *d, const char *want_root)
{
    json_t *s = ds_summary(d);
    T_CHECKF(!strcmp(json_string_value(json_object_get(s, "root")), want_root), "root '%s'",
             json_string_value(json_object_get(s, "root")));
    json_object_del(s, "root");
    return s;
}

static void archives(void)
{
    static const int kinds[] = {TIMG_TAR, TIMG_TAR_GZ, TIMG_TAR_XZ, TIMG_ZIP};
    static const char *const ext[] = {"tar", "tar.gz", "tar.xz", "zip"};
    static const char *const prefixes[] = {"", "flowers/"};
    tree t;
    mixed_tree(&t, "arc-src");
    ds_opts o = {.seed = 8};
    ds_dataset *d0 = open_ok(t.dir, &o);
    T_REQUIRE(d0);
    json_t *s0 = summary_sans_root(d0, "");
    char old[700];
    const char *tmp = scratch_tmp("arc-tmp", old, sizeof old);
    for (int k = 0; k < 4; k++)
        for (int p = 0; p < 2; p++) {
            char path[800];
            snprintf(path, sizeof path, "%s/ds-%d.%s", t_tmpdir(), p, ext[k]);
            T_REQUIRE(timg_archive_dir(t.dir, path, kinds[k], prefixes[p]) == 0);
            ds_dataset *d = open_ok(path, &o);
            T_CHECKF(d != NULL, "%s%s", prefixes[p], ext[k]);
            if (!d) continue;
            json_t *s = summary_sans_root(d, prefixes[p]);
            T_CHECKF(json_equal(s, s0), "%s%s: summary differs from the directory's", prefixes[p], ext[k]);
            T_CHECKF(ds_fingerprint(d) == ds_fingerprint(d0), "%s%s: fingerprint", prefixes[p], ext[k]);
            T_EQ(dir_empty(tmp), 0); /* unpacked there while open */
            json_decref(s);
            ds_free(d);
            T_CHECKF(dir_empty(tmp) == 1, "%s%s: unpacked files left after ds_free", prefixes[p], ext[k]);
        }
    restore_tmp(old);
    /* Kept unpacked (as a server keeps uploads), the wrapped tree reads as its archive did. */
    char path[800], unpack[800];
    snprintf(path, sizeof path, "%s/ds-1.zip", t_tmpdir());
    snprintf(unpack, sizeof unpack, "%s/arc-kept", t_tmpdir());
    ds_opts keep = {.seed = 8, .unpack_dir = unpack};
    ds_dataset *a = open_ok(path, &keep), *b = open_ok(unpack, &o);
    T_REQUIRE(a && b);
    json_t *sa = summary_sans_root(a, "flowers/"), *sb = summary_sans_root(b, "flowers/");
    T_CHECK(json_equal(sa, s0) && json_equal(sb, s0));
    T_CHECK(ds_fingerprint(a) == ds_fingerprint(d0) && ds_fingerprint(b) == ds_fingerprint(d0));
    json_decref(sa), json_decref(sb);
    ds_free(a), ds_free(b);
    json_decref(s0);
    ds_free(d0);
}

/* Two fine classes and one hostile entry (if any), as a tar.gz at path. */
static int hostile(const char *path, const timg_ent *bad)
{
    size_t len;
    jpeg_opts jo = {.quality = 90};
    uint8_t *j = jpeg_rgb(40, 40, &jo, &len);
    timg_ent es[3] = {{"a/1.jpg", j, len, 0}, {"b/1.jpg", j, len, 0}};
    if (bad) es[2] = *bad;
    int rc = timg_archive(path, TIMG_TAR_GZ, es, bad ? 3 : 2);
    free(j);
    return rc;
}

static void hostile_archives(void)
{
    static const char payload[] = "\xff\xd8\xff not really";
    const timg_ent bad[] = {
        {"../evil.jpg", payload, sizeof payload, 0},
        {"b/2.jpg", "/etc/passwd", 0, 1},
        {"b/../../evil.jpg", payload, sizeof payload, 0},
        {"/tmp/evil-abs.jpg", payload, sizeof payload, 0},
    };
    char old[700], path[800], unpack[800];
    const char *tmp = scratch_tmp("hostile-tmp", old, sizeof old);
    snprintf(path, sizeof path, "%s/hostile.tar.gz", t_tmpdir());
    snprintf(unpack, sizeof unpack, "%s/hostile-unpack", t_tmpdir());
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        T_REQUIRE(hostile(path, &bad[i]) == 0);
        for (int own = 0; own < 2; own++) {
            ds_opts o = {.unpack_dir = own ? unpack : NULL};
            ds_dataset *d = NULL;
            err[0] = 0;
            int rc = ds_open(path, &o, &d, err, sizeof err);
            T_CHECKF(rc == ENG_EFORMAT && !d, "%s: rc %d: %s", bad[i].name, rc, err);
            T_CHECKF(strstr(err, bad[i].name) != NULL, "%s: error '%s'", bad[i].name, err);
            T_CHECKF(dir_empty(tmp) == 1 && !exists(unpack), "%s: files left behind", bad[i].name);
            if (getenv("DS_TEST_VERBOSE")) printf("     refused: %s\n", err);
            ds_free(d);
        }
    }
    T_CHECK(!exists("/tmp/evil-abs.jpg"));
    /* A valid archive of an invalid dataset: what ds_open unpacked goes too. */
    timg_ent one[] = {{"only/1.jpg", payload, sizeof payload, 0}};
    T_REQUIRE(timg_archive(path, TIMG_TAR_GZ, one, 1) == 0);
    ds_opts o = {.unpack_dir = unpack};
    ds_dataset *d = NULL;
    T_CHECK(ds_open(path, &o, &d, err, sizeof err) == ENG_EFORMAT && !exists(unpack));
    /* unpack_dir must not exist, and an existing one is left alone. */
    T_REQUIRE(hostile(path, NULL) == 0);
    mkdir(unpack, 0755);
    T_CHECK(ds_open(path, &o, &d, err, sizeof err) == ENG_EINVAL && dir_empty(unpack) == 1);
    rmdir(unpack);
    T_REQUIRE((d = open_ok(path, &o)) != NULL);
    ds_free(d); /* the caller's unpack_dir stays theirs */
    T_CHECK(exists(unpack));
    arc_remove_tree(unpack, err, sizeof err);
    restore_tmp(old);
}

/* Archive and image limits from ds_opts: an archive over them is refused and removed, an
 * image over them is skipped and reported like an undecodable one. */
static void limits(void)
{
    tree t;
    tree_init(&t, "limits");
    add(&t, "", "a", "1.jpg", 40, 40);
    add(&t, "", "a", "2.jpg", 40, 30);
    add(&t, "", "b", "1.jpg", 30, 40);
    put_image(t.dir, "b/huge.jpg", 100, 100, 0, 9);
    ds_opts o = {.img = {.max_pixels = 40 * 40}};
    ds_dataset *d = open_ok(t.dir, &o);
    T_REQUIRE(d);
    json_t *s = ds_summary(d);
    T_CHECK(skipped(s, "undecodable") == 1 && bad_listed(s, "b/huge.jpg"));
    T_EQ(check_examples(&t, d, NULL), t.n);
    json_decref(s);
    ds_free(d);
    char old[700], path[800];
    const char *tmp = scratch_tmp("limits-tmp", old, sizeof old);
    snprintf(path, sizeof path, "%s/limits.tar", t_tmpdir());
    T_REQUIRE(timg_archive_dir(t.dir, path, TIMG_TAR, "") == 0);
    ds_opts small = {.arc = {.max_entries = 2}};
    err[0] = 0;
    T_CHECKF(ds_open(path, &small, &d, err, sizeof err) == ENG_ELIMIT && !d, "%s", err);
    T_EQ(dir_empty(tmp), 1);
    restore_tmp(old);
}

/* ---- tensor datasets ------------------------------------------------------------------- */

/* x [n, 3, h, w]: element 0 of row i is base + i, so a row can be told after the loader. */
static eng_tensor *tx(int n, int h, int w, float base)
{
    int64_t shape[] = {n, 3, h, w};
    eng_tensor *t = eng_tensor_new(ENG_F32, 0, 4, shape);
    float *v = t->data;
    size_t per = (size_t)3 * h * w;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; k < per; k++)
            v[i * per + k] = k ? sinf(0.01f * (float)(k + (size_t)i)) : base + (float)i;
    return t;
}

static eng_tensor *ty(int n, int ncls)
{
    int64_t shape[] = {n};
    eng_tensor *t = eng_tensor_new(ENG_I64, 0, 1, shape);
    for (int i = 0; i < n; i++) ((int64_t *)t->data)[i] = i % ncls;
    return t;
}

/* NumPy '<U' strings: UTF-32 code units, NUL-padded to the longest. */
static eng_tensor *tstr(const char *const *names, int n)
{
    size_t chars = 1;
    for (int i = 0; i < n; i++) chars = strlen(names[i]) > chars ? strlen(names[i]) : chars;
    int64_t shape[] = {n};
    eng_tensor *t = eng_tensor_new(ENG_STR, 4 * chars, 1, shape);
    uint32_t *u = t->data;
    for (int i = 0; i < n; i++)
        for (size_t k = 0; names[i][k]; k++) u[(size_t)i * chars + k] = (unsigned char)names[i][k];
    return t;
}

/* An .npz at path with n training rows, nval validation rows (0: no x_val), ncls classes
 * (named when names is given). */
static int marker_npz(const char *path, int n, int nval, int ncls, const char *const *names)
{
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", tx(n, 32, 40, 0));
    eng_npz_put(z, "y", ty(n, ncls));
    if (nval) {
        eng_npz_put(z, "x_val", tx(nval, 32, 40, 1000));
        eng_npz_put(z, "y_val", ty(nval, ncls));
    }
    if (names) eng_npz_put(z, "classes", tstr(names, ncls));
    int rc = eng_npz_save(path, z, 1, err, sizeof err);
    eng_npz_free(z);
    return rc;
}

static void tensors(void)
{
    static const char *const names[] = {"ant", "bee", "cow"};
    const int n = 30, nval = 6;
    char path[800];
    snprintf(path, sizeof path, "%s/t.npz", t_tmpdir());
    for (int with_val = 0; with_val < 2; with_val++) {
        T_REQUIRE(marker_npz(path, n, with_val ? nval : 0, 3, with_val ? NULL : names) == 0);
        ds_opts o = {.seed = 2};
        ds_dataset *d = open_ok(path, &o);
        T_REQUIRE(d);
        int h, w, seen[64] = {0};
        ds_tensor_size(d, &h, &w);
        T_CHECK(h == 32 && w == 40 && ds_num_classes(d) == 3);
        ds_median_size(d, &w, &h);
        T_CHECK(h == 32 && w == 40);
        for (int c = 0; c < 3; c++) {
            char num[8];
            snprintf(num, sizeof num, "%d", c);
            T_CHECK(!strcmp(ds_class_name(d, c), with_val ? num : names[c]));
            int64_t want = with_val ? nval / 3 : (int64_t)floor(0.1 * (n / 3) + 0.5);
            T_EQ(count_label(d, DS_VAL, c), want);
        }
        T_EQ(ds_size(d, DS_TRAIN) + ds_size(d, DS_VAL), n + (with_val ? nval : 0));
        float *x = malloc(sizeof(float) * 3 * 32 * 40);
        eng_tensor *ref = tx(n, 32, 40, 0), *refv = tx(nval, 32, 40, 1000);
        for (int s = 0; s < 2; s++)
            for (int64_t i = 0; i < ds_size(d, (ds_split)s); i++) {
                eng_rng r;
                eng_rng_seed(&r, (uint64_t)i);
                T_REQUIRE(ds_example(d, (ds_split)s, i, 1, 64, 48, &r, x, err, sizeof err) == 0);
                int row = (int)x[0] % 1000, v = x[0] >= 1000;
                const float *want = (const float *)(v ? refv : ref)->data + (size_t)row * 3 * 32 * 40;
                T_CHECKF(!memcmp(x, want, sizeof(float) * 3 * 32 * 40), "row %d not copied as is", row);
                T_CHECK(ds_label(d, (ds_split)s, i) == row % 3 && v == (with_val && s == DS_VAL));
                seen[v * 32 + row]++;
            }
        for (int k = 0; k < n; k++) T_CHECK(seen[k] == 1);
        json_t *sm = ds_summary(d);
        T_CHECK(!strcmp(json_string_value(json_object_get(sm, "kind")), "tensors"));
        T_CHECK(!strcmp(json_string_value(json_object_get(sm, "validation")),
                        with_val ? "x_val" : "held out from train"));
        json_decref(sm);
        free(x);
        eng_tensor_free(ref), eng_tensor_free(refv);
        ds_free(d);
    }
}

typedef struct tbad { const char *what, *needle; } tbad;
static const tbad TBAD[] = {
    {"x int64", "'x'"},        {"x 3-D", "'x'"},          {"x one channel", "'x'"},
    {"x 16x16", "'x'"},        {"y short", "'y'"},        {"y float32", "'y'"},
    {"label -1", "y[4]"},      {"label past classes", "'classes'"},
    {"NaN in x", "NaN"},       {"x_val other size", "'x_val'"},
    {"a name twice", "twice"}, {"no y", "'y'"},           {"x_val alone", "'y_val'"},
    {"label 1 unused", "'1'"}, {"classes float", "'classes'"}, {"empty name", "classes[1]"},
};

static eng_tensor *f32(int ndim, const int64_t *shape) { return eng_tensor_new(ENG_F32, 0, ndim, shape); }

static eng_npz *bad_npz(int which)
{
    const int n = 12;
    const char *names[] = {"ant", "bee", "cow"};
    eng_tensor *x = tx(n, 32, 32, 0), *y = ty(n, 3), *cls = NULL;
    int64_t *lab = y->data;
    eng_npz *z = eng_npz_new();
    switch (which) {
    case 0: eng_tensor_free(x), x = eng_tensor_new(ENG_I64, 0, 4, (int64_t[]){n, 3, 32, 32}); break;
    case 1: eng_tensor_free(x), x = f32(3, (int64_t[]){n, 3, 1024}); break;
    case 2: eng_tensor_free(x), x = f32(4, (int64_t[]){n, 1, 32, 32}); break;
    case 3: eng_tensor_free(x), x = f32(4, (int64_t[]){n, 3, 16, 16}); break;
    case 4: eng_tensor_free(y), y = ty(n - 1, 3); break;
    case 5: eng_tensor_free(y), y = f32(1, (int64_t[]){n}); break;
    case 6: lab[4] = -1; break;
    case 7: lab[4] = 3; break;
    case 8: ((float *)x->data)[100] = NAN; break;
    case 9: eng_npz_put(z, "x_val", tx(2, 32, 40, 0)), eng_npz_put(z, "y_val", ty(2, 3)); break;
    case 10: names[2] = "ant"; break;
    case 11: eng_tensor_free(y), y = NULL; break;
    case 12: eng_npz_put(z, "x_val", tx(2, 32, 32, 0)); break;
    case 13: for (int i = 0; i < n; i++) lab[i] = i % 2 * 2; break;
    case 14: cls = f32(1, (int64_t[]){3}); break;
    case 15: names[1] = ""; break;
    }
    eng_npz_put(z, "x", x);
    if (y) eng_npz_put(z, "y", y);
    if (which != 13) eng_npz_put(z, "classes", cls ? cls : tstr(names, 3));
    return z;
}

static void tensors_bad(void)
{
    char path[800];
    snprintf(path, sizeof path, "%s/bad.npz", t_tmpdir());
    for (int i = 0; i < (int)(sizeof TBAD / sizeof *TBAD); i++) {
        eng_npz *z = bad_npz(i);
        T_REQUIRE(eng_npz_save(path, z, 0, err, sizeof err) == 0);
        eng_npz_free(z);
        ds_dataset *d = NULL;
        err[0] = 0;
        int rc = ds_open(path, NULL, &d, err, sizeof err);
        T_CHECKF(rc == ENG_EFORMAT && !d, "%s: rc %d: %s", TBAD[i].what, rc, err);
        T_CHECKF(strstr(err, TBAD[i].needle) != NULL, "%s: '%s' lacks %s", TBAD[i].what, err,
                 TBAD[i].needle);
        if (getenv("DS_TEST_VERBOSE")) printf("     %s refused: %s\n", TBAD[i].what, err);
        ds_free(d);
    }
}

static long peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atol(line + 6);
    if (f) fclose(f);
    return kb;
}

/* A deflated npz whose x declares 256 MiB of zeros (it compresses to about 256 KiB) against a
 * 16 MiB dataset limit: refused from its headers, in a child whose peak memory stays small. */
static void tensors_bomb(void)
{
    char path[800];
    snprintf(path, sizeof path, "%s/bomb.npz", t_tmpdir());
    int64_t xs[] = {21845, 3, 32, 32}, ys[] = {21845};
    eng_npz *z = eng_npz_new();
    eng_tensor *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int64_t i = 0; i < ys[0]; i++) ((int64_t *)y->data)[i] = i % 2;
    eng_npz_put(z, "x", eng_tensor_new(ENG_F32, 0, 4, xs));
    eng_npz_put(z, "y", y);
    T_REQUIRE(eng_npz_save(path, z, 1, err, sizeof err) == 0);
    eng_npz_free(z);
    struct stat sb;
    T_REQUIRE(stat(path, &sb) == 0 && sb.st_size < (4 << 20));
    int fd[2];
    T_REQUIRE(pipe(fd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ds_opts o = {.arc = {.max_total_bytes = 16 << 20}};
        ds_dataset *d = NULL;
        long before = peak_rss_kb();
        int rc = ds_open(path, &o, &d, err, sizeof err);
        long msg[3] = {rc, before, peak_rss_kb()};
        if (write(fd[1], msg, sizeof msg) != sizeof msg) _exit(2);
        _exit(0);
    }
    long msg[3] = {0};
    close(fd[1]);
    T_CHECK(read(fd[0], msg, sizeof msg) == sizeof msg);
    close(fd[0]);
    waitpid(pid, NULL, 0);
    T_EQ(msg[0], ENG_ELIMIT);
    T_CHECKF(msg[2] - msg[1] < 8 * 1024, "peak grew by %ld KiB", msg[2] - msg[1]);
    /* within the limit, the same file opens */
    ds_opts big = {.arc = {.max_total_bytes = 512 << 20}};
    ds_dataset *d = NULL;
    T_EQ(ds_open(path, &big, &d, err, sizeof err), 0);
    ds_free(d);
}

/* ---- ds_example ------------------------------------------------------------------------ */

/* d's example i of split s, decoded and transformed here by the image module directly. */
static int reference(const tree *t, const ds_dataset *d, int64_t i, int augment, int precrop,
                     int crop, uint64_t seed, float *dst)
{
    char path[800];
    snprintf(path, sizeof path, "%s/%s", t->dir, ds_example_name(d, DS_TRAIN, i));
    img_rgb8 *img = NULL;
    int rc = img_load_file(path, NULL, augment ? precrop : crop, &img, err, sizeof err);
    if (!rc && augment) {
        eng_rng r;
        pre_aug aug;
        eng_rng_seed(&r, seed);
        pre_aug_draw(&r, precrop, crop, &aug);
        rc = pre_train(img, precrop, crop, &aug, dst, err, sizeof err);
    } else if (!rc) {
        rc = pre_eval(img, crop, dst, err, sizeof err);
    }
    img_rgb8_free(img);
    return rc;
}

static void example_transforms(void)
{
    enum { CROP = 64, PRECROP = 96, SEEDS = 6 };
    const size_t per = 3 * CROP * CROP, bytes = sizeof(float) * per;
    tree t;
    tree_init(&t, "transforms");
    add(&t, "", "a", "big.jpg", 300, 200);
    add(&t, "", "a", "wide.png", 260, 120);
    add(&t, "", "b", "tall.jpg", 180, 240);
    add(&t, "", "b", "square.jpg", 150, 150);
    ds_dataset *d = open_ok(t.dir, NULL);
    T_REQUIRE(d);
    float *got = malloc(bytes * SEEDS), *want = malloc(bytes);
    for (int64_t i = 0; i < ds_size(d, DS_TRAIN); i++) {
        T_REQUIRE(ds_example(d, DS_TRAIN, i, 0, 0, CROP, NULL, got, err, sizeof err) == 0);
        T_REQUIRE(reference(&t, d, i, 0, 0, CROP, 0, want) == 0);
        T_CHECKF(!memcmp(got, want, bytes), "%s: eval differs", ds_example_name(d, DS_TRAIN, i));
        int distinct = 1;
        for (int s = 0; s < SEEDS; s++) {
            eng_rng r;
            eng_rng_seed(&r, (uint64_t)s + 1);
            float *g = got + per * (size_t)s;
            T_REQUIRE(ds_example(d, DS_TRAIN, i, 1, PRECROP, CROP, &r, g, err, sizeof err) == 0);
            T_REQUIRE(reference(&t, d, i, 1, PRECROP, CROP, (uint64_t)s + 1, want) == 0);
            T_CHECKF(!memcmp(g, want, bytes), "%s seed %d: augment differs", ds_example_name(d, DS_TRAIN, i), s);
            distinct += s > 0 && memcmp(g, got, bytes) != 0;
        }
        T_CHECKF(distinct > SEEDS / 2, "%s: only %d distinct augmentations", ds_example_name(d, DS_TRAIN, i), distinct);
    }
    T_EQ(ds_example(d, DS_TRAIN, ds_size(d, DS_TRAIN), 0, 0, CROP, NULL, got, err, sizeof err), ENG_EINVAL);
    T_EQ(ds_example(d, DS_TRAIN, 0, 1, PRECROP, CROP, NULL, got, err, sizeof err), ENG_EINVAL);
    T_EQ(ds_example(d, (ds_split)7, 0, 0, 0, CROP, NULL, got, err, sizeof err), ENG_EINVAL);
    free(got), free(want);
    ds_free(d);
}

/* ---- the loader ------------------------------------------------------------------------ */

enum { LCROP = 32, LPRE = 40 };

static ds_dataset *loader_images(void)
{
    tree t;
    tree_init(&t, "loader-img");
    add_class(&t, "", "a", 8, 0);
    add_class(&t, "", "b", 7, 3);
    add_class(&t, "", "c", 9, 0);
    ds_opts o = {.seed = 1};
    return open_ok(t.dir, &o);
}

/* nb full batches of a new loader concatenated into x (per floats each) and y. */
static int run(const ds_dataset *d, const ds_loader_opts *o, int nb, size_t per, float *x, int64_t *y)
{
    ds_loader *l = NULL;
    int rc = ds_loader_new(d, o, &l, err, sizeof err), count = 0;
    for (int b = 0; !rc && b < nb; b++) {
        size_t at = (size_t)b * o->batch;
        rc = ds_loader_next(l, x + at * per, y + at, &count, err, sizeof err);
        if (!rc && count != o->batch) rc = -100;
    }
    if (rc) fprintf(stderr, "  loader: rc %d: %s\n", rc, err);
    ds_loader_free(l);
    return rc;
}

static void loader_threads(void)
{
    enum { NB = 12, B = 5 };
    ds_dataset *d = loader_images();
    T_REQUIRE(d);
    const size_t per = 3 * LCROP * LCROP, n = (size_t)NB * B;
    float *x[4];
    int64_t *y[4];
    ds_loader_opts o[4] = {
        {.batch = B, .precrop = LPRE, .crop = LCROP, .augment = 1, .shuffle = 1, .seed = 9, .threads = 1, .prefetch = 1},
        {.batch = B, .precrop = LPRE, .crop = LCROP, .augment = 1, .shuffle = 1, .seed = 9, .threads = 3, .prefetch = 5},
        {.batch = B, .precrop = LPRE, .crop = LCROP, .augment = 1, .shuffle = 1, .seed = 9, .threads = 2},
        /* twice the batch: micro-batches are slices of the same order and augmentation */
        {.batch = 2 * B, .precrop = LPRE, .crop = LCROP, .augment = 1, .shuffle = 1, .seed = 9, .threads = 2, .prefetch = 3},
    };
    for (int k = 0; k < 4; k++) {
        x[k] = malloc(sizeof(float) * per * n), y[k] = malloc(sizeof(int64_t) * n);
        T_EQ(run(d, &o[k], k == 3 ? NB / 2 : NB, per, x[k], y[k]), 0);
    }
    for (int k = 1; k < 4; k++)
        T_CHECKF(!memcmp(x[0], x[k], sizeof(float) * per * n) && !memcmp(y[0], y[k], sizeof(int64_t) * n),
                 "loader %d differs from 1 thread, prefetch 1", k);
    ds_loader_opts other = o[0];
    other.seed = 10;
    T_EQ(run(d, &other, NB, per, x[1], y[1]), 0);
    T_NE(memcmp(x[0], x[1], sizeof(float) * per * n), 0);
    for (int k = 0; k < 4; k++) free(x[k]), free(y[k]);
    ds_free(d);
}

/* Resuming at batch s gives batch s as a loader that went through 0 .. s - 1. */
static void loader_resume(void)
{
    enum { NB = 7, B = 4, START = 4 };
    ds_dataset *d = loader_images();
    T_REQUIRE(d);
    const size_t per = 3 * LCROP * LCROP;
    float *a = malloc(sizeof(float) * per * NB * B), *b = malloc(sizeof(float) * per * NB * B);
    int64_t ya[NB * B], yb[NB * B];
    ds_loader_opts o = {.batch = B, .precrop = LPRE, .crop = LCROP, .augment = 1, .shuffle = 1,
                        .seed = 4, .threads = 2};
    T_REQUIRE(run(d, &o, NB, per, a, ya) == 0);
    o.start = START;
    T_REQUIRE(run(d, &o, NB - START, per, b, yb) == 0);
    T_CHECK(!memcmp(a + per * START * B, b, sizeof(float) * per * (NB - START) * B));
    T_CHECK(!memcmp(ya + START * B, yb, sizeof(int64_t) * (NB - START) * B));
    free(a), free(b);
    ds_free(d);
}

/* A tensor dataset whose training examples are rows 0 .. n - 1 of x in order (x_val given). */
static ds_dataset *loader_tensors(int n, int nval, int ncls)
{
    char path[800];
    snprintf(path, sizeof path, "%s/loader-%d.npz", t_tmpdir(), n);
    return marker_npz(path, n, nval, ncls, NULL) ? NULL : open_ok(path, NULL);
}

/* The row (= training example index) and label at each position of nb batches. */
static int rows_of(const ds_dataset *d, const ds_loader_opts *o, int nb, int *rows, int64_t *labels)
{
    const size_t per = 3 * 32 * 40, n = (size_t)nb * o->batch;
    float *x = malloc(sizeof(float) * per * n);
    int rc = run(d, o, nb, per, x, labels);
    for (size_t k = 0; !rc && k < n; k++) rows[k] = (int)x[k * per] % 1000;
    free(x);
    return rc;
}

static int is_perm(const int *v, int n)
{
    int seen[256] = {0}, ok = 1;
    for (int i = 0; i < n; i++) ok &= v[i] >= 0 && v[i] < n && !seen[v[i]]++;
    return ok;
}

static void loader_epochs(void)
{
    enum { N = 23, B = 4, EPOCHS = 3, NB = (N * EPOCHS + B - 1) / B };
    ds_dataset *d = loader_tensors(N, 4, 3);
    T_REQUIRE(d && ds_size(d, DS_TRAIN) == N);
    int rows[NB * B], other[NB * B], ident = 1;
    int64_t labels[NB * B];
    ds_loader_opts o = {.batch = B, .shuffle = 1, .seed = 4, .threads = 2};
    T_REQUIRE(rows_of(d, &o, NB, rows, labels) == 0);
    for (int e = 0; e < EPOCHS; e++) T_CHECKF(is_perm(rows + e * N, N), "epoch %d", e);
    for (int k = 0; k < N * EPOCHS; k++) T_CHECK(labels[k] == ds_label(d, DS_TRAIN, rows[k]));
    for (int k = 0; k < N; k++) ident &= rows[k] == k;
    T_CHECK(!ident);
    T_CHECK(memcmp(rows, rows + N, sizeof(int) * N) && memcmp(rows + N, rows + 2 * N, sizeof(int) * N));
    o.seed = 5;
    T_REQUIRE(rows_of(d, &o, NB, other, labels) == 0);
    T_NE(memcmp(rows, other, sizeof(int) * N), 0);
    ds_free(d);
}

static void loader_orders(void)
{
    enum { N = 23, NVAL = 4, B = 4 };
    ds_dataset *d = loader_tensors(N, NVAL, 3);
    T_REQUIRE(d);
    int rows[3 * N];
    int64_t labels[3 * N];
    ds_loader_opts o = {.batch = 5, .threads = 2}; /* no shuffle: stored order, wrapping */
    T_REQUIRE(rows_of(d, &o, 10, rows, labels) == 0);
    for (int k = 0; k < 50; k++) T_CHECKF(rows[k] == k % N, "position %d holds %d", k, rows[k]);
    for (int split = 0; split < 2; split++)
        for (int start = 0; start < 3; start += 2) {
            ds_loader_opts so = {.split = (ds_split)split, .batch = B, .sequential = 1,
                                 .shuffle = 1, .threads = 3, .start = start};
            int n = split ? NVAL : N, count, rc = 0, pos = start * B;
            float *x = malloc(sizeof(float) * 3 * 32 * 40 * B);
            int64_t y[B];
            ds_loader *l = NULL;
            T_REQUIRE(ds_loader_new(d, &so, &l, err, sizeof err) == 0);
            while ((rc = ds_loader_next(l, x, y, &count, err, sizeof err)) == 0) {
                T_EQ(count, (n - pos < B ? n - pos : B));
                for (int j = 0; j < count; j++, pos++)
                    T_EQ((int)x[(size_t)j * 3 * 32 * 40], pos + (split ? 1000 : 0));
            }
            T_CHECKF(rc == ENG_ENOTFOUND && pos == (start * B < n ? n : start * B), "rc %d at %d", rc, pos);
            T_EQ(ds_loader_next(l, x, y, &count, err, sizeof err), ENG_ENOTFOUND);
            ds_loader_free(l);
            free(x);
        }
    ds_free(d);
}

/* A training split smaller than a batch: seeded draws with replacement, per position. */
static void loader_replacement(void)
{
    enum { N = 3, B = 8, NB = 6 };
    ds_dataset *d = loader_tensors(N, 2, 2);
    T_REQUIRE(d && ds_size(d, DS_TRAIN) == N);
    int a[NB * B], b[NB * B], c[NB * B], seen[N] = {0}, repeat = 0;
    int64_t labels[NB * B];
    ds_loader_opts o = {.batch = B, .replacement = 1, .shuffle = 1, .seed = 3, .threads = 1};
    T_REQUIRE(rows_of(d, &o, NB, a, labels) == 0);
    o.threads = 3, o.prefetch = 1;
    T_REQUIRE(rows_of(d, &o, NB, b, labels) == 0);
    o.seed = 4;
    T_REQUIRE(rows_of(d, &o, NB, c, labels) == 0);
    for (int k = 0; k < NB * B; k++) {
        T_CHECK(a[k] >= 0 && a[k] < N && labels[k] == ds_label(d, DS_TRAIN, c[k]));
        if (a[k] >= 0 && a[k] < N) seen[a[k]]++;
        repeat += k % B && a[k] == a[k - 1];
    }
    for (int i = 0; i < N; i++) T_CHECKF(seen[i] > 0, "example %d never drawn", i);
    T_CHECK(repeat > 0 && !memcmp(a, b, sizeof a) && memcmp(a, c, sizeof a));
    ds_free(d);
}

/* Freed with every worker in the middle of a large decode: returns, leaks nothing. */
static void loader_free_busy(void)
{
    tree t;
    tree_init(&t, "loader-big");
    for (int i = 0; i < 8; i++) {
        char name[32];
        snprintf(name, sizeof name, "%d.jpg", i);
        add(&t, "", i % 2 ? "a" : "b", name, 640, 480);
    }
    ds_dataset *d = open_ok(t.dir, NULL);
    T_REQUIRE(d);
    ds_loader_opts o = {.batch = 8, .precrop = 512, .crop = 480, .augment = 1, .shuffle = 1,
                        .threads = 3, .prefetch = 4};
    float *x = malloc(sizeof(float) * 3 * 480 * 480 * 8);
    int64_t y[8];
    for (int round = 0; round < 3; round++) {
        ds_loader *l = NULL;
        int count;
        T_REQUIRE(ds_loader_new(d, &o, &l, err, sizeof err) == 0);
        for (int b = 0; b < round; b++) T_CHECK(ds_loader_next(l, x, y, &count, err, sizeof err) == 0);
        double t0 = (eng_now_ms() / 1e3);
        ds_loader_free(l);
        printf("     freed after %d batches in %.3f s\n", round, (eng_now_ms() / 1e3) - t0);
    }
    free(x);
    ds_free(d);
}

static void loader_bad_opts(void)
{
    ds_dataset *d = loader_images();
    T_REQUIRE(d);
    const ds_loader_opts ok = {.batch = 4, .precrop = LPRE, .crop = LCROP, .augment = 1};
    ds_loader_opts o[10];
    for (int i = 0; i < 10; i++) o[i] = ok;
    o[0].batch = 0, o[1].batch = 65537, o[2].crop = 16, o[3].precrop = LCROP - 1;
    o[4].threads = -1, o[5].threads = 100000, o[6].prefetch = -1, o[7].start = INT64_MAX / 2;
    o[8].sequential = o[8].replacement = 1, o[9].split = (ds_split)7;
    for (int i = 0; i < 10; i++) {
        ds_loader *l = NULL;
        T_CHECKF(ds_loader_new(d, &o[i], &l, err, sizeof err) == ENG_EINVAL && !l, "case %d", i);
        ds_loader_free(l);
    }
    ds_free(d);
    tree t; /* two images a class: a 10 % hold-out rounds to none */
    tree_init(&t, "loader-noval");
    add_class(&t, "", "a", 2, 0);
    add_class(&t, "", "b", 2, 0);
    T_REQUIRE((d = open_ok(t.dir, NULL)) != NULL);
    ds_loader_opts v = ok;
    v.split = DS_VAL;
    ds_loader *l = NULL;
    T_CHECK(ds_size(d, DS_VAL) == 0 && ds_loader_new(d, &v, &l, err, sizeof err) == ENG_EINVAL);
    ds_free(d);
}

/* A file that disappears after ds_open fails its batch, by name, and only its batch. */
static void loader_missing_file(void)
{
    tree t;
    tree_init(&t, "loader-missing");
    add_class(&t, "", "a", 3, 0);
    add_class(&t, "", "b", 3, 0);
    ds_dataset *d = open_ok(t.dir, NULL);
    T_REQUIRE(d && ds_size(d, DS_TRAIN) == t.n);
    char gone[800];
    snprintf(gone, sizeof gone, "%s/%s", t.dir, ds_example_name(d, DS_TRAIN, 3));
    T_REQUIRE(unlink(gone) == 0);
    ds_loader_opts o = {.batch = 2, .crop = LCROP, .sequential = 1, .threads = 2};
    ds_loader *l = NULL;
    float *x = malloc(sizeof(float) * 3 * LCROP * LCROP * 2);
    int64_t y[2];
    int count, rc[4];
    T_REQUIRE(ds_loader_new(d, &o, &l, err, sizeof err) == 0);
    for (int b = 0; b < 4; b++) {
        err[0] = 0;
        rc[b] = ds_loader_next(l, x, y, &count, err, sizeof err);
        if (b == 1) T_CHECKF(strstr(err, ds_example_name(d, DS_TRAIN, 3)) != NULL, "%s", err);
    }
    T_CHECK(rc[0] == 0 && rc[1] == ENG_EIO && rc[2] == 0 && rc[3] == ENG_ENOTFOUND);
    ds_loader_free(l);
    free(x);
    ds_free(d);
}

/* ---- benchmark ------------------------------------------------------------------------- */

/* Images per second through ds_example on this thread alone: the best of three one-second
 * runs (other processes on the machine only slow it down). */
static double per_core(const ds_dataset *d, int precrop, int crop)
{
    float *x = malloc(sizeof(float) * 3 * crop * crop);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        int64_t n = 0;
        double t0 = (eng_now_ms() / 1e3), t;
        do {
            eng_rng r;
            eng_rng_seed3(&r, 1, (uint64_t)n, 7);
            if (ds_example(d, DS_TRAIN, n % ds_size(d, DS_TRAIN), 1, precrop, crop, &r, x, err, sizeof err)) {
                fprintf(stderr, "bench: %s\n", err);
                exit(1);
            }
            n++;
        } while ((t = (eng_now_ms() / 1e3) - t0) < 1.0);
        best = (double)n / t > best ? (double)n / t : best;
    }
    free(x);
    return best;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* Images per second delivered by a loader (batches of 16, 4 prefetched) after a batch of
 * warm-up: the best of three two-second windows, with the CPUs the process used in it. */
static double through_loader(const ds_dataset *d, int precrop, int crop, int threads, double *cpus)
{
    ds_loader_opts o = {.batch = 16, .precrop = precrop, .crop = crop, .augment = 1,
                        .shuffle = 1, .seed = 1, .threads = threads, .prefetch = 4};
    float *x = malloc(sizeof(float) * 3 * crop * crop * o.batch);
    int64_t y[16];
    int count;
    double best = 0;
    ds_loader *l = NULL;
    if (ds_loader_new(d, &o, &l, err, sizeof err) || ds_loader_next(l, x, y, &count, err, sizeof err)) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    for (int rep = 0; rep < 3; rep++) {
        int64_t n = 0;
        double t0 = (eng_now_ms() / 1e3), c0 = cpu_seconds(), t;
        do {
            if (ds_loader_next(l, x, y, &count, err, sizeof err)) exit(1);
            n += count;
        } while ((t = (eng_now_ms() / 1e3) - t0) < 2.0);
        if ((double)n / t > best) best = (double)n / t, *cpus = (cpu_seconds() - c0) / t;
    }
    ds_loader_free(l);
    free(x);
    return best;
}

static int bench(int files)
{
    static const int sizes[][2] = {{512, 480}, {160, 128}};
    size_t len;
    uint8_t *j = bench_jpeg(&len);
    char dir[700], rel[64];
    snprintf(dir, sizeof dir, "%s/bench", t_tmpdir());
    for (int i = 0; i < files; i++) {
        snprintf(rel, sizeof rel, "%s/%04d.jpg", i % 2 ? "a" : "b", i);
        if (timg_put(dir, rel, j, len)) return 1;
    }
    free(j);
    double t0 = (eng_now_ms() / 1e3);
    ds_opts o = {.seed = 1};
    ds_dataset *d = open_ok(dir, &o);
    if (!d) return 1;
    printf("%d files of a 1024x768 JPEG (q90, 4:2:0, %zu bytes); ds_open checked them in %.2f s; "
           "%ld CPUs\n", files, len, (eng_now_ms() / 1e3) - t0, sysconf(_SC_NPROCESSORS_ONLN));
    for (int s = 0; s < 2; s++) {
        int pre = sizes[s][0], crop = sizes[s][1];
        double one = per_core(d, pre, crop), c1, c2;
        double l1 = through_loader(d, pre, crop, 1, &c1), l2 = through_loader(d, pre, crop, 2, &c2);
        printf("train %3d/%3d: ds_example %6.1f img/s on one thread; loader %6.1f img/s with 1 "
               "thread (%.2f CPUs busy), %6.1f img/s with 2 (%.2f CPUs)\n", pre, crop, one, l1, c1,
               l2, c2);
    }
    ds_free(d);
    return 0;
}

int main(int argc, char **argv)
{
    int rc;
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        rc = bench(argc > 2 ? atoi(argv[2]) : 64);
    } else {
        T_RUN(class_folders);
        T_RUN(train_val_layout);
        T_RUN(train_as_class);
        T_RUN(bad_layouts);
        T_RUN(holdout);
        T_RUN(few_shot);
        T_RUN(archives);
        T_RUN(hostile_archives);
        T_RUN(limits);
        T_RUN(tensors);
        T_RUN(tensors_bad);
        T_RUN(tensors_bomb);
        T_RUN(example_transforms);
        T_RUN(loader_threads);
        T_RUN(loader_resume);
        T_RUN(loader_epochs);
        T_RUN(loader_orders);
        T_RUN(loader_replacement);
        T_RUN(loader_free_busy);
        T_RUN(loader_missing_file);
        T_RUN(loader_bad_opts);
        rc = t_done();
    }
    arc_remove_tree(t_tmpdir(), err, sizeof err);
    return rc;
}

/* Datasets: class folders (a directory or an unpacked archive) or tensors in an .npz, split
 * into training and validation examples; ds_example turns one into model input. */
#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "npz.h"
#include "preproc.h"

#define MAX_CLASSES 100000
#define MAX_FILES 20000000 /* ~100 bytes of bookkeeping each: 2 GB at the limit */
#define MAX_BAD_SHOWN 5
#define DEFAULT_HOLDOUT 0.1
#define MIN_TENSOR_SIDE 32
#define MAX_TENSOR_SIDE 4096
#define MAX_WRAPPERS 8
#define DS_PATH 4400
/* Decoding at 1/8 scale still entropy-decodes every coefficient, so a truncated or corrupt
 * JPEG fails here as it would at full size, for a fraction of the cost. */
#define CHECK_HINT 32

/* Streams of the seeded draws, so that each one is independent of the others. */
enum { STREAM_HOLDOUT = 1, STREAM_FEW_SHOT = 2 };

typedef struct ds_item {
    char *path;  /* image file (absolute); NULL for tensor examples */
    int name;    /* offset in path of the name users see: relative to the layout root */
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
    const char *layout, *validation;
    char root[256]; /* lone wrapper folders descended into ("flowers/") */
    double holdout; /* fraction held out of train; 0 when validation came with the data */
    uint64_t seed;
    eng_npz *z;
    const eng_tensor *x[2];
    int th, tw, median_w, median_h, few_shot;
    int64_t non_image, undecodable, outside;
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
    for (int i = 0; d->classes && i < d->ncls; i++) free(d->classes[i]);
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
const char *ds_class_name(const ds_dataset *d, int i)
{
    return i >= 0 && i < d->ncls ? d->classes[i] : NULL;
}
int64_t ds_size(const ds_dataset *d, ds_split s)
{
    return s == DS_TRAIN || s == DS_VAL ? d->split[s].n : 0;
}
int ds_label(const ds_dataset *d, ds_split s, int64_t i)
{
    return i >= 0 && i < ds_size(d, s) ? d->split[s].v[i].label : -1;
}
void ds_tensor_size(const ds_dataset *d, int *h, int *w) { *h = d->th, *w = d->tw; }
void ds_median_size(const ds_dataset *d, int *w, int *h) { *w = d->median_w, *h = d->median_h; }

const char *ds_example_name(const ds_dataset *d, ds_split s, int64_t i)
{
    if (i < 0 || i >= ds_size(d, s) || !d->split[s].v[i].path) return NULL;
    return d->split[s].v[i].path + d->split[s].v[i].name;
}

static int find_class(const ds_dataset *d, const char *name)
{
    int lo = 0, hi = d->ncls - 1; /* classes are sorted */
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2, c = strcmp(d->classes[mid], name);
        if (!c) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* Class names end up as JSON strings and in a one-name-per-line labels file. */
static int name_ok(const char *s)
{
    if (!*s) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return 0;
    json_t *j = json_string(s); /* NULL for invalid UTF-8 */
    json_decref(j);
    return j != NULL;
}

/* A file name as JSON can carry it: bytes that are not valid UTF-8 or are control
 * characters become '?'. */
static void shown_name(char *dst, size_t len, const char *name)
{
    snprintf(dst, len, "%s", name);
    json_t *j = json_string(dst);
    for (unsigned char *p = (unsigned char *)dst; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (!j && *p >= 0x80)) *p = '?';
    json_decref(j);
}

/* Messages of file-reading functions start with the absolute path: users know the file by
 * its name in the dataset. */
static const char *reason(const char *msg, const char *path)
{
    size_t n = strlen(path);
    return !strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ' ? msg + n + 2 : msg;
}

/* ---------------------------------------------------------------- class folders */

typedef struct level {
    char **dirs; /* sorted */
    int ndirs, cap;
    int64_t files; /* regular files beside the directories */
} level;

static void level_free(level *v)
{
    for (int i = 0; i < v->ndirs; i++) free(v->dirs[i]);
    free(v->dirs);
    memset(v, 0, sizeof *v);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int level_push(level *v, const char *name)
{
    if (v->ndirs == MAX_CLASSES) return ENG_ELIMIT;
    if (v->ndirs == v->cap) {
        int cap = v->cap ? 2 * v->cap : 16;
        char **n = realloc(v->dirs, sizeof *n * (size_t)cap);
        if (!n) return ENG_ENOMEM;
        v->dirs = n, v->cap = cap;
    }
    if (!(v->dirs[v->ndirs] = strdup(name))) return ENG_ENOMEM;
    v->ndirs++;
    return 0;
}

static int has_dir(const level *v, const char *name)
{
    return v->ndirs && bsearch(&name, v->dirs, (size_t)v->ndirs, sizeof *v->dirs, cmp_str);
}

/* The subdirectories of dir in strcmp order and the number of regular files beside them.
 * Hidden entries and __MACOSX are skipped and symlinks neither followed nor counted, as
 * extraction and arc_walk do, so a directory and its archive give the same dataset. */
static int list_level(const char *dir, level *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    DIR *dh = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dh) {
        int e = errno;
        if (fd >= 0) close(fd);
        return eng_errf(err, errlen, ENG_EIO, "%s: %s", dir, strerror(e));
    }
    int rc = 0;
    struct dirent *de;
    while (!rc && (de = readdir(dh))) {
        struct stat st;
        if (de->d_name[0] == '.' || !strcmp(de->d_name, "__MACOSX") ||
            fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
            continue;
        if (S_ISREG(st.st_mode)) v->files++;
        else if (S_ISDIR(st.st_mode)) rc = level_push(v, de->d_name);
    }
    closedir(dh);
    if (rc) {
        level_free(v);
        if (rc == ENG_ELIMIT)
            return eng_errf(err, errlen, rc, "%s: more than %d class folders", dir, MAX_CLASSES);
        return eng_errf(err, errlen, rc, "out of memory listing %s", dir);
    }
    if (v->ndirs) qsort(v->dirs, (size_t)v->ndirs, sizeof *v->dirs, cmp_str);
    return 0;
}

/* train/ makes a split layout when it holds class folders; otherwise it is a class like any
 * other (a "train" class of vehicles). Beside train/ only val/ and an ignored test/ fit. */
static int split_layout(const char *root, const level *top, int *split, char *err, size_t errlen)
{
    char p[DS_PATH];
    level tr;
    *split = 0;
    if (!has_dir(top, "train")) return 0;
    if (eng_path_join(p, sizeof p, root, "train"))
        return eng_errf(err, errlen, ENG_ELIMIT, "dataset path too long");
    int rc = list_level(p, &tr, err, errlen);
    if (rc) return rc;
    *split = tr.ndirs > 0;
    level_free(&tr);
    for (int i = 0; *split && i < top->ndirs; i++)
        if (strcmp(top->dirs[i], "train") && strcmp(top->dirs[i], "val") &&
            strcmp(top->dirs[i], "test"))
            return eng_errf(err, errlen, ENG_EFORMAT,
                            "'%s/' beside train/: a split layout has train/<class>/, optionally "
                            "val/<class>/ (and test/, ignored)", top->dirs[i]);
    return 0;
}

/* Where the layout starts: dir, or inside the lone folder archives are often made of (tar czf
 * flowers.tgz flowers/). Descending never turns a valid dataset into another one: a single
 * top-level folder alone would be a one-class dataset, which is an error. Directories descend
 * too, so that an archive and its unpacked tree (kept by a server) read the same. */
static int find_layout(ds_dataset *d, const char *dir, char *root, size_t rootlen, int *split,
                       char *err, size_t errlen)
{
    snprintf(root, rootlen, "%s", dir);
    for (int depth = 0;; depth++) {
        level top;
        int rc = list_level(root, &top, err, errlen);
        if (rc) return rc;
        rc = split_layout(root, &top, split, err, errlen);
        int wrapper = !rc && !*split && depth < MAX_WRAPPERS && top.ndirs == 1;
        if (!rc && (*split || wrapper)) d->outside += top.files;
        if (wrapper) {
            size_t n = strlen(d->root);
            snprintf(d->root + n, sizeof d->root - n, "%s/", top.dirs[0]);
            char next[DS_PATH];
            if (eng_path_join(next, sizeof next, root, top.dirs[0]))
                rc = eng_errf(err, errlen, ENG_ELIMIT, "dataset path too long");
            else snprintf(root, rootlen, "%s", next);
        }
        level_free(&top);
        if (rc || !wrapper) return rc;
    }
}

typedef struct walk_ctx {
    ds_list *out;
    const char *root, *sub; /* the class folder is root/sub */
    int label, src;
    char *err;
    size_t errlen;
} walk_ctx;

static int walk_cb(const char *rel, uint64_t size, void *ud)
{
    walk_ctx *w = ud;
    (void)size;
    if (w->out->n >= MAX_FILES)
        return eng_errf(w->err, w->errlen, ENG_ELIMIT, "more than %d files in a split", MAX_FILES);
    char *path;
    if (asprintf(&path, "%s/%s/%s", w->root, w->sub, rel) < 0)
        return eng_errf(w->err, w->errlen, ENG_ENOMEM, "out of memory listing files");
    ds_item it = {.path = path, .name = (int)strlen(w->root) + 1, .label = w->label, .src = w->src};
    if (list_push(w->out, it)) {
        free(path);
        return eng_errf(w->err, w->errlen, ENG_ENOMEM, "out of memory listing files");
    }
    return 0;
}

/* Every file under root/split_dir/cls, at any depth, becomes an example of label. */
static int walk_class(ds_dataset *d, const char *root, const char *split_dir, const char *cls,
                      int label, int s, char *err, size_t errlen)
{
    char sub[DS_PATH], dir[DS_PATH];
    if ((*split_dir ? eng_path_join(sub, sizeof sub, split_dir, cls)
                    : (snprintf(sub, sizeof sub, "%s", cls), 0)) ||
        eng_path_join(dir, sizeof dir, root, sub))
        return eng_errf(err, errlen, ENG_ELIMIT, "dataset path too long");
    walk_ctx w = {.out = &d->split[s], .root = root, .sub = sub, .label = label, .src = s,
                  .err = err, .errlen = errlen};
    return arc_walk(dir, walk_cb, &w, err, errlen);
}

/* The training folders name the classes (index = sorted position, as torchvision's
 * ImageFolder); validation folders must be among them. */
static int take_classes(ds_dataset *d, level *v, const char *split_dir, int s, char *err,
                        size_t errlen)
{
    for (int i = 0; i < v->ndirs; i++) {
        if (!name_ok(v->dirs[i])) {
            char shown[256];
            shown_name(shown, sizeof shown, v->dirs[i]);
            return eng_errf(err, errlen, ENG_EFORMAT, "class folder '%s%s%s': a class name must "
                            "be UTF-8 without control characters", split_dir,
                            *split_dir ? "/" : "", shown);
        }
        if (s == DS_VAL && find_class(d, v->dirs[i]) < 0)
            return eng_errf(err, errlen, ENG_EFORMAT,
                            "val/%s: class not present in the training split", v->dirs[i]);
    }
    if (s == DS_TRAIN) {
        d->classes = v->dirs, d->ncls = v->ndirs;
        v->dirs = NULL, v->ndirs = v->cap = 0;
    }
    return 0;
}

/* Lists split s (its class folders under root/split_dir) into examples; files beside the
 * class folders are counted as outside any class. */
static int load_split(ds_dataset *d, const char *root, const char *split_dir, int s, char *err,
                      size_t errlen)
{
    char dir[DS_PATH];
    level v;
    if (*split_dir ? eng_path_join(dir, sizeof dir, root, split_dir)
                   : (snprintf(dir, sizeof dir, "%s", root), 0))
        return eng_errf(err, errlen, ENG_ELIMIT, "dataset path too long");
    int rc = list_level(dir, &v, err, errlen);
    if (rc) return rc;
    d->outside += v.files;
    rc = take_classes(d, &v, split_dir, s, err, errlen);
    char **names = s == DS_TRAIN ? d->classes : v.dirs;
    int n = s == DS_TRAIN ? d->ncls : v.ndirs;
    for (int i = 0; !rc && i < n; i++)
        rc = walk_class(d, root, split_dir, names[i], s == DS_TRAIN ? i : find_class(d, names[i]),
                        s, err, errlen);
    level_free(&v);
    return rc;
}

/* ---------------------------------------------------------------- checking images */

enum { K_IMAGE, K_OTHER, K_BAD };

/* Content decides what is an image; the name only decides whether a file that is neither
 * JPEG nor PNG is worth reporting (a photo in another format) or just skipped (notes, CSVs). */
static int image_name(const char *path)
{
    static const char *const ext[] = {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp",
                                      ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".heic"};
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof ext / sizeof *ext; i++)
        if (!strcasecmp(dot, ext[i])) return 1;
    return 0;
}

/* The format by the first bytes, without reading a whole (maybe huge) file; -1 when it
 * cannot be read. O_NONBLOCK: a FIFO swapped in after the listing must not hang us. */
static int head_format(const char *path)
{
    unsigned char b[8];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return -1;
    struct stat st;
    ssize_t n = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? pread(fd, b, sizeof b, 0) : -1;
    close(fd);
    return n < 0 ? -1 : (int)img_sniff(b, (size_t)n);
}

/* Decodes one file (JPEG at 1/8 scale): K_IMAGE with its original size filled in, K_OTHER,
 * or K_BAD with the reason in why. */
static int check_file(const ds_dataset *d, ds_item *it, char *why, size_t len)
{
    int f = head_format(it->path);
    if (f == IMG_UNKNOWN && !image_name(it->path)) return K_OTHER;
    if (f <= 0) {
        snprintf(why, len, f < 0 ? "cannot be read" : "not a JPEG or PNG");
        return K_BAD;
    }
    char e[400];
    void *buf = NULL;
    size_t n = 0;
    img_info info;
    img_rgb8 *img = NULL;
    size_t cap = d->img.max_file_bytes ? d->img.max_file_bytes : IMG_DEFAULT_MAX_FILE_BYTES;
    int rc = eng_file_read(it->path, cap, &buf, &n, e, sizeof e);
    if (!rc) rc = img_probe(buf, n, &info, e, sizeof e);
    if (!rc) rc = img_decode(buf, n, &d->img, CHECK_HINT, &img, e, sizeof e);
    img_rgb8_free(img);
    free(buf);
    if (rc) {
        snprintf(why, len, "%s", reason(e, it->path));
        return K_BAD;
    }
    it->w = info.width, it->h = info.height;
    return K_IMAGE;
}

/* Records an undecodable file; the first few by name and reason, in listing order. */
static void note_bad(ds_dataset *d, const ds_item *it, const char *why)
{
    if (d->undecodable++ >= MAX_BAD_SHOWN) return;
    char name[300];
    shown_name(name, sizeof name, it->path + it->name);
    snprintf(d->bad[d->undecodable - 1], sizeof d->bad[0], "%s: %s", name, why ? why : "?");
}

/* Decodes every file of l once, in parallel: keeps the images, counts the rest. */
static int check_images(ds_dataset *d, ds_list *l, char *err, size_t errlen)
{
    int64_t n = l->n;
    char *kind = malloc((size_t)n + 1), **why = calloc((size_t)n + 1, sizeof *why);
    if (!kind || !why) {
        free(kind), free(why);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory checking images");
    }
    #pragma omp parallel for schedule(dynamic, 4)
    for (int64_t i = 0; i < n; i++) {
        char e[400];
        kind[i] = (char)check_file(d, &l->v[i], e, sizeof e);
        if (kind[i] == K_BAD) why[i] = strdup(e);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (kind[i] == K_IMAGE) {
            l->v[k++] = l->v[i];
            continue;
        }
        if (kind[i] == K_OTHER) d->non_image++;
        else note_bad(d, &l->v[i], why[i]);
        free(l->v[i].path);
        free(why[i]);
    }
    l->n = k;
    free(kind), free(why);
    return 0;
}

static int check_classes(ds_dataset *d, char *err, size_t errlen)
{
    if (d->ncls < 2)
        return eng_errf(err, errlen, ENG_EFORMAT,
                        "a dataset needs at least 2 classes, found %d%s%s", d->ncls,
                        d->root[0] ? " in " : "", d->root);
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

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int median(int *v, int64_t n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_int);
    return n % 2 ? v[n / 2] : (int)(((int64_t)v[n / 2 - 1] + v[n / 2]) / 2);
}

/* Median width and height, each on its own, of the final training split. */
static int median_size(ds_dataset *d, char *err, size_t errlen)
{
    const ds_list *l = &d->split[DS_TRAIN];
    int *w = malloc(sizeof(int) * (size_t)(l->n + 1));
    int *h = malloc(sizeof(int) * (size_t)(l->n + 1));
    if (!w || !h) {
        free(w), free(h);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < l->n; i++) w[i] = l->v[i].w, h[i] = l->v[i].h;
    if (l->n) d->median_w = median(w, l->n), d->median_h = median(h, l->n);
    free(w), free(h);
    return 0;
}

/* ---------------------------------------------------------------- hold-out and few-shot */

/* Positions of the training examples grouped by class, class c at start[c] .. start[c + 1],
 * each group shuffled by its own stream of (seed, c), so that a class's draw does not
 * depend on the other classes. */
static int by_class(const ds_dataset *d, uint64_t seed, uint64_t stream, int64_t **pos,
                    int64_t **start)
{
    const ds_list *tr = &d->split[DS_TRAIN];
    int64_t *p = malloc(sizeof *p * (size_t)(tr->n + 1));
    int64_t *st = calloc((size_t)d->ncls + 1, sizeof *st);
    if (!p || !st) {
        free(p), free(st);
        return ENG_ENOMEM;
    }
    for (int64_t i = 0; i < tr->n; i++) st[tr->v[i].label + 1]++;
    for (int c = 0; c < d->ncls; c++) st[c + 1] += st[c];
    for (int64_t i = 0; i < tr->n; i++) p[st[tr->v[i].label]++] = i;
    for (int c = d->ncls; c > 0; c--) st[c] = st[c - 1]; /* the fill moved each start one on */
    st[0] = 0;
    for (int c = 0; c < d->ncls; c++) {
        eng_rng r;
        eng_rng_seed3(&r, seed, (uint64_t)c, stream);
        int64_t *g = p + st[c];
        for (int64_t i = st[c + 1] - st[c] - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)eng_rng_below(&r, (uint64_t)i + 1), t = g[i];
            g[i] = g[j], g[j] = t;
        }
    }
    *pos = p, *start = st;
    return 0;
}

/* Training examples marked 1 move to validation (drop: are discarded); both splits keep
 * their stored order. */
static int partition(ds_dataset *d, const unsigned char *mark, int drop)
{
    ds_list *tr = &d->split[DS_TRAIN], *val = &d->split[DS_VAL];
    if (!drop && list_reserve(val, val->n + tr->n)) return ENG_ENOMEM;
    int64_t k = 0;
    for (int64_t i = 0; i < tr->n; i++) {
        if (!mark[i]) tr->v[k++] = tr->v[i];
        else if (drop) free(tr->v[i].path);
        else val->v[val->n++] = tr->v[i];
    }
    tr->n = k;
    return 0;
}

/* Stratified hold-out: round(frac * n) of each class's n training images, drawn with seed,
 * go to validation; at least one stays in training. */
static int hold_out(ds_dataset *d, double frac, uint64_t seed, char *err, size_t errlen)
{
    int64_t *pos = NULL, *st = NULL;
    unsigned char *mark = calloc((size_t)d->split[DS_TRAIN].n + 1, 1);
    int rc = mark ? by_class(d, seed, STREAM_HOLDOUT, &pos, &st) : ENG_ENOMEM;
    for (int c = 0; !rc && c < d->ncls; c++) {
        int64_t m = st[c + 1] - st[c], take = (int64_t)floor(frac * (double)m + 0.5);
        if (take > m - 1) take = m - 1;
        for (int64_t i = 0; i < take; i++) mark[pos[st[c] + i]] = 1;
    }
    if (!rc) rc = partition(d, mark, 0);
    free(mark), free(pos), free(st);
    return rc ? eng_errf(err, errlen, rc, "out of memory holding out validation") : 0;
}

/* Few-shot: k training examples per class, drawn with seed; the others are dropped. */
static int few_shot(ds_dataset *d, int k, uint64_t seed, char *err, size_t errlen)
{
    int64_t *pos = NULL, *st = NULL;
    unsigned char *mark = malloc((size_t)d->split[DS_TRAIN].n + 1);
    int rc = mark ? by_class(d, seed, STREAM_FEW_SHOT, &pos, &st) : ENG_ENOMEM;
    if (rc) goto fail;
    memset(mark, 1, (size_t)d->split[DS_TRAIN].n + 1);
    for (int c = 0; c < d->ncls; c++) {
        if (st[c + 1] - st[c] < k) {
            rc = eng_errf(err, errlen, ENG_EINVAL, "class '%s' has %lld training examples, "
                          "fewer than examples_per_class %d", d->classes[c],
                          (long long)(st[c + 1] - st[c]), k);
            goto fail;
        }
        for (int64_t i = 0; i < k; i++) mark[pos[st[c] + i]] = 0;
    }
    partition(d, mark, 1);
    d->few_shot = k;
fail:
    free(mark), free(pos), free(st);
    return rc == ENG_ENOMEM ? eng_errf(err, errlen, rc, "out of memory drawing examples") : rc;
}

static int open_images(ds_dataset *d, const char *dir, char *err, size_t errlen)
{
    char root[DS_PATH], val[DS_PATH];
    struct stat st;
    int split, rc;
    if ((rc = find_layout(d, dir, root, sizeof root, &split, err, errlen))) return rc;
    int has_val = split && !eng_path_join(val, sizeof val, root, "val") &&
                  lstat(val, &st) == 0 && S_ISDIR(st.st_mode);
    if ((rc = load_split(d, root, split ? "train" : "", DS_TRAIN, err, errlen)) ||
        (has_val && (rc = load_split(d, root, "val", DS_VAL, err, errlen))) ||
        (rc = check_images(d, &d->split[DS_TRAIN], err, errlen)) ||
        (rc = check_images(d, &d->split[DS_VAL], err, errlen)) ||
        (rc = check_classes(d, err, errlen)))
        return rc;
    has_val = has_val && d->split[DS_VAL].n; /* a val/ left empty: no reason to skip validation */
    d->layout = split ? "train/<class>/<image>" : "<class>/<image>";
    d->validation = has_val ? "val folder" : "held out from train";
    if (has_val) d->holdout = 0;
    return has_val ? 0 : hold_out(d, d->holdout, d->seed, err, errlen);
}

/* ---------------------------------------------------------------- tensor datasets */

static int check_finite(const eng_tensor *x, const char *key, char *err, size_t errlen)
{
    const float *v = x->data;
    int64_t n = eng_tensor_numel(x);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return eng_errf(err, errlen, ENG_EFORMAT, "'%s' holds NaN or infinity (flat index %lld)",
                            key, (long long)i);
    return 0;
}

static int tensor_shapes(ds_dataset *d, const eng_tensor *x, const eng_tensor *y, const char *xk,
                         const char *yk, int src, char *err, size_t errlen)
{
    if (x->dtype != ENG_F32 || x->ndim != 4 || x->shape[1] != 3 ||
        x->shape[2] < MIN_TENSOR_SIDE || x->shape[3] < MIN_TENSOR_SIDE ||
        x->shape[2] > MAX_TENSOR_SIDE || x->shape[3] > MAX_TENSOR_SIDE)
        return eng_errf(err, errlen, ENG_EFORMAT, "'%s' must be float32 [N, 3, H, W] with "
                        "%d <= H, W <= %d", xk, MIN_TENSOR_SIDE, MAX_TENSOR_SIDE);
    if (src == DS_VAL && (x->shape[2] != d->th || x->shape[3] != d->tw))
        return eng_errf(err, errlen, ENG_EFORMAT, "'%s' and 'x' differ in height or width", xk);
    if (y->dtype != ENG_I64 || y->ndim != 1 || y->shape[0] != x->shape[0])
        return eng_errf(err, errlen, ENG_EFORMAT, "'%s' must be int64 [N] matching '%s'", yk, xk);
    if (x->shape[0] > MAX_FILES)
        return eng_errf(err, errlen, ENG_ELIMIT, "'%s' holds more than %d examples", xk, MAX_FILES);
    return check_finite(x, xk, err, errlen);
}

/* x/y (src DS_TRAIN) or x_val/y_val (DS_VAL, optional) into examples; *nlab grows to the
 * largest label + 1. */
static int tensor_pair(ds_dataset *d, const char *xk, const char *yk, int src, int *nlab,
                       char *err, size_t errlen)
{
    const eng_tensor *x = eng_npz_get(d->z, xk), *y = eng_npz_get(d->z, yk);
    if (!x && !y && src == DS_VAL) return 0;
    if (!x || !y)
        return eng_errf(err, errlen, ENG_EFORMAT, "tensor dataset needs both '%s' and '%s'", xk, yk);
    int rc = tensor_shapes(d, x, y, xk, yk, src, err, errlen);
    if (rc) return rc;
    d->th = (int)x->shape[2], d->tw = (int)x->shape[3];
    d->x[src] = x;
    const int64_t *lab = y->data;
    ds_list *l = &d->split[src];
    if (list_reserve(l, y->shape[0] + 1)) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int64_t i = 0; i < y->shape[0]; i++) {
        if (lab[i] < 0 || lab[i] >= MAX_CLASSES)
            return eng_errf(err, errlen, ENG_EFORMAT, "%s[%lld] = %lld is not a class index "
                            "(0 <= label < %d)", yk, (long long)i, (long long)lab[i], MAX_CLASSES);
        l->v[l->n++] = (ds_item){.row = i, .src = src, .label = (int)lab[i], .w = d->tw, .h = d->th};
        if (lab[i] >= *nlab) *nlab = (int)lab[i] + 1;
    }
    return 0;
}

/* Class names: 'classes' when present (one per label at least), else "0", "1", ... */
static int tensor_classes(ds_dataset *d, int nlab, char *err, size_t errlen)
{
    const eng_tensor *c = eng_npz_get(d->z, "classes");
    int n = nlab;
    if (c) {
        if (c->dtype != ENG_STR || c->ndim != 1 || c->shape[0] < nlab || c->shape[0] > MAX_CLASSES)
            return eng_errf(err, errlen, ENG_EFORMAT, "'classes' must be a 1-D string array with a "
                            "name for every label (labels go up to %d)", nlab - 1);
        n = (int)c->shape[0];
    }
    if (!(d->classes = calloc((size_t)n + 1, sizeof *d->classes)))
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        char name[1024];
        if (!c) snprintf(name, sizeof name, "%d", i);
        else if (eng_tensor_str(c, i, name, sizeof name) || !name_ok(name))
            return eng_errf(err, errlen, ENG_EFORMAT, "classes[%d] is not a usable name (UTF-8, "
                            "not empty, no control characters)", i);
        if (!(d->classes[i] = strdup(name))) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        d->ncls = i + 1;
    }
    return 0;
}

/* Names are looked up by a label's position, but users see them: two equal ones would make
 * two classes indistinguishable in every report. */
static int unique_classes(const ds_dataset *d, char *err, size_t errlen)
{
    char **s = malloc(sizeof *s * (size_t)(d->ncls + 1));
    if (!s) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    memcpy(s, d->classes, sizeof *s * (size_t)d->ncls);
    qsort(s, (size_t)d->ncls, sizeof *s, cmp_str);
    int rc = 0;
    for (int i = 1; i < d->ncls && !rc; i++)
        if (!strcmp(s[i - 1], s[i]))
            rc = eng_errf(err, errlen, ENG_EFORMAT, "class name '%s' appears twice in 'classes'", s[i]);
    free(s);
    return rc;
}

/* The arrays' declared sizes are checked against the limit from their headers before any is
 * read, and reading never goes past what they declared: a small deflated upload cannot make
 * the server hold more than max_bytes. */
static int load_tensors(ds_dataset *d, const char *path, uint64_t max_bytes, char *err,
                        size_t errlen)
{
    eng_npz *h = NULL;
    eng_npz_limits lim = {.max_entries = 64, .max_total_bytes = max_bytes};
    int rc = eng_npz_load_headers(path, &lim, &h, err, errlen);
    eng_npz_free(h);
    return rc ? rc : eng_npz_load(path, &lim, &d->z, err, errlen);
}

static int open_tensors(ds_dataset *d, const char *path, uint64_t max_bytes, char *err,
                        size_t errlen)
{
    int nlab = 0, rc = load_tensors(d, path, max_bytes, err, errlen);
    if (rc) return rc;
    d->tensor = 1;
    if ((rc = tensor_pair(d, "x", "y", DS_TRAIN, &nlab, err, errlen)) ||
        (rc = tensor_pair(d, "x_val", "y_val", DS_VAL, &nlab, err, errlen)) ||
        (rc = tensor_classes(d, nlab, err, errlen)) || (rc = unique_classes(d, err, errlen)) ||
        (rc = check_classes(d, err, errlen)))
        return rc;
    d->median_w = d->tw, d->median_h = d->th;
    d->layout = "tensors";
    d->validation = d->x[DS_VAL] ? "x_val" : "held out from train";
    if (d->x[DS_VAL]) d->holdout = 0;
    return d->x[DS_VAL] ? 0 : hold_out(d, d->holdout, d->seed, err, errlen);
}

/* ---------------------------------------------------------------- opening */

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

/* Unpacks an archive into o->unpack_dir (which must not exist: on failure ds_open removes
 * what it made) or a fresh temporary directory that ds_free removes. */
static int unpack(ds_dataset *d, const char *path, const ds_opts *o, char *dir, size_t dirlen,
                  char *err, size_t errlen)
{
    struct stat st;
    if (o->unpack_dir) {
        if (lstat(o->unpack_dir, &st) == 0 || errno != ENOENT)
            return eng_errf(err, errlen, ENG_EINVAL, "unpack directory %s must not exist", o->unpack_dir);
        if ((size_t)snprintf(dir, dirlen, "%s", o->unpack_dir) >= dirlen)
            return eng_errf(err, errlen, ENG_EINVAL, "unpack directory path too long");
    } else {
        const char *tmp = getenv("TMPDIR");
        char parent[1024];
        if ((size_t)snprintf(parent, sizeof parent, "%s/bit-ds-XXXXXX", tmp && *tmp ? tmp : "/tmp") >=
                sizeof parent || !mkdtemp(parent))
            return eng_errf(err, errlen, ENG_EIO, "cannot make a temporary directory under %s: %s",
                            tmp && *tmp ? tmp : "/tmp", strerror(errno));
        if (!(d->tmpdir = strdup(parent))) {
            rmdir(parent);
            return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        }
        snprintf(dir, dirlen, "%s/data", parent);
    }
    return arc_extract_path(path, dir, &o->arc, NULL, err, errlen);
}

static int open_any(ds_dataset *d, const char *path, const ds_opts *o, int *unpacked, char *err,
                    size_t errlen)
{
    struct stat st;
    char dir[DS_PATH];
    int rc;
    if (stat(path, &st) != 0)
        return eng_errf(err, errlen, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO, "%s: %s", path,
                        strerror(errno));
    if (S_ISDIR(st.st_mode)) return open_images(d, path, err, errlen);
    if (!S_ISREG(st.st_mode))
        return eng_errf(err, errlen, ENG_EINVAL, "%s: neither a directory nor a file", path);
    if (ends_with(path, ".npz")) { /* tensors count against the limit of unpacked archives */
        arc_limits lim;
        arc_limits_default(&lim);
        return open_tensors(d, path, o->arc.max_total_bytes ? o->arc.max_total_bytes : lim.max_total_bytes,
                            err, errlen);
    }
    if ((rc = unpack(d, path, o, dir, sizeof dir, err, errlen))) return rc;
    *unpacked = o->unpack_dir != NULL;
    return open_images(d, dir, err, errlen);
}

int ds_open(const char *path, const ds_opts *opts, ds_dataset **out, char *err, size_t errlen)
{
    ds_opts o = {0};
    if (opts) o = *opts;
    *out = NULL;
    if (!path || !(o.holdout >= 0 && o.holdout < 1) || o.examples_per_class < 0)
        return eng_errf(err, errlen, ENG_EINVAL, "holdout must be in [0, 1), examples_per_class >= 0");
    ds_dataset *d = calloc(1, sizeof *d);
    if (!d) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    d->img = o.img;
    d->seed = o.seed;
    d->holdout = o.holdout > 0 ? o.holdout : DEFAULT_HOLDOUT;
    int unpacked = 0, rc = open_any(d, path, &o, &unpacked, err, errlen);
    if (!rc && o.examples_per_class) rc = few_shot(d, o.examples_per_class, o.seed, err, errlen);
    if (!rc && !d->tensor) rc = median_size(d, err, errlen);
    if (rc) {
        char e[256];
        ds_free(d);
        if (unpacked) arc_remove_tree(o.unpack_dir, e, sizeof e);
        return rc;
    }
    *out = d;
    return 0;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    for (size_t k = 0; k < n; k++) h = (h ^ ((const unsigned char *)p)[k]) * 1099511628211ull;
    return h;
}

uint64_t ds_fingerprint(const ds_dataset *d)
{
    uint64_t h = fnv1a(1469598103934665603ull, &d->ncls, sizeof d->ncls);
    for (int c = 0; c < d->ncls; c++) h = fnv1a(h, d->classes[c], strlen(d->classes[c]) + 1);
    for (int s = 0; s < 2; s++) {
        h = fnv1a(h, &d->split[s].n, sizeof d->split[s].n); /* a move across splits counts */
        for (int64_t i = 0; i < d->split[s].n; i++) {
            const ds_item *it = &d->split[s].v[i];
            if (it->path) h = fnv1a(h, it->path + it->name, strlen(it->path + it->name) + 1);
            h = fnv1a(h, &it->src, sizeof it->src);
            h = fnv1a(h, &it->row, sizeof it->row);
            h = fnv1a(h, &it->label, sizeof it->label);
        }
    }
    return h;
}

static json_t *split_json(const ds_dataset *d, int s)
{
    json_t *per = json_object();
    int64_t *cnt = calloc((size_t)d->ncls + 1, sizeof *cnt);
    for (int64_t i = 0; cnt && i < d->split[s].n; i++) cnt[d->split[s].v[i].label]++;
    for (int c = 0; cnt && c < d->ncls; c++) json_object_set_new(per, d->classes[c], json_integer(cnt[c]));
    free(cnt);
    return json_pack("{s:I, s:o}", "total", (json_int_t)d->split[s].n, "per_class", per);
}

json_t *ds_summary(const ds_dataset *d)
{
    json_t *o = json_object(), *cls = json_array(), *splits = json_object(), *bad = json_array();
    for (int c = 0; c < d->ncls; c++) json_array_append_new(cls, json_string(d->classes[c]));
    json_object_set_new(splits, "train", split_json(d, DS_TRAIN));
    json_object_set_new(splits, "val", split_json(d, DS_VAL));
    for (int i = 0; i < d->undecodable && i < MAX_BAD_SHOWN; i++)
        json_array_append_new(bad, json_string(d->bad[i]));
    json_object_set_new(o, "kind", json_string(d->tensor ? "tensors" : "images"));
    json_object_set_new(o, "layout", json_string(d->layout));
    json_object_set_new(o, "root", json_string(d->root));
    json_object_set_new(o, "num_classes", json_integer(d->ncls));
    json_object_set_new(o, "classes", cls);
    json_object_set_new(o, "splits", splits);
    json_object_set_new(o, "validation", json_string(d->validation));
    json_object_set_new(o, "holdout", d->holdout > 0 ? json_real(d->holdout) : json_null());
    json_object_set_new(o, "seed", json_integer((json_int_t)d->seed));
    json_object_set_new(o, "examples_per_class", d->few_shot ? json_integer(d->few_shot) : json_null());
    json_object_set_new(o, "skipped", json_pack("{s:I, s:I, s:I, s:o}", "non_image",
                                                (json_int_t)d->non_image, "outside_class",
                                                (json_int_t)d->outside, "undecodable",
                                                (json_int_t)d->undecodable, "undecodable_first", bad));
    json_object_set_new(o, "median_image_size", json_pack("[i,i]", d->median_w, d->median_h));
    return o;
}

int ds_example(const ds_dataset *d, ds_split s, int64_t i, int augment, int precrop, int crop,
               eng_rng *rng, float *dst, char *err, size_t errlen)
{
    if (i < 0 || i >= ds_size(d, s))
        return eng_errf(err, errlen, ENG_EINVAL, "no example %lld in that split", (long long)i);
    const ds_item *it = &d->split[s].v[i];
    if (d->tensor) {
        size_t per = (size_t)3 * d->th * d->tw;
        memcpy(dst, (const float *)d->x[it->src]->data + per * (size_t)it->row, per * sizeof(float));
        return 0;
    }
    if (augment && !rng) return eng_errf(err, errlen, ENG_EINVAL, "augmentation needs an rng");
    img_rgb8 *img = NULL;
    char e[400];
    int rc = img_load_file(it->path, &d->img, augment ? precrop : crop, &img, e, sizeof e);
    if (!rc) {
        if (augment) {
            pre_aug aug;
            pre_aug_draw(rng, precrop, crop, &aug);
            rc = pre_train(img, precrop, crop, &aug, dst, e, sizeof e);
        } else {
            rc = pre_eval(img, crop, dst, e, sizeof e);
        }
    }
    img_rgb8_free(img);
    return rc ? eng_errf(err, errlen, rc, "%s: %s", it->path + it->name, reason(e, it->path)) : 0;
}

/* bit dataset: what a dataset holds, as the server and the trainer will see it; and
 * from-idx, which turns MNIST-style idx files (as Debian's dataset-fashion-mnist ships them)
 * into class folders of PNG images. */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <getopt.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "dataset.h"

static const char dataset_usage[] =
    "usage: bit dataset inspect PATH [--seed S] [--holdout F] [--examples-per-class K]\n"
    "       bit dataset from-idx IMAGES LABELS OUT_DIR [--classes NAME,NAME,...]\n\n"
    "PATH is a directory of class folders (or train/ and val/), a tar, tar.gz, tar.xz or zip\n"
    "archive of one, or an .npz of tensors (x, y, optional x_val, y_val, classes). Prints the\n"
    "summary as JSON: classes, images per class and split, skipped files, median image size.\n"
    "Without val/, a stratified hold-out (default 10 % per class, seeded) is the validation\n"
    "split; the hold-out keeps at least one image of each class in training.\n\n"
    "from-idx writes the images of an idx file (unsigned bytes [N, H, W], gzipped or not,\n"
    "as MNIST and Fashion-MNIST ship) as OUT_DIR/<class>/<index>.png, grey 8-bit, class by\n"
    "the label file (unsigned bytes [N]): label i goes to the i-th name of --classes, or to\n"
    "folder i (zero-padded). OUT_DIR must not exist; on failure it is removed again.\n";

#define IDX_MAX_BYTES ((size_t)1 << 30)

/* A whole idx file, through libarchive's raw format so that .gz and plain read alike. */
static int idx_slurp(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen)
{
    struct archive *a = archive_read_new();
    struct archive_entry *e;
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    int rc = 0;
    if (!a || !buf) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        goto fail;
    }
    if (archive_read_support_filter_none(a) || archive_read_support_filter_gzip(a) ||
        archive_read_support_format_raw(a)) {
        rc = eng_errf(err, errlen, ENG_EUNSUPPORTED, "libarchive lacks built-in gzip");
        goto fail;
    }
    if (archive_read_open_filename(a, path, 1 << 16) || archive_read_next_header(a, &e)) {
        const char *why = archive_error_string(a);
        rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", path, why ? why : "empty file");
        goto fail;
    }
    for (la_ssize_t k; (k = archive_read_data(a, buf + n, cap - n)) != 0; n += (size_t)k) {
        if (k < 0) {
            rc = eng_errf(err, errlen, ENG_EFORMAT, "%s: %s", path, archive_error_string(a));
            goto fail;
        }
        if (n + (size_t)k == cap) {
            unsigned char *nb = cap < IDX_MAX_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                rc = eng_errf(err, errlen, ENG_ELIMIT, "%s: larger than %zu bytes", path,
                              IDX_MAX_BYTES);
                goto fail;
            }
            buf = nb, cap *= 2;
        }
    }
    *out = buf, *len = n, buf = NULL;
fail:
    free(buf);
    archive_read_free(a);
    return rc;
}

/* Checks an idx header: unsigned bytes, ndim dimensions that account for every byte. */
static int idx_dims(const unsigned char *b, size_t len, int ndim, int64_t *dims, const char *path,
                    char *err, size_t errlen)
{
    size_t head = 4 + 4 * (size_t)ndim, total = 1;
    if (len < head || b[0] || b[1] || b[2] != 0x08 || b[3] != ndim)
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: not an idx file of unsigned bytes with %d "
                        "dimension%s", path, ndim, ndim > 1 ? "s" : "");
    for (int i = 0; i < ndim; i++) {
        const unsigned char *d = b + 4 + 4 * i;
        dims[i] = (int64_t)d[0] << 24 | d[1] << 16 | d[2] << 8 | d[3];
        total *= (size_t)dims[i];
        if (!dims[i] || dims[i] > 100000000 || total > IDX_MAX_BYTES)
            return eng_errf(err, errlen, ENG_EFORMAT, "%s: dimension %d is %lld", path, i,
                            (long long)dims[i]);
    }
    if (len != head + total)
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: %zu bytes of data, the header says %zu",
                        path, len - head, total);
    return 0;
}

static int png_grey(const char *path, const unsigned char *px, int w, int h)
{
    FILE *f = fopen(path, "wbx");
    if (!f) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    volatile int ok = 0;
    if (info && setjmp(png_jmpbuf(png)) == 0) {
        png_init_io(png, f);
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, PNG_COLOR_TYPE_GRAY,
                     PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_write_info(png, info);
        for (int y = 0; y < h; y++) png_write_row(png, px + (size_t)y * w);
        png_write_end(png, NULL);
        ok = 1;
    }
    png_destroy_write_struct(&png, &info);
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Folder names: --classes split at commas, or the labels zero-padded so they sort as numbers. */
static int class_names(const char *list, int n, char ***out, char *err, size_t errlen)
{
    char **v = calloc((size_t)n, sizeof *v), *copy = list ? strdup(list) : NULL, *save = NULL;
    int k = 0;
    if (!v || (list && !copy)) k = -1;
    for (char *t = copy ? strtok_r(copy, ",", &save) : NULL; k >= 0 && t;
         t = strtok_r(NULL, ",", &save))
        if (k == n || t[0] == '.' || strchr(t, '/') || !(v[k++] = strdup(t))) k = -1;
    for (; !list && k >= 0 && k < n; k++)
        if (asprintf(&v[k], "%0*d", n > 10 ? (n > 100 ? 3 : 2) : 1, k) < 0) k = -1;
    free(copy);
    *out = v;
    if (k == n) return 0;
    return eng_errf(err, errlen, ENG_EINVAL, "--classes needs one folder name per label (%d), "
                    "none empty, starting with '.' or holding '/'", n);
}

static int write_classes(const char *out, const unsigned char *img, const unsigned char *lab,
                         const int64_t *dims, char **names, char *err, size_t errlen)
{
    char p[4400];
    size_t per = (size_t)(dims[1] * dims[2]);
    for (int64_t i = 0; i < dims[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", out, names[lab[i]]);
        if (mkdir(p, 0755) && errno != EEXIST)
            return eng_errf(err, errlen, ENG_EIO, "%s: %s", p, strerror(errno));
        snprintf(p, sizeof p, "%s/%s/%05lld.png", out, names[lab[i]], (long long)i);
        if (png_grey(p, img + per * (size_t)i, (int)dims[2], (int)dims[1]))
            return eng_errf(err, errlen, ENG_EIO, "%s: cannot write", p);
    }
    return 0;
}

static int from_idx(const char *images, const char *labels, const char *out, const char *classes)
{
    char err[1024];
    unsigned char *img = NULL, *lab = NULL, max = 0;
    size_t ni = 0, nl = 0;
    int64_t di[3], dl[1];
    char **names = NULL;
    int rc = idx_slurp(images, &img, &ni, err, sizeof err);
    if (!rc) rc = idx_slurp(labels, &lab, &nl, err, sizeof err);
    if (!rc) rc = idx_dims(img, ni, 3, di, images, err, sizeof err);
    if (!rc) rc = idx_dims(lab, nl, 1, dl, labels, err, sizeof err);
    if (!rc && (di[0] != dl[0] || di[1] > 4096 || di[2] > 4096))
        rc = eng_errf(err, sizeof err, ENG_EFORMAT, "%lld images of %lldx%lld, %lld labels",
                      (long long)di[0], (long long)di[2], (long long)di[1], (long long)dl[0]);
    for (int64_t i = 0; !rc && i < dl[0]; i++) max = lab[8 + i] > max ? lab[8 + i] : max;
    if (!rc) rc = class_names(classes, max + 1, &names, err, sizeof err);
    if (!rc && mkdir(out, 0755))
        rc = eng_errf(err, sizeof err, ENG_EIO, "%s: %s", out, strerror(errno));
    else if (!rc && (rc = write_classes(out, img + 16, lab + 8, di, names, err, sizeof err))) {
        char e2[256];
        arc_remove_tree(out, e2, sizeof e2);
    }
    for (int i = 0; names && i <= max; i++) free(names[i]);
    free(names), free(img), free(lab);
    if (rc) return cli_fail("dataset", "%s", err);
    json_t *o = json_pack("{s:s, s:I, s:i, s:[I,I]}", "out", out, "images", (json_int_t)di[0],
                          "classes", max + 1, "size", (json_int_t)di[2], (json_int_t)di[1]);
    char *txt = json_dumps(o, JSON_COMPACT);
    puts(txt ? txt : "{}");
    free(txt);
    json_decref(o);
    return 0;
}

int cmd_dataset(int argc, char **argv)
{
    static const struct option opts[] = {{"seed", 1, 0, 's'}, {"holdout", 1, 0, 'o'},
                                         {"examples-per-class", 1, 0, 'k'}, {"help", 0, 0, 'h'},
                                         {"classes", 1, 0, 'c'}, {0, 0, 0, 0}};
    ds_opts o = {0};
    const char *classes = NULL;
    long v;
    int c, bad = 0;
    optind = 1;
    if (cli_threads("dataset", "0") < 0) return 2;
    while ((c = cli_getopt("dataset", argc, argv, opts)) != -1) {
        switch (c) {
        case 's': bad |= cli_int("dataset", "--seed", optarg, 0, 1L << 62, &v); o.seed = (uint64_t)v; break;
        case 'o': {
            char *end;
            o.holdout = strtod(optarg, &end);
            if (*end || !(o.holdout > 0 && o.holdout < 1))
                bad = 1, cli_fail("dataset", "--holdout is a fraction in (0, 1)");
            break;
        }
        case 'k': bad |= cli_int("dataset", "--examples-per-class", optarg, 1, 1000000, &v); o.examples_per_class = (int)v; break;
        case 'c': classes = optarg; break;
        case 'h': fputs(dataset_usage, stdout); return 0;
        default: bad = 1;
        }
    }
    if (!bad && optind + 4 == argc && !strcmp(argv[optind], "from-idx"))
        return from_idx(argv[optind + 1], argv[optind + 2], argv[optind + 3], classes);
    if (bad || optind + 2 != argc || strcmp(argv[optind], "inspect") || classes) {
        fputs(dataset_usage, stderr);
        return 2;
    }
    char err[1024];
    ds_dataset *d = NULL;
    if (ds_open(argv[optind + 1], &o, &d, err, sizeof err)) return cli_fail("dataset", "%s", err);
    json_t *s = ds_summary(d);
    char *txt = json_dumps(s, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(txt);
    free(txt);
    json_decref(s);
    ds_free(d);
    return 0;
}

/* Archive extraction: every archive is built here with libarchive's writer, valid ones must
 * unpack byte for byte, hostile ones must fail with a reason and leave nothing behind.
 * `test_archive --bench-bomb [dir]` measures what refusing 2 GiB bombs costs (not in make check;
 * given a dir, the bombs stay there for `test_archive --extract ARCHIVE DEST`). */
#include "arc.h"

#include <archive.h>
#include <archive_entry.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "t.h"

static char err[1024];

enum { E_FILE, E_DIR, E_SYMLINK, E_HARDLINK, E_CHR, E_FIFO };
enum { F_USTAR, F_PAX, F_GNU, F_ZIP, F_ZIP_STORE, F_CPIO, F_ZIP_CRYPT };
enum { Z_NONE, Z_GZIP, Z_XZ, Z_BZIP2 };

typedef struct ent {
    const char *name;
    int type;
    const char *data; /* file content, or link target */
} ent;

static const char *FMT_NAMES[] = {"ustar", "pax", "gnutar", "zip", "zip-store", "cpio",
                                   "zip-encrypted"};
static const char *FLT_NAMES[] = {"none", "gzip", "xz", "bzip2"};

static long maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* A writer for path in the given format, filter and deflate level ("1" keeps the bomb
 * tests fast: zeros compress about as well); NULL if this libarchive cannot. */
static struct archive *writer(const char *path, int fmt, int flt, const char *level)
{
    struct archive *a = archive_write_new();
    int r = fmt == F_USTAR ? archive_write_set_format_ustar(a)
          : fmt == F_PAX ? archive_write_set_format_pax_restricted(a)
          : fmt == F_GNU ? archive_write_set_format_gnutar(a)
          : fmt == F_CPIO ? archive_write_set_format_cpio_newc(a)
          : archive_write_set_format_zip(a);
    if (r == ARCHIVE_OK && fmt == F_ZIP_STORE) r = archive_write_zip_set_compression_store(a);
    if (r == ARCHIVE_OK && fmt == F_ZIP_CRYPT)
        r = archive_write_set_options(a, "zip:encryption=zipcrypt");
    if (r == ARCHIVE_OK && fmt == F_ZIP_CRYPT) r = archive_write_set_passphrase(a, "secret");
    if (r == ARCHIVE_OK)
        r = flt == Z_GZIP ? archive_write_add_filter_gzip(a)
          : flt == Z_XZ ? archive_write_add_filter_xz(a)
          : flt == Z_BZIP2 ? archive_write_add_filter_bzip2(a)
          : archive_write_add_filter_none(a);
    if (r == ARCHIVE_OK && flt == Z_GZIP)
        r = archive_write_set_filter_option(a, "gzip", "compression-level", level);
    if (r == ARCHIVE_OK && fmt == F_ZIP)
        r = archive_write_set_format_option(a, "zip", "compression-level", level);
    /* Like every current zip tool: names flagged as UTF-8. */
    if (r == ARCHIVE_OK && (fmt == F_ZIP || fmt == F_ZIP_STORE || fmt == F_ZIP_CRYPT))
        r = archive_write_set_format_option(a, "zip", "hdrcharset", "UTF-8");
    if (r == ARCHIVE_OK) r = archive_write_open_filename(a, path);
    if (r != ARCHIVE_OK) {
        fprintf(stderr, "  writer %s/%s: %s\n", FMT_NAMES[fmt], FLT_NAMES[flt],
                archive_error_string(a));
        archive_write_free(a);
        return NULL;
    }
    return a;
}

static struct archive_entry *entry_for(const ent *x, int64_t size)
{
    struct archive_entry *e = archive_entry_new();
    /* Raw bytes: the test runs in the C locale, where UTF-8 names have no locale form. */
    archive_entry_set_pathname(e, x->name);
    archive_entry_set_mtime(e, 1700000000, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    switch (x->type) {
    case E_DIR: archive_entry_set_filetype(e, AE_IFDIR); archive_entry_set_perm(e, 0755); break;
    case E_SYMLINK:
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_perm(e, 0777);
        archive_entry_set_symlink(e, x->data);
        break;
    case E_HARDLINK:
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        archive_entry_set_hardlink(e, x->data);
        break;
    case E_CHR: archive_entry_set_filetype(e, AE_IFCHR); archive_entry_set_rdev(e, 0x0103); break;
    case E_FIFO: archive_entry_set_filetype(e, AE_IFIFO); archive_entry_set_perm(e, 0644); break;
    default:
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0644);
        if (size >= 0) archive_entry_set_size(e, size);
    }
    return e;
}

/* Writes the entries to path; 0 on success. */
static int build(const char *path, int fmt, int flt, const ent *es, size_t n)
{
    /* The zip writer converts names from the locale charset to UTF-8; the test itself stays
     * in the C locale, as the server may, so only this thread's writer switches. */
    locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    locale_t prev = utf8 ? uselocale(utf8) : (locale_t)0;
    struct archive *a = writer(path, fmt, flt, "1");
    int bad = !a;
    for (size_t i = 0; i < n && !bad; i++) {
        size_t len = es[i].type == E_FILE && es[i].data ? strlen(es[i].data) : 0;
        struct archive_entry *e = entry_for(&es[i], (int64_t)len);
        bad = archive_write_header(a, e) < ARCHIVE_WARN;
        if (!bad && len) bad = archive_write_data(a, es[i].data, len) != (la_ssize_t)len;
        if (bad) fprintf(stderr, "  build %s: %s\n", es[i].name, archive_error_string(a));
        archive_entry_free(e);
    }
    if (a) {
        bad |= archive_write_close(a) != ARCHIVE_OK;
        archive_write_free(a);
    }
    if (utf8) {
        uselocale(prev);
        freelocale(utf8);
    }
    return bad ? -1 : 0;
}

/* One entry of `size` zeros streamed through the writer (never held in memory). */
static int build_zeros(const char *path, int fmt, int flt, const char *name, uint64_t size,
                       const char *level)
{
    struct archive *a = writer(path, fmt, flt, level);
    if (!a) return -1;
    static const char zeros[1 << 16];
    ent x = {name, E_FILE, NULL};
    struct archive_entry *e = entry_for(&x, (int64_t)size);
    int bad = archive_write_header(a, e) != ARCHIVE_OK;
    for (uint64_t left = size; left && !bad;) {
        size_t n = left < sizeof zeros ? (size_t)left : sizeof zeros;
        bad = archive_write_data(a, zeros, n) != (la_ssize_t)n;
        left -= n;
    }
    archive_entry_free(e);
    bad |= archive_write_close(a) != ARCHIVE_OK;
    archive_write_free(a);
    return bad ? -1 : 0;
}

static int write_bytes(const char *path, const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(b, 1, n, f);
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Paths of one case: its own directory holding only dest, the archive beside it. */
typedef struct tcase {
    char dir[700], dest[800], arc[800];
} tcase;

static void case_init(tcase *c, const char *name)
{
    snprintf(c->dir, sizeof c->dir, "%s/%s", t_tmpdir(), name);
    snprintf(c->dest, sizeof c->dest, "%s/out", c->dir);
    snprintf(c->arc, sizeof c->arc, "%s/%s.arc", t_tmpdir(), name);
    arc_remove_tree(c->dir, err, sizeof err);
    mkdir(c->dir, 0755);
}

/* Entries in dir, dot-files included; -1 if it cannot be listed. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    return n;
}

/* Asserts the whole contract of a refusal: the code, a reason naming `needle`, and the
 * case directory back to empty (dest removed, nothing written beside it). */
#define EXPECT_REFUSED(c, rc, code, needle)                                                \
    do {                                                                                   \
        T_CHECKF((rc) == (code), "rc %d (want %d): %s", (rc), (code), err);                \
        T_CHECKF(strstr(err, (needle)) != NULL, "reason '%s' lacks '%s'", err, (needle));  \
        T_CHECKF(dir_entries((c)->dir) == 0, "%s not clean after: %s", (c)->dir, err);     \
        if (getenv("ARC_TEST_VERBOSE")) printf("     refused: %s\n", err);                 \
    } while (0)

static int refuse(tcase *c, const arc_limits *lim, arc_report *rep)
{
    err[0] = 0;
    return arc_extract_path(c->arc, c->dest, lim, rep, err, sizeof err);
}

static int file_is(const char *dir, const char *rel, const char *want)
{
    char path[1200], got[4096];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    return n == strlen(want) && !memcmp(got, want, n);
}

typedef struct seen {
    char names[16][64];
    int n;
    uint64_t bytes;
} seen;

static int collect(const char *rel, uint64_t size, void *ud)
{
    seen *s = ud;
    if (s->n < 16) snprintf(s->names[s->n], sizeof s->names[0], "%s", rel);
    s->n++;
    s->bytes += size;
    return 0;
}

static const ent CLASSES[] = {
    {"cat/", E_DIR, NULL},
    {"cat/1.jpg", E_FILE, "meow one"},
    {"cat/2.jpg", E_FILE, "meow two, longer"},
    {"dog/1.png", E_FILE, "woof"},
    {"dog/empty.jpg", E_FILE, ""},
};

static void valid_every_format(void)
{
    const int fmts[] = {F_USTAR, F_PAX, F_GNU, F_ZIP, F_ZIP_STORE};
    for (int fi = 0; fi < 5; fi++) {
        for (int flt = Z_NONE; flt <= Z_XZ; flt++) {
            if (fmts[fi] >= F_ZIP && flt != Z_NONE) continue;
            tcase c;
            char name[64];
            snprintf(name, sizeof name, "valid-%s-%s", FMT_NAMES[fmts[fi]], FLT_NAMES[flt]);
            case_init(&c, name);
            T_REQUIRE(build(c.arc, fmts[fi], flt, CLASSES, 5) == 0);
            arc_report r;
            int rc = arc_extract_path(c.arc, c.dest, NULL, &r, err, sizeof err);
            T_CHECKF(rc == 0, "%s: %s", name, err);
            T_CHECKF(r.files == 4 && r.dirs == 1 && r.entries == 5 && r.bytes == 28 &&
                     r.unpacked == 28, "%s: files %llu dirs %llu bytes %llu", name,
                     (unsigned long long)r.files, (unsigned long long)r.dirs,
                     (unsigned long long)r.bytes);
            T_CHECK(file_is(c.dest, "cat/1.jpg", "meow one"));
            T_CHECK(file_is(c.dest, "cat/2.jpg", "meow two, longer"));
            T_CHECK(file_is(c.dest, "dog/1.png", "woof") && file_is(c.dest, "dog/empty.jpg", ""));
            seen s = {0};
            T_CHECK(arc_walk(c.dest, collect, &s, err, sizeof err) == 0 && s.n == 4);
            T_CHECK(!strcmp(s.names[0], "cat/1.jpg") && !strcmp(s.names[3], "dog/empty.jpg"));
            struct stat st;
            mode_t um = umask(022);
            umask(um);
            T_CHECK(stat(c.dest, &st) == 0 && (st.st_mode & 0777) == (0755 & ~um));
            char f[900];
            snprintf(f, sizeof f, "%s/cat/1.jpg", c.dest);
            T_CHECK(stat(f, &st) == 0 && (st.st_mode & 0777) == (0644 & ~um));
            T_EQ(arc_remove_tree(c.dir, err, sizeof err), 0);
        }
    }
}

static void train_val_layout_and_dot_prefix(void)
{
    const ent es[] = {
        {"./", E_DIR, NULL},
        {"./train/", E_DIR, NULL},
        {"./train/cat/a.jpg", E_FILE, "train cat"},
        {"./train/dog/b.jpg", E_FILE, "train dog"},
        {"val/cat/c.jpg", E_FILE, "val cat"},
    };
    for (int fmt = F_PAX; fmt <= F_ZIP; fmt += F_ZIP - F_PAX) {
        tcase c;
        case_init(&c, fmt == F_ZIP ? "trainval-zip" : "trainval-tgz");
        T_REQUIRE(build(c.arc, fmt, fmt == F_ZIP ? Z_NONE : Z_GZIP, es, 5) == 0);
        arc_report r;
        T_CHECKF(arc_extract_path(c.arc, c.dest, NULL, &r, err, sizeof err) == 0, "%s", err);
        T_CHECK(r.files == 3 && r.dirs == 1 && r.skipped_hidden == 0 && r.skipped_junk == 0);
        T_CHECK(file_is(c.dest, "train/cat/a.jpg", "train cat"));
        T_CHECK(file_is(c.dest, "train/dog/b.jpg", "train dog"));
        T_CHECK(file_is(c.dest, "val/cat/c.jpg", "val cat"));
    }
}

static void junk_and_hidden_are_skipped(void)
{
    const ent es[] = {
        {"__MACOSX/", E_DIR, NULL},
        {"__MACOSX/cat/._1.jpg", E_FILE, "resource fork"},
        {"cat/._1.jpg", E_FILE, "appledouble"},
        {"cat/.DS_Store", E_FILE, "finder"},
        {"cat/1.jpg", E_FILE, "real"},
        {"cat/.hidden.jpg", E_FILE, "dot file"},
        {".git/", E_DIR, NULL},
        {".git/config", E_FILE, "[core]"},
    };
    for (int fmt = F_GNU; fmt <= F_ZIP; fmt++) {
        tcase c;
        case_init(&c, fmt == F_ZIP ? "junk-zip" : "junk-tar");
        T_REQUIRE(build(c.arc, fmt, Z_NONE, es, 8) == 0);
        arc_report r;
        T_CHECKF(arc_extract_path(c.arc, c.dest, NULL, &r, err, sizeof err) == 0, "%s", err);
        T_CHECKF(r.files == 1 && r.skipped_junk == 4 && r.skipped_hidden == 3 && r.entries == 8,
                 "files %llu junk %llu hidden %llu", (unsigned long long)r.files,
                 (unsigned long long)r.skipped_junk, (unsigned long long)r.skipped_hidden);
        T_CHECK(r.bytes == 4 && r.unpacked == 4 + 13 + 11 + 6 + 8 + 6);
        T_EQ(dir_entries(c.dest), 1);
        char cat[900];
        snprintf(cat, sizeof cat, "%s/cat", c.dest);
        T_CHECK(dir_entries(cat) == 1 && file_is(c.dest, "cat/1.jpg", "real"));
    }
}

static void unicode_names(void)
{
    const ent es[] = {{"köter/über 1.jpg", E_FILE, "wuff"}, {"猫/1.jpg", E_FILE, "nyan"}};
    for (int fmt = F_PAX; fmt <= F_ZIP; fmt += F_ZIP - F_PAX) {
        tcase c;
        case_init(&c, fmt == F_ZIP ? "unicode-zip" : "unicode-tar");
        T_REQUIRE(build(c.arc, fmt, Z_NONE, es, 2) == 0);
        T_CHECKF(arc_extract_path(c.arc, c.dest, NULL, NULL, err, sizeof err) == 0, "%s", err);
        T_CHECK(file_is(c.dest, "köter/über 1.jpg", "wuff"));
        T_CHECK(file_is(c.dest, "猫/1.jpg", "nyan"));
    }
}

/* One bad entry after a good one, so refusal also has to undo a written file. */
static void refuse_one(const char *casename, int fmt, ent bad, int code, const char *needle)
{
    tcase c;
    case_init(&c, casename);
    ent es[] = {{"cat/ok.jpg", E_FILE, "fine"}, bad};
    if (build(c.arc, fmt, Z_NONE, es, 2) != 0) {
        T_CHECKF(0, "%s: could not build", casename);
        return;
    }
    int rc = refuse(&c, NULL, NULL);
    EXPECT_REFUSED(&c, rc, code, needle);
}

static void hostile_names(void)
{
    char abs[800];
    snprintf(abs, sizeof abs, "%s/names-abs/abs-evil", t_tmpdir());
    refuse_one("names-dotdot", F_PAX, (ent){"../evil", E_FILE, "x"}, ENG_EFORMAT, "'..'");
    refuse_one("names-inner", F_PAX, (ent){"a/../../evil", E_FILE, "x"}, ENG_EFORMAT, "traversal");
    refuse_one("names-dotdot-zip", F_ZIP, (ent){"../evil", E_FILE, "x"}, ENG_EFORMAT, "../evil");
    refuse_one("names-dot-zip", F_ZIP, (ent){"./a/../../evil", E_FILE, "x"}, ENG_EFORMAT, "..");
    refuse_one("names-abs", F_PAX, (ent){abs, E_FILE, "x"}, ENG_EFORMAT, "absolute");
    refuse_one("names-abs-zip", F_ZIP, (ent){"/tmp/abs-evil", E_FILE, "x"}, ENG_EFORMAT,
               "absolute");
    refuse_one("names-empty", F_PAX, (ent){"a//b", E_FILE, "x"}, ENG_EFORMAT, "empty");
    refuse_one("names-dot", F_PAX, (ent){"a/./b", E_FILE, "x"}, ENG_EFORMAT, "'.'");
    refuse_one("names-ctrl", F_PAX, (ent){"a/b\x01.jpg", E_FILE, "x"}, ENG_EFORMAT, "control");
    refuse_one("names-bslash", F_PAX, (ent){"..\\evil", E_FILE, "x"}, ENG_EFORMAT, "backslash");
    refuse_one("names-utf8", F_PAX, (ent){"a/\xff\xfe.jpg", E_FILE, "x"}, ENG_EFORMAT, "UTF-8");
    struct stat st;
    T_CHECK(stat("/tmp/abs-evil", &st) != 0);
    char up[800];
    snprintf(up, sizeof up, "%s/evil", t_tmpdir());
    T_NE(stat(up, &st), 0);
}

static void hostile_types(void)
{
    refuse_one("type-symlink", F_PAX, (ent){"cat/link.jpg", E_SYMLINK, "/etc/passwd"},
               ENG_EFORMAT, "symbolic link");
    refuse_one("type-symlink-zip", F_ZIP, (ent){"cat/link.jpg", E_SYMLINK, "../../.."},
               ENG_EFORMAT, "symbolic link");
    refuse_one("type-hardlink", F_PAX, (ent){"cat/hard.jpg", E_HARDLINK, "cat/ok.jpg"},
               ENG_EFORMAT, "hard link");
    refuse_one("type-hardlink-out", F_GNU, (ent){"cat/hard.jpg", E_HARDLINK, "/etc/passwd"},
               ENG_EFORMAT, "hard link");
    refuse_one("type-chr", F_USTAR, (ent){"cat/tty", E_CHR, NULL}, ENG_EFORMAT, "device");
    refuse_one("type-fifo", F_PAX, (ent){"cat/fifo", E_FIFO, NULL}, ENG_EFORMAT, "FIFO");
    /* The classic escape: a symlink to a directory, then a file through it. */
    tcase c;
    case_init(&c, "type-link-then-file");
    const ent es[] = {{"up", E_SYMLINK, ".."}, {"up/escaped", E_FILE, "x"}};
    T_REQUIRE(build(c.arc, F_PAX, Z_NONE, es, 2) == 0);
    int rc = refuse(&c, NULL, NULL);
    EXPECT_REFUSED(&c, rc, ENG_EFORMAT, "'up'");
}

static void duplicates_and_conflicts(void)
{
    const ent dup[] = {{"cat/1.jpg", E_FILE, "a"}, {"cat/1.jpg", E_FILE, "b"}};
    const ent conflict[] = {{"cat", E_FILE, "a"}, {"cat/1.jpg", E_FILE, "b"}};
    const ent conflict2[] = {{"cat/1.jpg", E_FILE, "a"}, {"cat", E_FILE, "b"}};
    const ent *sets[] = {dup, conflict, conflict2};
    const char *needles[] = {"duplicate", "not a directory", "duplicate"};
    for (int i = 0; i < 3; i++) {
        for (int fmt = F_PAX; fmt <= F_ZIP; fmt += F_ZIP - F_PAX) {
            tcase c;
            char name[64];
            snprintf(name, sizeof name, "dup-%d-%d", i, fmt);
            case_init(&c, name);
            T_REQUIRE(build(c.arc, fmt, Z_NONE, sets[i], 2) == 0);
            int rc = refuse(&c, NULL, NULL);
            EXPECT_REFUSED(&c, rc, ENG_EFORMAT, needles[i]);
        }
    }
}

/* Rewrites the uncompressed size in every zip header (local and central) to `size`. */
static int zip_lie(const char *path, uint32_t size)
{
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    long len = file_size(path);
    unsigned char *b = malloc((size_t)len);
    int patched = 0;
    if (b && fread(b, 1, (size_t)len, f) == (size_t)len) {
        for (long i = 0; i + 46 <= len; i++) {
            int local = !memcmp(b + i, "PK\3\4", 4), central = !memcmp(b + i, "PK\1\2", 4);
            if (!local && !central) continue;
            long at = i + (local ? 22 : 24);
            for (int k = 0; k < 4; k++) b[at + k] = (unsigned char)(size >> (8 * k));
            patched++;
        }
        fseek(f, 0, SEEK_SET);
        fwrite(b, 1, (size_t)len, f);
    }
    free(b);
    return fclose(f) == 0 && patched ? 0 : -1;
}

static void limits_on_bytes(void)
{
    static char big[2001];
    memset(big, 'x', 2000);
    tcase c;
    case_init(&c, "limit-entry");
    const ent one[] = {{"cat/ok.jpg", E_FILE, "fine"}, {"cat/big.jpg", E_FILE, big}};
    T_REQUIRE(build(c.arc, F_PAX, Z_GZIP, one, 2) == 0);
    int rc = refuse(&c, &(arc_limits){.max_entry_bytes = 1000}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "cat/big.jpg");
    T_CHECK(arc_extract_path(c.arc, c.dest, &(arc_limits){.max_entry_bytes = 2000}, NULL,
                             err, sizeof err) == 0);

    case_init(&c, "limit-total");
    const ent three[] = {{"a/1", E_FILE, big + 1000}, {"a/2", E_FILE, big + 1000},
                         {"a/3", E_FILE, big + 1000}};
    T_REQUIRE(build(c.arc, F_ZIP, Z_NONE, three, 3) == 0);
    rc = refuse(&c, &(arc_limits){.max_total_bytes = 2500}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "2500");
    /* A header claiming 10 bytes: the total is enforced on what is inflated. libarchive
     * itself notices the lie only at the end of the entry, too late for a bomb. */
    T_REQUIRE(build_zeros(c.arc, F_ZIP, Z_NONE, "a/1", 4 << 20, "1") == 0);
    T_REQUIRE(zip_lie(c.arc, 10) == 0);
    arc_report r;
    rc = refuse(&c, &(arc_limits){.max_total_bytes = 1 << 20}, &r);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "1048576");
    T_CHECK(r.files == 0 && r.unpacked <= 1 << 20);
    rc = refuse(&c, NULL, &r);
    EXPECT_REFUSED(&c, rc, ENG_EFORMAT, "wrong size");
}

static void limits_on_counts_and_paths(void)
{
    tcase c;
    int rc;
    case_init(&c, "limit-count");
    ent many[20];
    char names[20][16];
    for (int i = 0; i < 20; i++) {
        snprintf(names[i], sizeof names[i], "a/%02d.jpg", i);
        many[i] = (ent){names[i], E_FILE, "x"};
    }
    T_REQUIRE(build(c.arc, F_USTAR, Z_XZ, many, 20) == 0);
    rc = refuse(&c, &(arc_limits){.max_entries = 10}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "10 entries");
    T_CHECK(arc_extract_path(c.arc, c.dest, &(arc_limits){.max_entries = 20}, NULL, err,
                             sizeof err) == 0);

    case_init(&c, "limit-path");
    const ent deep[] = {{"a/b/c/d/e.jpg", E_FILE, "x"}};
    T_REQUIRE(build(c.arc, F_PAX, Z_NONE, deep, 1) == 0);
    rc = refuse(&c, &(arc_limits){.max_depth = 4}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "path components");
    rc = refuse(&c, &(arc_limits){.max_path = 12}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "12 bytes");
    char longname[300];
    memset(longname, 'n', 299);
    longname[299] = 0;
    refuse_one("limit-component", F_PAX, (ent){longname, E_FILE, "x"}, ENG_ELIMIT, "255");
}

static void gzip_bomb(void)
{
    tcase c;
    case_init(&c, "bomb-gzip");
    double t0 = (eng_now_ms() / 1e3);
    T_REQUIRE(build_zeros(c.arc, F_PAX, Z_GZIP, "cat/zeros.jpg", 256ull << 20, "1") == 0);
    double built = (eng_now_ms() / 1e3) - t0;
    long rss0 = maxrss_kb();
    t0 = (eng_now_ms() / 1e3);
    arc_report r;
    int rc = refuse(&c, &(arc_limits){.max_entry_bytes = 1 << 20}, &r);
    double took = (eng_now_ms() / 1e3) - t0;
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "cat/zeros.jpg");
    T_CHECKF(took < 0.5 && r.unpacked <= 1 << 20, "%.3f s, %llu bytes", took,
             (unsigned long long)r.unpacked);
    T_CHECKF(maxrss_kb() - rss0 < 16 * 1024, "peak RSS grew %ld KiB", maxrss_kb() - rss0);
    /* The same hidden among skipped junk still meets the limit. */
    case_init(&c, "bomb-gzip-junk");
    T_REQUIRE(build_zeros(c.arc, F_GNU, Z_GZIP, "cat/._zeros.jpg", 64ull << 20, "1") == 0);
    rc = refuse(&c, &(arc_limits){.max_total_bytes = 1 << 20}, NULL);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "limit");
    printf("     gzip bomb: 256 MiB -> %ld bytes, built in %.2f s, refused in %.4f s\n",
           file_size(c.arc), built, took);
}

/* Feeds the file through a pipe, as an upload that was never stored, by a child process. */
static int extract_through_pipe(const char *arc, const char *dest, const arc_limits *lim,
                                arc_report *rep)
{
    int p[2];
    if (pipe(p) != 0) return -100;
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        int fd = open(arc, O_RDONLY);
        char buf[65536];
        ssize_t n;
        while (fd >= 0 && (n = read(fd, buf, sizeof buf)) > 0)
            if (write(p[1], buf, (size_t)n) != n) break;
        _exit(0);
    }
    close(p[1]);
    int rc = arc_extract_fd(p[0], dest, lim, rep, err, sizeof err);
    close(p[0]);
    waitpid(pid, NULL, 0);
    return rc;
}

static void zip_bomb(void)
{
    tcase c;
    case_init(&c, "bomb-zip");
    T_REQUIRE(build_zeros(c.arc, F_ZIP, Z_NONE, "cat/zeros.jpg", 128ull << 20, "1") == 0);
    arc_limits lim = {.max_entry_bytes = 1 << 20};
    arc_report r;
    int rc = refuse(&c, &lim, &r);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "declares");
    /* Headers claiming 1000 bytes: only the count of inflated bytes can stop it. */
    T_REQUIRE(zip_lie(c.arc, 1000) == 0);
    double t0 = (eng_now_ms() / 1e3);
    long rss0 = maxrss_kb();
    rc = refuse(&c, &lim, &r);
    double took = (eng_now_ms() / 1e3) - t0;
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "unpacks to more than");
    T_CHECKF(r.unpacked <= 1 << 20 && took < 0.5, "%llu bytes, %.3f s",
             (unsigned long long)r.unpacked, took);
    T_CHECKF(maxrss_kb() - rss0 < 16 * 1024, "peak RSS grew %ld KiB", maxrss_kb() - rss0);
    /* Streamed from a pipe, the zip reader only has the (lying) local headers. */
    rc = extract_through_pipe(c.arc, c.dest, &lim, &r);
    EXPECT_REFUSED(&c, rc, ENG_ELIMIT, "unpacks to more than");
    T_CHECK(r.unpacked <= 1 << 20);
}

static void corrupt_and_foreign(void)
{
    tcase c;
    const char *fmts[] = {"trunc-tar", "trunc-tgz", "trunc-zip", "trunc-txz"};
    const int fmt[] = {F_PAX, F_PAX, F_ZIP, F_GNU}, flt[] = {Z_NONE, Z_GZIP, Z_NONE, Z_XZ};
    static char body[40000];
    for (size_t i = 0; i < sizeof body - 1; i++) body[i] = (char)('a' + (i * 7919 % 26));
    const ent es[] = {{"cat/1.jpg", E_FILE, "small"}, {"cat/2.jpg", E_FILE, body}};
    for (int i = 0; i < 4; i++) {
        case_init(&c, fmts[i]);
        T_REQUIRE(build(c.arc, fmt[i], flt[i], es, 2) == 0);
        T_REQUIRE(truncate(c.arc, file_size(c.arc) * 2 / 3) == 0);
        int rc = refuse(&c, NULL, NULL);
        EXPECT_REFUSED(&c, rc, ENG_EFORMAT, "");
        T_CHECKF(strlen(err) > 10, "%s: reason '%s'", fmts[i], err);
    }
    struct { const char *name; const char *bytes; size_t len; const char *needle; } raw[] = {
        {"garbage", "this is not an archive at all, just some text\n", 46, "not a tar"},
        {"zero-bytes", "", 0, ""},
        {"7z", "7z\xbc\xaf\x27\x1c\x00\x04 garbage follows", 24, "not a tar"},
        {"rar", "Rar!\x1a\x07\x01\x00 garbage follows", 24, "not a tar"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        case_init(&c, raw[i].name);
        T_REQUIRE(write_bytes(c.arc, raw[i].bytes, raw[i].len) == 0);
        int rc = refuse(&c, NULL, NULL);
        EXPECT_REFUSED(&c, rc, ENG_EFORMAT, raw[i].needle);
    }
    /* Real archives of kinds we do not open. */
    const int ofmt[] = {F_CPIO, F_PAX, F_ZIP_CRYPT}, oflt[] = {Z_NONE, Z_BZIP2, Z_NONE};
    const char *oname[] = {"foreign-cpio", "foreign-bzip2", "foreign-encrypted"};
    for (int i = 0; i < 3; i++) {
        case_init(&c, oname[i]);
        if (build(c.arc, ofmt[i], oflt[i], es, 1) != 0) continue;
        int rc = refuse(&c, NULL, NULL);
        EXPECT_REFUSED(&c, rc, ENG_EFORMAT, i < 2 ? "not a tar" : "cat/1.jpg");
    }
}

static void empty_archives(void)
{
    const ent only_dirs[] = {{"cat/", E_DIR, NULL}, {"__MACOSX/._x", E_FILE, "junk"}};
    for (int i = 0; i < 3; i++) {
        tcase c;
        case_init(&c, i == 0 ? "empty-tar" : i == 1 ? "empty-zip" : "empty-dirs");
        T_REQUIRE(build(c.arc, i == 1 ? F_ZIP : F_PAX, Z_GZIP * (i == 0), only_dirs,
                        i == 2 ? 2 : 0) == 0);
        int rc = refuse(&c, NULL, NULL);
        EXPECT_REFUSED(&c, rc, ENG_EFORMAT, "no files");
    }
}

static void destination_rules(void)
{
    tcase c;
    case_init(&c, "dest-rules");
    T_REQUIRE(build(c.arc, F_PAX, Z_NONE, CLASSES, 5) == 0);
    /* An existing empty dest is used, and left existing and empty on failure. */
    T_REQUIRE(mkdir(c.dest, 0700) == 0);
    int rc = arc_extract_path(c.arc, c.dest, &(arc_limits){.max_entries = 2}, NULL, err,
                              sizeof err);
    T_CHECK(rc == ENG_ELIMIT && dir_entries(c.dest) == 0 && dir_entries(c.dir) == 1);
    T_CHECKF(arc_extract_path(c.arc, c.dest, NULL, NULL, err, sizeof err) == 0, "%s", err);
    /* Not empty: refused, and what was there is untouched. */
    rc = arc_extract_path(c.arc, c.dest, NULL, NULL, err, sizeof err);
    T_CHECK(rc == ENG_EINVAL && strstr(err, "not empty") && file_is(c.dest, "cat/1.jpg", "meow one"));
    /* A symlink as dest is refused rather than followed. */
    char link[900], empty[900];
    snprintf(link, sizeof link, "%s/link", c.dir);
    snprintf(empty, sizeof empty, "%s/empty", c.dir);
    T_REQUIRE(mkdir(empty, 0755) == 0 && symlink(empty, link) == 0);
    rc = arc_extract_path(c.arc, link, NULL, NULL, err, sizeof err);
    T_CHECK(rc == ENG_EINVAL && dir_entries(empty) == 0);
    rc = arc_extract_path(c.arc, "/nonexistent-parent/out", NULL, NULL, err, sizeof err);
    T_CHECK(rc == ENG_EINVAL && err[0]);
    rc = arc_extract_path("/nonexistent.tar", empty, NULL, NULL, err, sizeof err);
    T_CHECK(rc == ENG_EIO && strstr(err, "nonexistent.tar"));
    /* The fd variant reads from the start even when the writer left the offset at the end. */
    arc_remove_tree(c.dest, err, sizeof err);
    int fd = open(c.arc, O_RDONLY);
    T_REQUIRE(fd >= 0);
    lseek(fd, 0, SEEK_END);
    T_CHECKF(arc_extract_fd(fd, c.dest, NULL, NULL, err, sizeof err) == 0, "%s", err);
    close(fd);
    T_CHECK(file_is(c.dest, "dog/1.png", "woof"));
}

static int stop_at_second(const char *rel, uint64_t size, void *ud)
{
    return ++*(int *)ud == 2 ? -42 : 0;
}

static void walk_and_remove(void)
{
    tcase c;
    case_init(&c, "walk");
    char p[1000], outside[900];
    const char *files[] = {"b/2", "a/1", "a-b/x", "c", ".hidden", "a/.DS_Store", ".d/f"};
    const char *dirs[] = {"a", "b", "a-b", ".d"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", c.dir, dirs[i]);
        mkdir(p, 0755);
    }
    for (int i = 0; i < 7; i++) {
        snprintf(p, sizeof p, "%s/%s", c.dir, files[i]);
        T_REQUIRE(write_bytes(p, files[i], strlen(files[i])) == 0);
    }
    snprintf(outside, sizeof outside, "%s/walk-outside", t_tmpdir());
    mkdir(outside, 0755);
    snprintf(p, sizeof p, "%s/keep", outside);
    T_REQUIRE(write_bytes(p, "keep", 4) == 0);
    snprintf(p, sizeof p, "%s/a/link", c.dir);
    T_REQUIRE(symlink(outside, p) == 0);
    seen s = {0};
    T_REQUIRE(arc_walk(c.dir, collect, &s, err, sizeof err) == 0);
    T_CHECKF(s.n == 4 && !strcmp(s.names[0], "a/1") && !strcmp(s.names[1], "a-b/x") &&
             !strcmp(s.names[2], "b/2") && !strcmp(s.names[3], "c") && s.bytes == 3 + 5 + 3 + 1,
             "%d files: %s %s %s %s", s.n, s.names[0], s.names[1], s.names[2], s.names[3]);
    int calls = 0;
    T_CHECK(arc_walk(c.dir, stop_at_second, &calls, err, sizeof err) == -42 && calls == 2);
    T_CHECK(arc_walk("/nonexistent-dir", collect, &s, err, sizeof err) == ENG_ENOTFOUND);
    /* Removing the tree removes the link, not what it points to. */
    T_EQ(arc_remove_tree(p, err, sizeof err), ENG_EINVAL);
    T_CHECKF(arc_remove_tree(c.dir, err, sizeof err) == 0, "%s", err);
    struct stat st;
    T_CHECK(stat(c.dir, &st) != 0 && errno == ENOENT);
    snprintf(p, sizeof p, "%s/keep", outside);
    T_CHECK(file_is(outside, "keep", "keep"));
    T_EQ(arc_remove_tree(c.dir, err, sizeof err), 0);
}

/* ---- --bench-bomb: child processes, so each peak RSS is the extraction's own ---- */

static void bench_one(const char *label, const char *arc, const char *dest, int piped)
{
    fflush(stdout);
    double t0 = (eng_now_ms() / 1e3);
    pid_t pid = fork();
    if (pid == 0) {
        arc_report r;
        int rc = piped ? extract_through_pipe(arc, dest, NULL, &r)
                       : arc_extract_path(arc, dest, NULL, &r, err, sizeof err);
        printf("  %-34s rc %d, unpacked %llu bytes before refusal: %s\n", label, rc,
               (unsigned long long)r.unpacked, err);
        fflush(stdout);
        _exit(rc == ENG_ELIMIT ? 0 : 1);
    }
    int status;
    struct rusage ru;
    wait4(pid, &status, 0, &ru);
    printf("  %-34s wall %.3f s, user %.3f s, sys %.3f s, peak RSS %ld KiB, dest left: %s\n",
           "", (eng_now_ms() / 1e3) - t0, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6, ru.ru_maxrss,
           access(dest, F_OK) == 0 ? "yes" : "no");
}

static int bench_bomb(const char *dir)
{
    char tgz[600], zip[600], dest[600];
    snprintf(tgz, sizeof tgz, "%s/bomb-2g.tar.gz", dir);
    snprintf(zip, sizeof zip, "%s/bomb-2g-lying.zip", dir);
    snprintf(dest, sizeof dest, "%s/bomb-out", dir);
    arc_remove_tree(dest, err, sizeof err);
    uint64_t size = 2ull << 30;
    double t0 = (eng_now_ms() / 1e3);
    if (build_zeros(tgz, F_PAX, Z_GZIP, "cat/zeros.jpg", size, "9") != 0) return 2;
    printf("built %s: %ld bytes in %.1f s\n", tgz, file_size(tgz), (eng_now_ms() / 1e3) - t0);
    t0 = (eng_now_ms() / 1e3);
    if (build_zeros(zip, F_ZIP, Z_NONE, "cat/zeros.jpg", size, "9") != 0 || zip_lie(zip, 1000))
        return 2;
    printf("built %s: %ld bytes in %.1f s (headers say 1000 bytes)\n", zip, file_size(zip),
           (eng_now_ms() / 1e3) - t0);
    arc_limits d;
    arc_limits_default(&d);
    printf("default limits: %llu bytes per entry, %llu in all\n",
           (unsigned long long)d.max_entry_bytes, (unsigned long long)d.max_total_bytes);
    bench_one("baseline (fork only)", "/dev/null", dest, 0);
    bench_one("tar.gz, honest header", tgz, dest, 0);
    bench_one("zip, lying headers, seekable", zip, dest, 0);
    bench_one("zip, lying headers, from a pipe", zip, dest, 1);
    return 0;
}

static int extract_cmd(const char *arc, const char *dest)
{
    arc_report r;
    int rc = arc_extract_path(arc, dest, NULL, &r, err, sizeof err);
    printf("rc %d%s%s\nentries %llu, files %llu, dirs %llu, junk %llu, hidden %llu, "
           "bytes %llu, unpacked %llu\n", rc, rc ? ": " : "", rc ? err : "",
           (unsigned long long)r.entries, (unsigned long long)r.files,
           (unsigned long long)r.dirs, (unsigned long long)r.skipped_junk,
           (unsigned long long)r.skipped_hidden, (unsigned long long)r.bytes,
           (unsigned long long)r.unpacked);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && !strcmp(argv[1], "--bench-bomb")) {
        int rc = bench_bomb(argc >= 3 ? argv[2] : t_tmpdir());
        if (argc < 3) arc_remove_tree(t_tmpdir(), err, sizeof err);
        return rc;
    }
    if (argc == 4 && !strcmp(argv[1], "--extract")) /* for /usr/bin/time -v by hand */
        return extract_cmd(argv[2], argv[3]);
    T_RUN(valid_every_format);
    T_RUN(train_val_layout_and_dot_prefix);
    T_RUN(junk_and_hidden_are_skipped);
    T_RUN(unicode_names);
    T_RUN(hostile_names);
    T_RUN(hostile_types);
    T_RUN(duplicates_and_conflicts);
    T_RUN(limits_on_bytes);
    T_RUN(limits_on_counts_and_paths);
    T_RUN(gzip_bomb);
    T_RUN(zip_bomb);
    T_RUN(corrupt_and_foreign);
    T_RUN(empty_archives);
    T_RUN(destination_rules);
    T_RUN(walk_and_remove);
    if (!t_failed && !getenv("ARC_TEST_KEEP")) arc_remove_tree(t_tmpdir(), err, sizeof err); /* else kept to look at */
    return t_done();
}

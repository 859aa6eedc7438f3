/* Extraction goes through descriptors only: the destination is opened once and every
 * directory below it is reached with openat(O_NOFOLLOW), so neither a hostile name nor a
 * symlink planted in the tree can lead a write outside it. */
#include "arc.h"

#include <archive.h>
#include <archive_entry.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    COPY_BUF = 64 * 1024,
    NAME_MAX_BYTES = 255,
    PATH_HARD_MAX = 4096,
    TREE_MAX_DEPTH = 128, /* removal holds two descriptors per level: stay far from 1024 */
};

enum kind { K_KEEP, K_JUNK, K_HIDDEN, K_ROOT };

typedef struct ext {
    struct archive *a;
    arc_limits lim;
    arc_report *rep;
    int root;         /* the destination */
    int dirfd;        /* cached parent directory of the last file, or -1 */
    size_t dirlen;
    char *dirpath;    /* its path relative to root */
    char *path;       /* the current entry's cleaned path */
    char shown[200];  /* the current entry's raw name, printable, for messages */
    unsigned char *buf;
    char *err;
    size_t errlen;
} ext;

void arc_limits_default(arc_limits *lim)
{
    lim->max_entry_bytes = 64ull << 20;
    lim->max_total_bytes = 8ull << 30;
    lim->max_entries = 1000000;
    lim->max_path = 1024;
    lim->max_depth = 16;
}

static void limits_resolve(const arc_limits *in, arc_limits *out)
{
    arc_limits_default(out);
    if (!in) return;
    if (in->max_entry_bytes) out->max_entry_bytes = in->max_entry_bytes;
    if (in->max_total_bytes) out->max_total_bytes = in->max_total_bytes;
    if (in->max_entries) out->max_entries = in->max_entries;
    if (in->max_path) out->max_path = in->max_path;
    if (in->max_depth) out->max_depth = in->max_depth;
}

/* Names go into messages that end up in logs and JSON: keep them short and printable. */
static void show_name(const char *raw, char *out, size_t outlen)
{
    size_t i = 0;
    for (; raw && raw[i] && i + 4 < outlen; i++)
        out[i] = ((unsigned char)raw[i] < 0x20 || raw[i] == 0x7f) ? '?' : raw[i];
    if (raw && raw[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = 0;
}

static int utf8_valid(const unsigned char *s)
{
    while (*s) {
        int n = *s < 0x80 ? 0 : (*s & 0xe0) == 0xc0 ? 1 : (*s & 0xf0) == 0xe0 ? 2
              : (*s & 0xf8) == 0xf0 ? 3 : -1;
        if (n < 0 || (n == 1 && *s < 0xc2) || (n == 3 && *s > 0xf4)) return 0;
        uint32_t cp = *s & (0x7f >> n);
        for (int k = 1; k <= n; k++) {
            if ((s[k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return 0;
        s += n + 1;
    }
    return 1;
}

/* Checks one component [c, c+n) of a cleaned path. */
static int check_component(ext *x, const char *c, size_t n)
{
    if (n == 0)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': empty path component",
                        x->shown);
    if (n == 2 && !memcmp(c, "..", 2))
        return eng_errf(x->err, x->errlen, ENG_EFORMAT,
                        "entry '%s': '..' in the path (path traversal)", x->shown);
    if (n == 1 && c[0] == '.')
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': '.' inside the path",
                        x->shown);
    if (n > NAME_MAX_BYTES)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT,
                        "entry '%s': a path component is over %d bytes", x->shown,
                        NAME_MAX_BYTES);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)c[i];
        if (ch < 0x20 || ch == 0x7f || ch == '\\')
            return eng_errf(x->err, x->errlen, ENG_EFORMAT,
                            "entry '%s': control character or backslash in the name", x->shown);
    }
    return 0;
}

static enum kind classify(const char *path)
{
    enum kind k = K_KEEP;
    for (const char *c = path; *c;) {
        size_t n = strcspn(c, "/");
        int last = c[n] == 0;
        if (n == 8 && !memcmp(c, "__MACOSX", 8)) return K_JUNK;
        if (last && (!strncmp(c, "._", 2) || !strcmp(c, ".DS_Store"))) return K_JUNK;
        if (c[0] == '.') k = K_HIDDEN;
        c += n + !last;
    }
    return k;
}

/* Turns the raw name into x->path (no leading "./", no trailing '/') and says what it is. */
static int clean_path(ext *x, const char *raw, int is_dir, enum kind *kind)
{
    if (!*raw)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry %" PRIu64 " has no name",
                        x->rep->entries);
    if (raw[0] == '/')
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': absolute path", x->shown);
    while (raw[0] == '.' && raw[1] == '/') raw += 2;
    size_t len = strlen(raw);
    while (is_dir && len && raw[len - 1] == '/') len--;
    if (len == 0 || (len == 1 && raw[0] == '.')) {
        if (is_dir) { *kind = K_ROOT; return 0; }
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': a file without a name",
                        x->shown);
    }
    if (len > x->lim.max_path)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT, "entry '%s': path over %" PRIu32
                        " bytes", x->shown, x->lim.max_path);
    memcpy(x->path, raw, len);
    x->path[len] = 0;
    uint32_t depth = 0;
    for (const char *c = x->path;; depth++) {
        size_t n = strcspn(c, "/");
        int rc = check_component(x, c, n);
        if (rc) return rc;
        if (!c[n]) break;
        c += n + 1;
    }
    if (depth + 1 > x->lim.max_depth)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT, "entry '%s': more than %" PRIu32
                        " path components", x->shown, x->lim.max_depth);
    if (!utf8_valid((const unsigned char *)x->path))
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': name is not UTF-8",
                        x->shown);
    *kind = classify(x->path);
    return 0;
}

static int check_type(ext *x, struct archive_entry *e)
{
    const char *what = NULL;
    mode_t t = archive_entry_filetype(e);
    if (archive_entry_hardlink(e)) what = "a hard link";
    else if (archive_entry_symlink(e) || t == AE_IFLNK) what = "a symbolic link";
    else if (t == AE_IFCHR || t == AE_IFBLK) what = "a device";
    else if (t == AE_IFIFO) what = "a FIFO";
    else if (t == AE_IFSOCK) what = "a socket";
    else if (t != AE_IFREG && t != AE_IFDIR) what = "of an unknown file type";
    if (!what) return 0;
    return eng_errf(x->err, x->errlen, ENG_EFORMAT,
                    "entry '%s' is %s: only files and directories are allowed", x->shown, what);
}

static int dir_error(ext *x, const char *comp, size_t n)
{
    if (errno == ENOTDIR || errno == ELOOP)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT,
                        "entry '%s': '%.*s' is not a directory (an earlier entry made it a file)",
                        x->shown, (int)n, comp);
    return eng_errf(x->err, x->errlen, eng_errno_code(errno), "entry '%s': cannot create directory '%.*s': %s",
                    x->shown, (int)n, comp, strerror(errno));
}

/* Opens, creating as needed, the directory rel[0, len) under root; the fd stays cached. */
static int enter_dir(ext *x, const char *rel, size_t len, int *out)
{
    if (x->dirfd >= 0 && len == x->dirlen && !memcmp(rel, x->dirpath, len)) {
        *out = x->dirfd;
        return 0;
    }
    if (x->dirfd >= 0 && x->dirfd != x->root) close(x->dirfd);
    x->dirfd = -1;
    int fd = x->root;
    char name[NAME_MAX_BYTES + 1];
    for (size_t at = 0; at < len;) {
        size_t n = strcspn(rel + at, "/");
        if (n > len - at) n = len - at;
        memcpy(name, rel + at, n);
        name[n] = 0;
        int made = mkdirat(fd, name, 0755) == 0;
        int nfd = made || errno == EEXIST
                      ? openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
        if (nfd < 0) {
            int rc = dir_error(x, rel + at, n);
            if (fd != x->root) close(fd);
            return rc;
        }
        if (fd != x->root) close(fd);
        fd = nfd;
        at += n + 1;
    }
    x->dirfd = fd;
    memcpy(x->dirpath, rel, len);
    x->dirlen = len;
    *out = fd;
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Streams the entry's data into fd (or nowhere when fd < 0), counting what the decoder
 * actually produces: sizes in headers can lie. Refuses a block before writing it. */
static int copy_data(ext *x, int fd, uint64_t *written)
{
    uint64_t n_entry = 0;
    for (;;) {
        la_ssize_t n = archive_read_data(x->a, x->buf, COPY_BUF);
        if (n == 0) break;
        if (n < 0)
            return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': %s", x->shown,
                            archive_error_string(x->a));
        n_entry += (uint64_t)n;
        if (n_entry > x->lim.max_entry_bytes)
            return eng_errf(x->err, x->errlen, ENG_ELIMIT, "entry '%s' unpacks to more than "
                            "the limit of %" PRIu64 " bytes", x->shown, x->lim.max_entry_bytes);
        if ((uint64_t)n > x->lim.max_total_bytes - x->rep->unpacked)
            return eng_errf(x->err, x->errlen, ENG_ELIMIT, "archive unpacks to more than the "
                            "limit of %" PRIu64 " bytes (at entry '%s')",
                            x->lim.max_total_bytes, x->shown);
        x->rep->unpacked += (uint64_t)n;
        if (fd >= 0 && write_all(fd, x->buf, (size_t)n) != 0)
            return eng_errf(x->err, x->errlen, eng_errno_code(errno), "entry '%s': write failed: %s",
                            x->shown, strerror(errno));
    }
    *written = n_entry;
    return 0;
}

static int write_file(ext *x)
{
    const char *slash = strrchr(x->path, '/');
    const char *leaf = slash ? slash + 1 : x->path;
    int dfd;
    int rc = enter_dir(x, x->path, slash ? (size_t)(slash - x->path) : 0, &dfd);
    if (rc) return rc;
    int fd = openat(dfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': duplicate name (a file or "
                        "directory of that name exists)", x->shown);
    if (fd < 0)
        return eng_errf(x->err, x->errlen, eng_errno_code(errno), "entry '%s': cannot create: %s", x->shown,
                        strerror(errno));
    uint64_t n = 0;
    rc = copy_data(x, fd, &n);
    if (close(fd) != 0 && !rc)
        rc = eng_errf(x->err, x->errlen, eng_errno_code(errno), "entry '%s': close failed: %s", x->shown,
                      strerror(errno));
    if (rc) return rc;
    x->rep->files++;
    x->rep->bytes += n;
    return 0;
}

/* Refuses early what the header admits to; copy_data catches what it hides. */
static int check_declared_size(ext *x, struct archive_entry *e)
{
    if (!archive_entry_size_is_set(e) || archive_entry_filetype(e) != AE_IFREG) return 0;
    int64_t s = archive_entry_size(e);
    if (s < 0) return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry '%s': negative size",
                               x->shown);
    if ((uint64_t)s > x->lim.max_entry_bytes)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT, "entry '%s' declares %" PRId64 " bytes, "
                        "over the limit of %" PRIu64, x->shown, s, x->lim.max_entry_bytes);
    if ((uint64_t)s > x->lim.max_total_bytes - x->rep->unpacked)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT, "archive unpacks to more than the limit "
                        "of %" PRIu64 " bytes (at entry '%s')", x->lim.max_total_bytes,
                        x->shown);
    return 0;
}

static int one_entry(ext *x, struct archive_entry *e)
{
    if (++x->rep->entries > x->lim.max_entries)
        return eng_errf(x->err, x->errlen, ENG_ELIMIT, "archive has more than %" PRIu64
                        " entries", x->lim.max_entries);
    /* The UTF-8 form is what must be valid; the raw form is the fallback that lets a tar
     * name which is not UTF-8 reach a reasoned refusal rather than "no name". */
    const char *raw = archive_entry_pathname_utf8(e);
    if (!raw) raw = archive_entry_pathname(e);
    if (!raw)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "entry %" PRIu64 ": unreadable name: %s",
                        x->rep->entries, archive_error_string(x->a));
    show_name(raw, x->shown, sizeof x->shown);
    int is_dir = archive_entry_filetype(e) == AE_IFDIR;
    enum kind kind = K_KEEP;
    int rc = clean_path(x, raw, is_dir, &kind);
    if (!rc) rc = check_type(x, e);
    if (!rc) rc = check_declared_size(x, e);
    if (rc || kind == K_ROOT) return rc;
    if (kind != K_KEEP) {
        uint64_t n;
        if (kind == K_JUNK) x->rep->skipped_junk++;
        else x->rep->skipped_hidden++;
        /* Drained, not skipped by libarchive, so a hidden bomb still meets the limits. */
        return is_dir ? 0 : copy_data(x, -1, &n);
    }
    if (!is_dir) return write_file(x);
    int dfd;
    rc = enter_dir(x, x->path, strlen(x->path), &dfd);
    if (!rc) x->rep->dirs++;
    return rc;
}

static int remove_contents(int dfd, int depth, char *err, size_t errlen);

static int remove_entry(int dfd, const char *name, int depth, char *err, size_t errlen)
{
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : eng_errf(err, errlen, ENG_EIO, "stat '%s': %s", name,
                                              strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (cfd < 0) return eng_errf(err, errlen, ENG_EIO, "open '%s': %s", name,
                                     strerror(errno));
        int rc = remove_contents(cfd, depth + 1, err, errlen);
        close(cfd);
        if (rc) return rc;
    }
    if (unlinkat(dfd, name, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) != 0 && errno != ENOENT)
        return eng_errf(err, errlen, ENG_EIO, "remove '%s': %s", name, strerror(errno));
    return 0;
}

/* Empties the directory dfd (borrowed). Repeats the scan because readdir need not return
 * entries of a directory being modified. */
static int remove_contents(int dfd, int depth, char *err, size_t errlen)
{
    if (depth > TREE_MAX_DEPTH)
        return eng_errf(err, errlen, ENG_ELIMIT, "directory tree deeper than %d",
                        TREE_MAX_DEPTH);
    int dup_fd = dup(dfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return eng_errf(err, errlen, ENG_EIO, "cannot list a directory: %s", strerror(errno));
    }
    int rc = 0, found = 1;
    for (int pass = 0; found && !rc && pass < 4; pass++) {
        rewinddir(d);
        found = 0;
        struct dirent *de;
        while (!rc && (de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            found = 1;
            rc = remove_entry(dfd, de->d_name, depth, err, errlen);
        }
    }
    closedir(d);
    if (!rc && found)
        rc = eng_errf(err, errlen, ENG_EIO, "a directory kept refilling while removing it");
    return rc;
}

int arc_remove_tree(const char *dir, char *err, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) return 0;
    if (fd < 0 && (errno == ELOOP || errno == ENOTDIR))
        return eng_errf(err, errlen, ENG_EINVAL, "%s: not a directory (symlinks are not "
                        "followed)", dir);
    if (fd < 0) return eng_errf(err, errlen, ENG_EIO, "%s: %s", dir, strerror(errno));
    int rc = remove_contents(fd, 0, err, errlen);
    close(fd);
    if (!rc && rmdir(dir) != 0)
        rc = eng_errf(err, errlen, ENG_EIO, "%s: %s", dir, strerror(errno));
    return rc;
}

static int dir_is_empty(int fd)
{
    int dup_fd = dup(fd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return 0;
    }
    struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)))
        empty = !strcmp(de->d_name, ".") || !strcmp(de->d_name, "..");
    closedir(d);
    return empty;
}

/* Opens dest, creating it when absent; *created says whether failure must remove it. */
static int open_dest(const char *dest, int *fd, int *created, char *err, size_t errlen)
{
    *created = mkdir(dest, 0755) == 0;
    if (!*created && errno != EEXIST)
        return eng_errf(err, errlen, errno == ENOENT ? ENG_EINVAL : ENG_EIO,
                        "%s: cannot create: %s", dest, strerror(errno));
    *fd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (*fd < 0) {
        int e = errno;
        if (*created) rmdir(dest);
        return eng_errf(err, errlen, e == ELOOP || e == ENOTDIR ? ENG_EINVAL : ENG_EIO,
                        "%s: %s", dest, e == ELOOP ? "is a symlink" : strerror(e));
    }
    if (!*created && !dir_is_empty(*fd)) {
        close(*fd);
        *fd = -1;
        return eng_errf(err, errlen, ENG_EINVAL, "%s: destination is not empty", dest);
    }
    return 0;
}

static int read_error(struct archive *a, uint64_t entries, char *err, size_t errlen)
{
    /* libarchive's "file format" errno is EILSEQ: no reader recognised the bytes. */
    if (!entries && archive_errno(a) == EILSEQ)
        return eng_errf(err, errlen, ENG_EFORMAT, "not a tar, tar.gz, tar.xz or zip archive "
                        "(%s)", archive_error_string(a));
    return eng_errf(err, errlen, ENG_EFORMAT, "corrupt archive after %" PRIu64 " entries: %s",
                    entries, archive_error_string(a));
}

static int open_reader(struct archive **out, int fd, char *err, size_t errlen)
{
    struct archive *a = archive_read_new();
    if (!a) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    /* ARCHIVE_WARN from a filter means it would run an external gzip/xz program. */
    if (archive_read_support_format_tar(a) != ARCHIVE_OK ||
        archive_read_support_format_zip(a) != ARCHIVE_OK ||
        archive_read_support_filter_none(a) != ARCHIVE_OK ||
        archive_read_support_filter_gzip(a) != ARCHIVE_OK ||
        archive_read_support_filter_xz(a) != ARCHIVE_OK) {
        archive_read_free(a);
        return eng_errf(err, errlen, ENG_EUNSUPPORTED,
                        "libarchive was built without zlib or liblzma");
    }
    if (archive_read_open_fd(a, fd, COPY_BUF) != ARCHIVE_OK) {
        int rc = read_error(a, 0, err, errlen);
        archive_read_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

static int extract_all(ext *x)
{
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(x->a, &e);
        if (r == ARCHIVE_EOF) break;
        /* WARN is libarchive noting something it coped with, e.g. an unconvertible name. */
        if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
            return read_error(x->a, x->rep->entries, x->err, x->errlen);
        int rc = one_entry(x, e);
        if (rc) return rc;
    }
    if (!x->rep->files)
        return eng_errf(x->err, x->errlen, ENG_EFORMAT, "archive contains no files (%" PRIu64
                        " entries, %" PRIu64 " skipped)", x->rep->entries,
                        x->rep->skipped_junk + x->rep->skipped_hidden);
    return 0;
}

/* zip and pax names are UTF-8; libarchive converts them to the locale's charset and drops
 * those it cannot (all non-ASCII ones in the C locale), so read in C.UTF-8, switched for this
 * thread only and restored. Without that locale, non-ASCII zip names fail with a reason. */
static int read_archive(ext *x, int fd)
{
    locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
    locale_t prev = utf8 ? uselocale(utf8) : (locale_t)0;
    int rc = open_reader(&x->a, fd, x->err, x->errlen);
    if (!rc) rc = extract_all(x);
    if (x->a) archive_read_free(x->a);
    x->a = NULL;
    if (utf8) {
        uselocale(prev);
        freelocale(utf8);
    }
    return rc;
}

static void undo(const char *dest, int root, int created, char *err, size_t errlen)
{
    char why[256];
    int rc = remove_contents(root, 0, why, sizeof why);
    if (!rc && created && rmdir(dest) != 0)
        rc = eng_errf(why, sizeof why, ENG_EIO, "%s", strerror(errno));
    size_t used = err ? strlen(err) : 0;
    if (rc && err && used + 1 < errlen)
        snprintf(err + used, errlen - used, "; cleaning %s failed: %s", dest, why);
}

int arc_extract_fd(int fd, const char *dest, const arc_limits *lim, arc_report *rep,
                   char *err, size_t errlen)
{
    arc_report local;
    ext x = {.rep = rep ? rep : &local, .root = -1, .dirfd = -1, .err = err,
             .errlen = errlen};
    memset(x.rep, 0, sizeof *x.rep);
    limits_resolve(lim, &x.lim);
    /* Bounded so that undoing a failure can always walk back down the tree. */
    if (x.lim.max_path > PATH_HARD_MAX || x.lim.max_depth > TREE_MAX_DEPTH)
        return eng_errf(err, errlen, ENG_EINVAL, "limits: max_path over %d or max_depth "
                        "over %d", PATH_HARD_MAX, TREE_MAX_DEPTH);
    struct stat st;
    if (fstat(fd, &st) != 0)
        return eng_errf(err, errlen, ENG_EIO, "archive: %s", strerror(errno));
    if (S_ISREG(st.st_mode) && lseek(fd, 0, SEEK_SET) != 0)
        return eng_errf(err, errlen, ENG_EIO, "archive: %s", strerror(errno));
    int created = 0;
    int rc = open_dest(dest, &x.root, &created, err, errlen);
    if (rc) return rc;
    x.path = malloc(x.lim.max_path + 1);
    x.dirpath = malloc(x.lim.max_path + 1);
    x.buf = malloc(COPY_BUF);
    if (!x.path || !x.dirpath || !x.buf) {
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
        goto fail;
    }
    rc = read_archive(&x, fd);
fail: /* success falls through too: only undo depends on rc */
    if (x.dirfd >= 0 && x.dirfd != x.root) close(x.dirfd);
    if (rc) undo(dest, x.root, created, err, errlen);
    close(x.root);
    free(x.path);
    free(x.dirpath);
    free(x.buf);
    return rc;
}

int arc_extract_path(const char *path, const char *dest, const arc_limits *lim,
                     arc_report *rep, char *err, size_t errlen)
{
    if (rep) memset(rep, 0, sizeof *rep);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errf(err, errlen, ENG_EIO, "%s: %s", path, strerror(errno));
    int rc = arc_extract_fd(fd, dest, lim, rep, err, errlen);
    close(fd);
    return rc;
}

/* ---- arc_walk ---- */

typedef struct walk {
    arc_walk_fn fn;
    void *ud;
    char path[PATH_HARD_MAX];
    char *err;
    size_t errlen;
} walk;

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads the visible names of dfd (borrowed) into a sorted malloc'd array of malloc'd strings. */
static int list_sorted(int dfd, char ***names, size_t *count, char *err, size_t errlen)
{
    int dup_fd = dup(dfd);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    char **v = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    if (!d) {
        if (dup_fd >= 0) close(dup_fd);
        return eng_errf(err, errlen, ENG_EIO, "cannot list a directory: %s", strerror(errno));
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        if (n == cap) {
            char **nv = realloc(v, (cap = cap ? 2 * cap : 16) * sizeof *v);
            if (!nv) { rc = ENG_ENOMEM; break; }
            v = nv;
        }
        if (!(v[n] = strdup(de->d_name))) { rc = ENG_ENOMEM; break; }
        n++;
    }
    closedir(d);
    if (rc) {
        while (n) free(v[--n]);
        free(v);
        return eng_errf(err, errlen, rc, "out of memory listing a directory");
    }
    if (n) qsort(v, n, sizeof *v, cmp_names);
    *names = v;
    *count = n;
    return 0;
}

static int walk_dir(walk *w, int dfd, size_t plen, int depth);

static int walk_entry(walk *w, int dfd, const char *name, size_t plen, int depth)
{
    size_t nlen = strlen(name);
    if (plen + nlen + 2 > sizeof w->path)
        return eng_errf(w->err, w->errlen, ENG_ELIMIT, "path under walk too long");
    memcpy(w->path + plen, name, nlen + 1);
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return eng_errf(w->err, w->errlen, ENG_EIO, "%s: %s", w->path, strerror(errno));
    if (S_ISREG(st.st_mode)) return w->fn(w->path, (uint64_t)st.st_size, w->ud);
    if (!S_ISDIR(st.st_mode)) return 0;
    int cfd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (cfd < 0) return eng_errf(w->err, w->errlen, ENG_EIO, "%s: %s", w->path, strerror(errno));
    w->path[plen + nlen] = '/';
    w->path[plen + nlen + 1] = 0;
    int rc = walk_dir(w, cfd, plen + nlen + 1, depth + 1);
    close(cfd);
    return rc;
}

static int walk_dir(walk *w, int dfd, size_t plen, int depth)
{
    if (depth > TREE_MAX_DEPTH)
        return eng_errf(w->err, w->errlen, ENG_ELIMIT, "directory tree deeper than %d",
                        TREE_MAX_DEPTH);
    char **names = NULL;
    size_t n = 0;
    int rc = list_sorted(dfd, &names, &n, w->err, w->errlen);
    if (rc) return rc;
    for (size_t i = 0; i < n && !rc; i++) rc = walk_entry(w, dfd, names[i], plen, depth);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

int arc_walk(const char *dir, arc_walk_fn fn, void *ud, char *err, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return eng_errf(err, errlen, errno == ENOENT ? ENG_ENOTFOUND : ENG_EIO,
                                "%s: %s", dir, strerror(errno));
    walk *w = malloc(sizeof *w);
    if (!w) {
        close(fd);
        return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    }
    *w = (walk){.fn = fn, .ud = ud, .err = err, .errlen = errlen};
    int rc = walk_dir(w, fd, 0, 0);
    free(w);
    close(fd);
    return rc;
}

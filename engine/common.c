#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int eng_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

void *eng_alloc(size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) return NULL;
    if (posix_memalign(&p, 64, rounded ? rounded : 64) != 0) return NULL;
    return p;
}

void *eng_calloc(size_t bytes)
{
    void *p = eng_alloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void eng_free(void *p) { free(p); }

int eng_mul_size(size_t a, size_t b, size_t *out)
{
    if (a && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int eng_file_read(const char *path, size_t max_bytes, void **buf, size_t *len,
                  char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return eng_errf(err, errlen, ENG_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    char *data = NULL;
    int rc;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = eng_errf(err, errlen, ENG_EIO, "%s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        rc = eng_errf(err, errlen, ENG_ELIMIT, "%s: %lld bytes is over the limit of %zu",
                      path, (long long)st.st_size, max_bytes);
        goto fail;
    }
    size_t n = (size_t)st.st_size, got = 0;
    data = malloc(n ? n : 1);
    if (!data) { rc = eng_errf(err, errlen, ENG_ENOMEM, "%s: out of memory", path); goto fail; }
    while (got < n) {
        ssize_t r = read(fd, data + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            rc = eng_errf(err, errlen, ENG_EIO, "%s: read failed: %s", path,
                          r ? strerror(errno) : "file shrank");
            goto fail;
        }
        got += (size_t)r;
    }
    close(fd);
    *buf = data;
    *len = n;
    return 0;
fail:
    free(data);
    close(fd);
    return rc;
}

int eng_file_begin(const char *path, char *tmp, size_t tmplen, char *err, size_t errlen)
{
    if ((size_t)snprintf(tmp, tmplen, "%s.tmp.%ld", path, (long)getpid()) >= tmplen)
        return eng_errf(err, errlen, ENG_EINVAL, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return eng_errf(err, errlen, eng_errno_code(errno), "%s: %s", tmp, strerror(errno));
    return fd;
}

static int sync_parent_dir(const char *path)
{
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    close(dfd);
    return rc;
}

int eng_file_commit(int fd, const char *tmp, const char *path, char *err, size_t errlen)
{
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return eng_errf(err, errlen, eng_errno_code(e), "%s: fsync: %s", tmp, strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return eng_errf(err, errlen, eng_errno_code(e), "%s: %s", path, strerror(e));
    }
    sync_parent_dir(path);
    return 0;
}

int eng_file_write_atomic(const char *path, const void *buf, size_t len,
                          char *err, size_t errlen)
{
    char tmp[4200];
    int fd = eng_file_begin(path, tmp, sizeof tmp, err, errlen);
    if (fd < 0) return fd;
    const char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return eng_errf(err, errlen, eng_errno_code(e), "%s: write: %s", tmp, strerror(e));
        }
        p += w;
        len -= (size_t)w;
    }
    return eng_file_commit(fd, tmp, path, err, errlen);
}

int eng_path_join(char *buf, size_t len, const char *dir, const char *name)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len) {
        if (len) buf[0] = 0;
        return ENG_EINVAL;
    }
    return 0;
}

double eng_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int eng_errno_code(int e) { return e == ENOSPC || e == EDQUOT ? ENG_ENOSPC : ENG_EIO; }

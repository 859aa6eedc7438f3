/* Shared basics of every module: error codes, the error-message convention, aligned memory.
 * Functions return 0 or a negative ENG_E* code and, on error, write a sentence into the
 * caller's buffer (err, errlen); nothing here owns memory it does not return. */
#ifndef BIT_COMMON_H
#define BIT_COMMON_H

#include <stddef.h>
#include <stdint.h>

enum {
    ENG_OK = 0,
    ENG_EIO = -1,          /* a file could not be read or written */
    ENG_EFORMAT = -2,      /* the bytes are not what they claim to be */
    ENG_ENOMEM = -3,
    ENG_EINVAL = -4,       /* a caller's argument is out of range */
    ENG_EDNNL = -5,        /* oneDNN refused or failed */
    ENG_ELIMIT = -6,       /* over a configured size, count or pixel limit */
    ENG_EUNSUPPORTED = -7, /* valid, but not something bitd handles */
    ENG_ENOTFOUND = -8,
    ENG_ENOSPC = -9,       /* the disk (or quota) is full: the same request may work later */
};

/* ENG_ENOSPC for a full disk or quota (ENOSPC, EDQUOT), else ENG_EIO: for failed writes. */
int eng_errno_code(int e);

/* Formats the message into err (if non-NULL) and returns code, so that error paths read
 * `return eng_errf(err, errlen, ENG_EFORMAT, "...", ...)`. */
int eng_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* 64-byte aligned allocation (cache line, AVX-512 vector); release with eng_free. */
void *eng_alloc(size_t bytes);
void *eng_calloc(size_t bytes);
void eng_free(void *p);

/* The one monotonic clock (milliseconds since an arbitrary start): durations, deadlines,
 * throughput. Wall-clock times for people come from store_now_ms. */
double eng_now_ms(void);

/* Checked size arithmetic: returns 0 and sets *out, or -1 on overflow. */
int eng_mul_size(size_t a, size_t b, size_t *out);



/* Reads a whole file (at most max_bytes) into a malloc'd buffer the caller frees. */
int eng_file_read(const char *path, size_t max_bytes, void **buf, size_t *len,
                  char *err, size_t errlen);
/* Writes path atomically: a temporary file beside it, fsync, rename, fsync of the directory,
 * so a crash leaves either the old file or the new one, never a torn one. */
int eng_file_write_atomic(const char *path, const void *buf, size_t len,
                          char *err, size_t errlen);
/* Opens "path.tmp.PID" for writing and returns its fd; finish with eng_file_commit. */
int eng_file_begin(const char *path, char *tmp, size_t tmplen, char *err, size_t errlen);
int eng_file_commit(int fd, const char *tmp, const char *path, char *err, size_t errlen);
/* Joins dir and name with '/' into buf; ENG_EINVAL (buf empty) when it does not fit. */
int eng_path_join(char *buf, size_t len, const char *dir, const char *name);

#endif

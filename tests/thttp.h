/* A tiny blocking HTTP/1.1 client for the integration tests: one request per connection
 * (Connection: close), body from memory, response status and body into memory. */
#ifndef BIT_THTTP_H
#define BIT_THTTP_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

typedef struct th_resp {
    int status;
    char *headers, *body; /* NUL-terminated; free with th_free */
    size_t body_len;
} th_resp;

static inline void th_free(th_resp *r)
{
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static inline int th_send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        c += w, n -= (size_t)w;
    }
    return 0;
}

/* Sends METHOD PATH with optional extra header lines ("K: V\r\n...") and body; returns 0 and
 * fills r, or -1 when the connection failed. Reads until the server closes. */
static inline int th_request(int port, const char *method, const char *path, const char *headers,
                      const void *body, size_t len, th_resp *r)
{
    memset(r, 0, sizeof *r);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {120, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char head[8192];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                     "Content-Length: %zu\r\n\r\n",
                     method, path, headers ? headers : "", len);
    /* the server may answer (413) before reading the whole body: ignore send errors then */
    if (th_send_all(fd, head, (size_t)n) == 0 && len) th_send_all(fd, body, len);
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (got == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t k = recv(fd, buf + got, cap - got, 0);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    buf[got] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &r->status) != 1) {
        free(buf);
        return -1;
    }
    *sep = 0;
    r->headers = strdup(buf);
    r->body_len = got - (size_t)(sep + 4 - buf);
    r->body = malloc(r->body_len + 1);
    memcpy(r->body, sep + 4, r->body_len);
    r->body[r->body_len] = 0;
    free(buf);
    return 0;
}

/* A multipart/form-data body of (name, filename or NULL, data, len) parts; *ctype gets the
 * header line to send. */
typedef struct th_part {
    const char *name, *filename;
    const void *data;
    size_t len;
} th_part;

static inline char *th_multipart(const th_part *parts, int n, size_t *len, char *ctype, size_t clen)
{
    const char *b = "----bitdtestboundary7MA4YWxkTrZu0gW";
    size_t cap = 1024;
    for (int i = 0; i < n; i++) cap += parts[i].len + 512;
    char *out = malloc(cap);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        o += (size_t)sprintf(out + o, "--%s\r\nContent-Disposition: form-data; name=\"%s\"", b, parts[i].name);
        if (parts[i].filename)
            o += (size_t)sprintf(out + o, "; filename=\"%s\"\r\nContent-Type: application/octet-stream",
                                 parts[i].filename);
        o += (size_t)sprintf(out + o, "\r\n\r\n");
        memcpy(out + o, parts[i].data, parts[i].len);
        o += parts[i].len;
        o += (size_t)sprintf(out + o, "\r\n");
    }
    o += (size_t)sprintf(out + o, "--%s--\r\n", b);
    snprintf(ctype, clen, "Content-Type: multipart/form-data; boundary=%s\r\n", b);
    *len = o;
    return out;
}

#endif

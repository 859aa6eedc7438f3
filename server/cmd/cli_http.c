#include "server/cmd/cli_http.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli.h"

#define MAX_ANSWER (64u << 20)

int cli_server_init(cli_server *s, const char *sub, const char *url)
{
    memset(s, 0, sizeof *s);
    if (!url || !*url) url = getenv("BIT_URL");
    if (!url || !*url) url = "http://127.0.0.1:8080";
    const char *tok = getenv("BIT_API_TOKEN");
    s->token = tok && *tok ? tok : NULL;
    snprintf(s->url, sizeof s->url, "%s", url);
    size_t n = strlen(s->url);
    while (n && s->url[n - 1] == '/') s->url[--n] = 0;
    if (strncmp(url, "http://", 7))
        return cli_fail(sub, "--url must start with http:// (not '%s')", url), -1;
    const char *h = url + 7, *end = h + strcspn(h, "/"), *colon;
    if (*h == '[') { /* [::1]:8080 */
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb) return cli_fail(sub, "bad IPv6 address in '%s'", url), -1;
        snprintf(s->host, sizeof s->host, "%.*s", (int)(rb - h - 1), h + 1);
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        snprintf(s->host, sizeof s->host, "%.*s", (int)((colon ? colon : end) - h), h);
    }
    snprintf(s->port, sizeof s->port, "%.*s", colon ? (int)(end - colon - 1) : 2, colon ? colon + 1 : "80");
    if (!s->host[0] || !s->port[0] || (*end && strcmp(end, "/")))
        return cli_fail(sub, "--url is http://HOST[:PORT], not '%s'", url), -1;
    return 0;
}

static int connect_to(const cli_server *s, const char *sub)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(s->host, s->port, &hints, &res), fd = -1, why = 0;
    if (rc) return cli_fail(sub, "cannot resolve %s: %s", s->host, gai_strerror(rc)), -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        struct timeval tv = {60, 0};
        if (fd >= 0 && (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) ||
                        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) ||
                        connect(fd, a->ai_addr, a->ai_addrlen)))
            why = errno, close(fd), fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        cli_fail(sub, "cannot connect to %s: %s (is `bit serve` running there? --url or BIT_URL "
                 "names another server)", s->url, strerror(why));
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* The whole answer, until the server closes (Connection: close). */
static char *receive(int fd, size_t *len)
{
    size_t cap = 65536, got = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (got == cap) {
            char *b = cap < MAX_ANSWER ? realloc(buf, (cap *= 2) + 1) : NULL;
            if (!b) { free(buf); return NULL; }
            buf = b;
        }
        ssize_t k = recv(fd, buf + got, cap - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { free(buf); return NULL; }
        if (k == 0) break;
        got += (size_t)k;
    }
    if (buf) buf[got] = 0, *len = got;
    return buf;
}

/* Undoes Transfer-Encoding: chunked in place; the body's new length. */
static size_t dechunk(char *b, size_t n)
{
    size_t in = 0, out = 0;
    while (in < n) {
        char *end;
        unsigned long k = strtoul(b + in, &end, 16);
        char *nl = strstr(end, "\r\n");
        if (!nl || k > n) break;
        in = (size_t)(nl + 2 - b);
        if (!k || in + k > n) break;
        memmove(b + out, b + in, k);
        out += k, in += k + 2;
    }
    b[out] = 0;
    return out;
}

int cli_http(const cli_server *s, const char *sub, const char *method, const char *path,
             int *status, json_t **out)
{
    char head[2048], auth[600] = "";
    *out = NULL;
    if (s->token) snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", s->token);
    int n = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
                     "Accept: application/json\r\n%sContent-Length: 0\r\n\r\n", method, path, s->host,
                     s->port, auth);
    int fd = connect_to(s, sub);
    if (fd < 0) return -1;
    size_t len = 0;
    char *buf = n < (int)sizeof head && !send_all(fd, head, (size_t)n) ? receive(fd, &len) : NULL;
    close(fd);
    char *sep = buf ? strstr(buf, "\r\n\r\n") : NULL;
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", status) != 1) {
        free(buf);
        return cli_fail(sub, "%s gave no HTTP answer to %s %s", s->url, method, path), -1;
    }
    *sep = 0;
    char *body = sep + 4;
    size_t blen = len - (size_t)(body - buf);
    for (char *h = strstr(buf, "\r\n"); h; h = strstr(h + 2, "\r\n"))
        if (!strncasecmp(h + 2, "Transfer-Encoding:", 18) && strstr(h + 2, "chunked")) blen = dechunk(body, blen);
    *out = json_loadb(body, blen, 0, NULL);
    free(buf);
    return 0;
}

void cli_http_fail(const char *sub, int status, const json_t *body)
{
    const char *msg = json_string_value(json_object_get(json_object_get(body, "error"), "message"));
    if (status == 401 && !getenv("BIT_API_TOKEN"))
        cli_fail(sub, "%s (set BIT_API_TOKEN to the server's token)", msg ? msg : "unauthorized");
    else
        cli_fail(sub, "%s (HTTP %d)", msg ? msg : "the server answered an error", status);
}

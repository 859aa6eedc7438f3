/* The request head checker of the front door (srv_door.c): a strict reading of RFC 9112's
 * request line and header fields over the bytes received so far, so that every malformed or
 * oversized head gets the documented JSON error from us rather than libmicrohttpd's HTML. */
#include "server/http/srv_int.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* tchar (RFC 9110 5.6.2): the bytes of methods and field names. */
static int tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Field values: HTAB, SP, VCHAR, obs-text. NUL, DEL and the other controls are refused. */
static int vbyte(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

static int fail(srv_head *h, int status, const char *code, const char *msg)
{
    h->status = status;
    h->code = code;
    snprintf(h->msg, sizeof h->msg, "%s", msg);
    return status;
}

/* The next line in [p, end): its length without the line end, or -1 when incomplete. A CR is
 * allowed only right before the LF; a bare LF ends a line too (as RFC 9112 2.2 permits). */
static long line_len(const char *p, const char *end, int *bare_cr)
{
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (!lf) return -1;
    long n = lf - p;
    if (n && p[n - 1] == '\r') n--;
    *bare_cr = memchr(p, '\r', (size_t)n) != NULL;
    return n;
}

static int request_line(srv_head *h, const char *p, long n, const srv_config *c)
{
    const char *sp1 = memchr(p, ' ', (size_t)n);
    if (!sp1 || sp1 == p || sp1 - p > 32)
        return fail(h, 400, "bad_request", "malformed request line");
    for (const char *m = p; m < sp1; m++)
        if (!tchar((unsigned char)*m)) return fail(h, 400, "bad_request", "malformed method");
    const char *t = sp1 + 1, *sp2 = memchr(t, ' ', (size_t)(p + n - t));
    if (!sp2 || sp2 == t) return fail(h, 400, "bad_request", "malformed request line");
    for (const char *q = t; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f)
            return fail(h, 400, "bad_request", "a control byte in the request target");
    if ((size_t)(sp2 - t) > c->max_url) return fail(h, 414, "uri_too_long", "the URL is too long");
    const char *v = sp2 + 1;
    long vn = p + n - v;
    if (vn == 8 && (!memcmp(v, "HTTP/1.1", 8) || !memcmp(v, "HTTP/1.0", 8))) {
        h->http11 = v[7] == '1';
    } else if (vn == 8 && !memcmp(v, "HTTP/", 5) && v[6] == '.') {
        return fail(h, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    } else {
        return fail(h, 400, "bad_request", "malformed HTTP version");
    }
    h->method = p, h->method_len = (size_t)(sp1 - p);
    h->target = t, h->target_len = (size_t)(sp2 - t);
    return 0;
}

/* Content-Length: digits only, every copy equal (RFC 9110 8.6: a list or a conflict is an
 * error, as is a value that does not fit). */
static int content_length(srv_head *h, const char *v, long n)
{
    uint64_t x = 0;
    if (n == 0 || n > 19) return fail(h, 400, "bad_content_length", "invalid Content-Length");
    for (long i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return fail(h, 400, "bad_content_length", "invalid Content-Length");
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (h->has_length && h->length != x)
        return fail(h, 400, "bad_content_length", "conflicting Content-Length headers");
    h->has_length = 1;
    h->length = x;
    return 0;
}

static int field(srv_head *h, const char *p, long n)
{
    if (*p == ' ' || *p == '\t')
        return fail(h, 400, "bad_header", "folded header lines are not accepted");
    const char *colon = memchr(p, ':', (size_t)n);
    if (!colon || colon == p) return fail(h, 400, "bad_header", "a header line without a name");
    for (const char *q = p; q < colon; q++)
        if (!tchar((unsigned char)*q))
            return fail(h, 400, "bad_header", "a bad byte in a header name");
    const char *v = colon + 1, *e = p + n;
    for (const char *q = v; q < e; q++)
        if (!vbyte((unsigned char)*q))
            return fail(h, 400, "bad_header", "a control byte (such as NUL) in a header value");
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) e--;
    size_t kn = (size_t)(colon - p);
    if (kn == 14 && !strncasecmp(p, "Content-Length", kn)) return content_length(h, v, e - v);
    if (kn == 17 && !strncasecmp(p, "Transfer-Encoding", kn)) {
        if (h->chunked || e - v != 7 || strncasecmp(v, "chunked", 7))
            return fail(h, 501, "unsupported_transfer_encoding",
                        "only one Transfer-Encoding, chunked, is supported");
        h->chunked = 1;
    }
    if (kn == 4 && !strncasecmp(p, "Host", 4)) h->hosts++;
    return 0;
}

/* Checks the complete lines of buf and says whether the head is complete (status 0), still
 * incomplete (-1) or refused (an HTTP status with code and msg). A refusal is given as soon as
 * a complete line shows it, and an incomplete head is refused once it outgrows the limits. */
int srv__head_check(const char *buf, size_t n, const srv_config *c, srv_head *h)
{
    memset(h, 0, sizeof *h);
    const char *p = buf, *end = buf + (n < c->max_head ? n : c->max_head);
    int bare_cr, first = 1;
    for (int i = 0; i < 4; i++) { /* a few empty lines may precede the request (RFC 9112 2.2) */
        if (p < end && *p == '\n') p++;
        else if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') p += 2;
        else break;
    }
    for (long len; (len = line_len(p, end, &bare_cr)) >= 0; p += len + 1 + (p[len] == '\r')) {
        if (bare_cr) return fail(h, 400, "bad_request", "a bare CR in the request head");
        if (first) {
            if (request_line(h, p, len, c)) return h->status;
            first = 0;
            continue;
        }
        if (len == 0) {
            h->head_len = (size_t)(p + 1 + (p[0] == '\r') - buf);
            if (h->chunked && h->has_length)
                return fail(h, 400, "bad_content_length",
                            "both Content-Length and Transfer-Encoding");
            if (h->http11 ? h->hosts != 1 : h->hosts > 1)
                return fail(h, 400, "bad_host", "HTTP/1.1 needs exactly one Host header");
            return h->status = 0;
        }
        if (field(h, p, len)) return h->status;
    }
    if (first && (size_t)(end - p) > c->max_url + 64)
        return fail(h, 414, "uri_too_long", "the URL is too long");
    if (n >= c->max_head) return fail(h, 431, "headers_too_large", "the request head is too large");
    return h->status = -1;
}

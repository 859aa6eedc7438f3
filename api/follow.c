/* GET /v1/jobs/{id}/events?follow=true (or Accept: text/event-stream): the job's events as
 * Server-Sent Events, live. The HTTP core's stream holds the connection without a pool thread
 * and the service's follower thread feeds every stream, so a listener costs neither. Each
 * event is "id: <seq>", "event: <type>", "data: <the JobEvent JSON, one line>" and a blank
 * line; a ": ping" comment keeps idle streams alive; after the job's terminal status event
 * comes "event: end" with data {"status": "..."} and the stream closes. Last-Event-ID (what
 * an EventSource sends when it reconnects) resumes like `after`. */
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"

#define HEARTBEAT_MS 15000
#define BEAT ": ping\n\n"
/* Room a write leaves for a heartbeat: the core cuts a stream whose buffer would overflow,
 * so events wait (the follower offers them again) rather than fill it. */
#define SPARE 256

typedef struct listener {
    srv_stream *st;
    svc_follow *f;
} listener;

static void event_type(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (; *in && o + 1 < len; in++) /* one SSE field: no line breaks, nothing odd */
        if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.", *in))
            out[o++] = *in;
    out[o] = 0;
    if (!o) snprintf(out, len, "message");
}

/* Follower thread: one event onto the stream, or SVC_FOLLOW_LATER while the reader is behind. */
static int on_event(void *ud, const store_event *ev)
{
    listener *l = ud;
    char type[40];
    if (srv_stream_write(l->st, "", 0)) return -1; /* ended: the follow goes too */
    json_t *j = api_event_json(ev);
    char *data = j ? json_dumps(j, JSON_COMPACT) : NULL; /* JSON text: no raw line breaks */
    json_decref(j);
    if (!data) return -1;
    event_type(ev->type, type, sizeof type);
    size_t cap = strlen(data) + sizeof type + 64;
    char *msg = malloc(cap);
    int rc = -1;
    if (msg) {
        int n = snprintf(msg, cap, "id: %lld\nevent: %s\ndata: %s\n\n", (long long)ev->seq, type, data);
        rc = srv_stream_room(l->st) < (size_t)n + SPARE ? SVC_FOLLOW_LATER
             : srv_stream_write(l->st, msg, (size_t)n) ? -1 : 0;
    }
    free(msg);
    free(data);
    return rc;
}

static void on_end(void *ud, const char *status)
{
    listener *l = ud;
    char msg[96];
    if (status) {
        int n = snprintf(msg, sizeof msg, "event: end\ndata: {\"status\":\"%s\"}\n\n", status);
        srv_stream_write(l->st, msg, (size_t)n);
    }
    srv_stream_close(l->st);
    free(l);
}

/* Server thread, when the client went away: must not block; the follower ends the follow. */
static void on_gone(void *ud)
{
    listener *l = ud;
    svc_follow_cancel(l->f);
}

/* Where to start: Last-Event-ID when the client sends one (a reconnecting EventSource keeps
 * its first URL), else `after`. -1 after answering 400. */
static int start_after(srv_req *req, long *after)
{
    const char *id = srv_header(req, "Last-Event-ID");
    char *end;
    if (srv_query(req, "limit"))
        return srv_error(req, 400, "invalid_parameter", "limit: not with follow=true (a stream has no pages)"), -1;
    if (!id || !*id) return api_query_int(req, "after", 0, INT64_MAX / 2, 0, after);
    *after = strtol(id, &end, 10);
    if (*end || *after < 0 || *after > INT64_MAX / 2)
        return srv_error(req, 400, "invalid_parameter", "Last-Event-ID must be an event seq"), -1;
    return 0;
}

int api_follow_events(api *a, srv_req *req)
{
    static const svc_follow_ops ops = {on_event, on_end};
    long after;
    svc_err e;
    if (start_after(req, &after)) return 0;
    listener *l = calloc(1, sizeof *l);
    if (!l) return srv_error(req, 500, "internal", "out of memory");
    if (svc_job_follow(a->svc, srv_param(req, "id"), after, &ops, l, &l->f, &e)) {
        free(l);
        return api_fail(req, &e);
    }
    srv_set_header(req, "Cache-Control", "no-cache");
    srv_set_header(req, "X-Accel-Buffering", "no"); /* a proxy in front must not hold events */
    l->st = srv_stream_open(req, 200, "text/event-stream; charset=utf-8", on_gone, l);
    if (!l->st) { /* answered already: 503 past --max-streams, or the headers of a HEAD */
        svc_follow_drop(l->f);
        free(l);
        return 0;
    }
    srv_stream_heartbeat(l->st, HEARTBEAT_MS, BEAT);
    svc_follow_start(l->f);
    return 0;
}

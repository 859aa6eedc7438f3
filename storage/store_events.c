/* Job events: an append-only log per job, numbered 1, 2, 3... for "after seq" paging. */
#include "storage/store_int.h"

#include <stdlib.h>
#include <string.h>

int st_event_insert(store *s, const char *job_id, const char *type, int64_t step,
                    const char *data_json, int64_t now, int64_t *seq, char *err, size_t errlen)
{
    /* The caller's IMMEDIATE transaction holds the write lock from here to the insert, so no
     * other writer can take the same number. */
    int64_t next = 0;
    int rc = st_int(s, &next, err, errlen,
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM job_events WHERE job_id = ?", "s",
                    job_id);
    if (rc == 0)
        rc = st_run(s, err, errlen,
                    "INSERT INTO job_events (job_id, seq, time, type, step, data_json)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    "sIIsNs", job_id, next, now, type, step, data_json);
    if (rc == ENG_ENOTFOUND) return eng_errf(err, errlen, rc, "job %s not found", job_id);
    if (rc < 0) return rc;
    s->events_added++; /* a rolled-back one only costs a follower one query */
    if (seq) *seq = next;
    return 0;
}

int store_event_add(store *s, const char *job_id, const char *type, int64_t step,
                    const char *data_json, int64_t *seq, char *err, size_t errlen)
{
    int rc = st_text_ok(job_id, 64, "job id", err, errlen);
    if (rc == 0) rc = st_text_ok(type, 32, "event type", err, errlen);
    if (rc == 0) rc = st_json_ok(data_json, 1, "event data", err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    rc = st_begin(s, err, errlen);
    if (rc == 0)
        rc = st_end(s, st_event_insert(s, job_id, type, step, data_json, store_now_ms(), seq,
                                       err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

uint64_t store_event_stamp(store *s)
{
    int64_t other = 0;
    pthread_mutex_lock(&s->mu);
    st_int(s, &other, NULL, 0, "PRAGMA data_version", "");
    uint64_t v = s->events_added + (uint64_t)other;
    pthread_mutex_unlock(&s->mu);
    return v;
}

static int event_read(sqlite3_stmt *st, store_event *e)
{
    e->seq = sqlite3_column_int64(st, 0);
    e->time = sqlite3_column_int64(st, 1);
    e->step = sqlite3_column_type(st, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 2);
    if (st_col_str(st, 3, &e->type) || st_col_str(st, 4, &e->data_json)) return ENG_ENOMEM;
    return 0;
}

static int event_list_locked(store *s, const char *job_id, int64_t after_seq, int limit,
                             store_events *out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = st_query(s, &st, err, errlen,
                      "SELECT seq, time, step, type, data_json FROM job_events"
                      " WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                      "sIi", job_id, after_seq, limit + 1);
    if (rc == 0 && !(out->v = calloc((size_t)limit, sizeof *out->v)))
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    while (rc == 0 && (rc = st_step(s, st, err, errlen)) == 1) {
        if (out->n == (size_t)limit) { out->more = 1; rc = 0; break; }
        rc = event_read(st, &out->v[out->n++]);
        if (rc) eng_errf(err, errlen, rc, "out of memory listing events");
    }
    sqlite3_finalize(st);
    int64_t one;
    /* An empty page is normal for a live job, but a missing job must say so. */
    if (rc == 0 && out->n == 0) {
        rc = st_int(s, &one, err, errlen, "SELECT 1 FROM jobs WHERE id = ?", "s", job_id);
        if (rc == ENG_ENOTFOUND) eng_errf(err, errlen, rc, "job %s not found", job_id);
    }
    return rc;
}

int store_event_list(store *s, const char *job_id, int64_t after_seq, int limit,
                     store_events *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!job_id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    if (limit < 1 || limit > STORE_LIST_MAX)
        return eng_errf(err, errlen, ENG_EINVAL, "limit must be 1..%d", STORE_LIST_MAX);
    pthread_mutex_lock(&s->mu);
    int rc = event_list_locked(s, job_id, after_seq, limit, out, err, errlen);
    pthread_mutex_unlock(&s->mu);
    if (rc) store_events_free(out);
    return rc;
}

void store_events_free(store_events *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].type);
        free(l->v[i].data_json);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

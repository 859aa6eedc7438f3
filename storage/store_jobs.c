/* Jobs: creation, the state machine (one transition function), the queue, progress. */
#include "storage/store_int.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[STORE_NSTATUS] = {
    "validating", "queued", "running", "succeeded", "failed", "cancelled",
};

/* Every legal move, and the only place they are listed. */
static const unsigned char legal[STORE_NSTATUS][STORE_NSTATUS] = {
    [STORE_VALIDATING] = {[STORE_QUEUED] = 1, [STORE_FAILED] = 1, [STORE_CANCELLED] = 1},
    [STORE_QUEUED] = {[STORE_RUNNING] = 1, [STORE_CANCELLED] = 1, [STORE_FAILED] = 1},
    [STORE_RUNNING] = {[STORE_SUCCEEDED] = 1, [STORE_FAILED] = 1, [STORE_CANCELLED] = 1,
                       [STORE_QUEUED] = 1},
};

const char *store_status_name(store_status st)
{
    return st >= 0 && st < STORE_NSTATUS ? status_names[st] : "?";
}

int store_status_parse(const char *name)
{
    for (int i = 0; name && i < STORE_NSTATUS; i++)
        if (!strcmp(name, status_names[i])) return i;
    return -1;
}

int store_status_terminal(store_status st)
{
    return st == STORE_SUCCEEDED || st == STORE_FAILED || st == STORE_CANCELLED;
}

int store_transition_legal(store_status from, store_status to)
{
    return from >= 0 && from < STORE_NSTATUS && to >= 0 && to < STORE_NSTATUS && legal[from][to];
}

store_progress store_progress_none(void)
{
    return (store_progress){-1, -1, NAN, NAN, NAN, NAN, NAN};
}

/* ---- reading rows ---- */

#define JOB_COLS                                                                        \
    "seq, id, name, dataset_id, base_model, params_json, resolved_json, model_id,"      \
    " error_code, error_message, status, step, total_steps, images_per_sec, train_loss," \
    " val_top1, val_top5, val_loss, created_at, started_at, finished_at, updated_at,"   \
    " cancel_requested"

static void job_clear(store_job *j)
{
    free(j->id); free(j->name); free(j->dataset_id); free(j->base_model);
    free(j->params_json); free(j->resolved_json); free(j->model_id);
    free(j->error_code); free(j->error_message);
    memset(j, 0, sizeof *j);
}

static int job_read(sqlite3_stmt *st, store_job *j)
{
    char **strs[] = {&j->id, &j->name, &j->dataset_id, &j->base_model, &j->params_json,
                     &j->resolved_json, &j->model_id, &j->error_code, &j->error_message};
    j->seq = sqlite3_column_int64(st, 0);
    for (int i = 0; i < 9; i++)
        if (st_col_str(st, 1 + i, strs[i])) return ENG_ENOMEM;
    j->status = store_status_parse((const char *)sqlite3_column_text(st, 10));
    j->step = sqlite3_column_int64(st, 11);
    j->total_steps = sqlite3_column_int64(st, 12);
    double *reals[] = {&j->images_per_sec, &j->train_loss, &j->val_top1, &j->val_top5,
                       &j->val_loss};
    for (int i = 0; i < 5; i++) *reals[i] = st_col_real(st, 13 + i);
    int64_t *times[] = {&j->created_at, &j->started_at, &j->finished_at, &j->updated_at};
    for (int i = 0; i < 4; i++) *times[i] = sqlite3_column_int64(st, 18 + i); /* NULL -> 0 */
    j->cancel_requested = sqlite3_column_int(st, 22) != 0;
    return 0;
}

static int job_get_locked(store *s, const char *id, store_job **out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    store_job *j = calloc(1, sizeof *j);
    int rc = j ? st_query(s, &st, err, errlen, "SELECT " JOB_COLS " FROM jobs WHERE id = ?", "s", id)
               : ENG_ENOMEM;
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 0) rc = eng_errf(err, errlen, ENG_ENOTFOUND, "job %s not found", id);
    if (rc == 1) rc = job_read(st, j);
    if (rc == ENG_ENOMEM) eng_errf(err, errlen, rc, "out of memory reading job %s", id);
    sqlite3_finalize(st);
    if (rc) goto fail;
    *out = j;
    return 0;
fail:
    store_job_free(j);
    return rc;
}

/* The job's status, or ENG_ENOTFOUND. */
static int job_status(store *s, const char *id, store_status *cur, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = st_query(s, &st, err, errlen, "SELECT status FROM jobs WHERE id = ?", "s", id);
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 0) rc = eng_errf(err, errlen, ENG_ENOTFOUND, "job %s not found", id);
    if (rc == 1) {
        *cur = store_status_parse((const char *)sqlite3_column_text(st, 0));
        rc = *cur < 0 ? eng_errf(err, errlen, ENG_EFORMAT, "job %s has an unknown status", id) : 0;
    }
    sqlite3_finalize(st);
    return rc;
}

/* After an UPDATE ... WHERE status = want touched nothing: say why. */
static int not_in_state(store *s, const char *id, store_status want, char *err, size_t errlen)
{
    store_status cur;
    int rc = job_status(s, id, &cur, err, errlen);
    if (rc) return rc;
    return eng_errf(err, errlen, STORE_ECONFLICT, "job %s is %s, not %s", id,
                    store_status_name(cur), store_status_name(want));
}

void store_job_free(store_job *j)
{
    if (!j) return;
    job_clear(j);
    free(j);
}

void store_jobs_free(store_jobs *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) job_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

int store_job_get(store *s, const char *id, store_job **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    pthread_mutex_lock(&s->mu);
    int rc = job_get_locked(s, id, out, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- the state machine ---- */

/* The "status" event's data: {"from", "to"} and whichever extras were given. */
static char *status_event_json(store_status from, store_status to, const st_extra *x)
{
    json_t *o = json_object();
    if (from >= 0) json_object_set_new(o, "from", json_string(store_status_name(from)));
    json_object_set_new(o, "to", json_string(store_status_name(to)));
    if (x && x->error_code) json_object_set_new(o, "error_code", json_string(x->error_code));
    if (x && x->error_message)
        json_object_set_new(o, "error_message", json_string(x->error_message));
    if (x && x->note) json_object_set_new(o, "note", json_string(x->note));
    char *txt = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return txt;
}

static int record_status(store *s, const char *id, store_status from, store_status to,
                         const st_extra *x, int64_t now, char *err, size_t errlen)
{
    int64_t step = 0;
    int rc = st_int(s, &step, err, errlen, "SELECT step FROM jobs WHERE id = ?", "s", id);
    if (rc) return rc == ENG_ENOTFOUND ? eng_errf(err, errlen, rc, "job %s not found", id) : rc;
    char *data = status_event_json(from, to, x);
    if (!data) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    rc = st_event_insert(s, id, "status", step, data, now, NULL, err, errlen);
    free(data);
    return rc;
}

int st_transition(store *s, const char *id, store_status from, store_status to,
                  const st_extra *x, char *err, size_t errlen)
{
    static const st_extra none;
    if (!x) x = &none;
    if (to < 0 || to >= STORE_NSTATUS || from < STORE_ANY || from >= STORE_NSTATUS)
        return eng_errf(err, errlen, ENG_EINVAL, "no such job status");
    if (to == STORE_FAILED && (!x->error_code || !*x->error_code))
        return eng_errf(err, errlen, ENG_EINVAL, "a failed job needs an error code");
    store_status cur;
    int rc = job_status(s, id, &cur, err, errlen);
    if (rc) return rc;
    if (from != STORE_ANY && cur != from)
        return eng_errf(err, errlen, STORE_ECONFLICT, "job %s is %s, not %s", id,
                        store_status_name(cur), store_status_name(from));
    if (!legal[cur][to])
        return eng_errf(err, errlen, STORE_ECONFLICT, "job %s cannot go from %s to %s", id,
                        store_status_name(cur), store_status_name(to));
    int64_t now = store_now_ms();
    /* The WHERE on the current status makes the update conditional even without the
     * surrounding transaction. Leaving `running` for `queued` clears the cancel flag. */
    rc = st_run(s, err, errlen,
                "UPDATE jobs SET status = ?1, updated_at = ?2,"
                " started_at = CASE WHEN ?1 = 'running' THEN COALESCE(started_at, ?2)"
                "  ELSE started_at END,"
                " finished_at = CASE WHEN ?3 THEN ?2 ELSE finished_at END,"
                " error_code = COALESCE(?4, error_code),"
                " error_message = COALESCE(?5, error_message),"
                " model_id = COALESCE(?6, model_id),"
                " cancel_requested = CASE WHEN ?1 = 'queued' THEN 0 ELSE cancel_requested END"
                " WHERE id = ?7 AND status = ?8",
                "sIisssss", store_status_name(to), now, store_status_terminal(to),
                x->error_code, x->error_message, x->model_id, id, store_status_name(cur));
    if (rc == 0) rc = not_in_state(s, id, cur, err, errlen);
    if (rc < 0) return rc;
    return record_status(s, id, cur, to, x, now, err, errlen);
}

int store_job_transition(store *s, const char *id, store_status from, store_status to,
                         const char *error_code, const char *error_message,
                         char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    st_extra x = {.error_code = error_code, .error_message = error_message};
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, st_transition(s, id, from, to, &x, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- creating and listing ---- */

/* STORE_EEXISTS when name belongs to a model or to another unfinished job. */
static int name_free(store *s, const char *name, char *err, size_t errlen)
{
    int64_t one;
    int rc = st_int(s, &one, err, errlen, "SELECT 1 FROM models WHERE name = ?1 UNION ALL"
                    " SELECT 1 FROM jobs WHERE name = ?1 AND status IN " ST_LIVE_SQL, "s", name);
    if (rc == 0) return eng_errf(err, errlen, STORE_EEXISTS, "the name '%s' is taken by a model "
                                 "or an unfinished job", name);
    return rc == ENG_ENOTFOUND ? 0 : rc;
}

int store_name_free(store *s, const char *name, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    int rc = name_free(s, name, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int job_insert(store *s, const store_job_new *j, const char *id, char *err,
                      size_t errlen)
{
    int64_t now = store_now_ms(), one;
    store_status first = j->resolved_json ? STORE_QUEUED : STORE_VALIDATING;
    int rc = st_int(s, &one, err, errlen, "SELECT 1 FROM datasets WHERE id = ?", "s",
                    j->dataset_id);
    if (rc == ENG_ENOTFOUND) rc = eng_errf(err, errlen, rc, "dataset %s not found", j->dataset_id);
    if (rc == 0) rc = name_free(s, j->name, err, errlen);
    if (rc == 0)
        rc = st_run(s, err, errlen,
                    "INSERT INTO jobs (id, name, dataset_id, base_model, params_json,"
                    " resolved_json, total_steps, status, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    "ssssssIsII", id, j->name, j->dataset_id, j->base_model, j->params_json,
                    j->resolved_json, j->resolved_json ? j->total_steps : 0,
                    store_status_name(first), now, now);
    if (rc < 0) return rc;
    st_hook(s, "job_create: row inserted");
    return record_status(s, id, STORE_ANY, first, NULL, now, err, errlen);
}

int store_job_create(store *s, const store_job_new *j, char id[STORE_ID_MAX],
                     char *err, size_t errlen)
{
    if (!j) return eng_errf(err, errlen, ENG_EINVAL, "no job");
    int rc = st_text_ok(j->name, 256, "job name", err, errlen);
    if (rc == 0) rc = st_text_ok(j->dataset_id, 64, "dataset id", err, errlen);
    if (rc == 0) rc = st_text_ok(j->base_model, 256, "base model", err, errlen);
    if (rc == 0) rc = st_json_ok(j->params_json, 0, "params_json", err, errlen);
    if (rc == 0) rc = st_json_ok(j->resolved_json, 1, "resolved_json", err, errlen);
    if (rc == 0) rc = st_id_take(j->id, "job", id, err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, job_insert(s, j, id, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_EEXISTS && !strstr(err, "name")) eng_errf(err, errlen, rc, "job %s already exists", id);
    return rc;
}

static int job_list_locked(store *s, store_status status, int64_t after_seq, int limit,
                           store_jobs *out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int64_t cursor = after_seq > 0 ? after_seq : INT64_MAX;
    int rc = status == STORE_ANY
        ? st_query(s, &st, err, errlen, "SELECT " JOB_COLS " FROM jobs WHERE seq < ?"
                   " ORDER BY seq DESC LIMIT ?", "Ii", cursor, limit + 1)
        : st_query(s, &st, err, errlen, "SELECT " JOB_COLS " FROM jobs WHERE status = ?"
                   " AND seq < ? ORDER BY seq DESC LIMIT ?", "sIi", store_status_name(status),
                   cursor, limit + 1);
    if (rc == 0 && !(out->v = calloc((size_t)limit, sizeof *out->v)))
        rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    while (rc == 0 && (rc = st_step(s, st, err, errlen)) == 1) {
        if (out->n == (size_t)limit) { out->more = 1; rc = 0; break; }
        rc = job_read(st, &out->v[out->n++]);
        if (rc) eng_errf(err, errlen, rc, "out of memory listing jobs");
    }
    sqlite3_finalize(st);
    return rc;
}

int store_job_list(store *s, store_status status, int64_t after_seq, int limit, store_jobs *out,
                   char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (limit < 1 || limit > STORE_LIST_MAX)
        return eng_errf(err, errlen, ENG_EINVAL, "limit must be 1..%d", STORE_LIST_MAX);
    if (status < STORE_ANY || status >= STORE_NSTATUS)
        return eng_errf(err, errlen, ENG_EINVAL, "no such job status");
    pthread_mutex_lock(&s->mu);
    int rc = job_list_locked(s, status, after_seq, limit, out, err, errlen);
    pthread_mutex_unlock(&s->mu);
    if (rc) store_jobs_free(out);
    return rc;
}

int store_job_count(store *s, store_status status, int64_t *n, char *err, size_t errlen)
{
    if (status < STORE_ANY || status >= STORE_NSTATUS)
        return eng_errf(err, errlen, ENG_EINVAL, "no such job status");
    pthread_mutex_lock(&s->mu);
    int rc = status == STORE_ANY
        ? st_int(s, n, err, errlen, "SELECT COUNT(*) FROM jobs", "")
        : st_int(s, n, err, errlen, "SELECT COUNT(*) FROM jobs WHERE status = ?", "s",
                 store_status_name(status));
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int store_job_set_resolved(store *s, const char *id, const char *resolved_json,
                           int64_t total_steps, char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    int rc = st_json_ok(resolved_json, 0, "resolved_json", err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    rc = st_run(s, err, errlen,
                "UPDATE jobs SET resolved_json = ?, total_steps = COALESCE(?, total_steps),"
                " updated_at = ? WHERE id = ? AND status = 'validating'",
                "sNIs", resolved_json, total_steps, store_now_ms(), id);
    if (rc == 0) rc = not_in_state(s, id, STORE_VALIDATING, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc < 0 ? rc : 0;
}

/* ---- the queue ---- */

static int claim_locked(store *s, store_job **out, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    char *id = NULL;
    int rc = st_query(s, &st, err, errlen,
                      "SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1", "");
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 1 && st_col_str(st, 0, &id)) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    sqlite3_finalize(st);
    if (rc <= 0) return rc; /* 0: nothing queued */
    rc = st_transition(s, id, STORE_QUEUED, STORE_RUNNING, NULL, err, errlen);
    if (rc == 0) rc = job_get_locked(s, id, out, err, errlen);
    free(id);
    return rc;
}

int store_job_claim_next(store *s, store_job **out, char *err, size_t errlen)
{
    *out = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, claim_locked(s, out, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        store_job_free(*out);
        *out = NULL;
    }
    return rc;
}

static int recover_locked(store *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    char **ids = NULL;
    int *cancel = NULL, n = 0, cap = 0, rc;
    /* Collect first: updating rows under a live SELECT on the same table is unspecified. */
    rc = st_query(s, &st, err, errlen, "SELECT id, cancel_requested, status = 'validating'"
                  " FROM jobs WHERE status IN ('running', 'validating') ORDER BY seq", "");
    while (rc == 0 && (rc = st_step(s, st, err, errlen)) == 1) {
        rc = 0;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            char **ni = realloc(ids, (size_t)cap * sizeof *ids);
            int *nc = ni ? realloc(cancel, (size_t)cap * sizeof *cancel) : NULL;
            if (ni) ids = ni;
            if (nc) cancel = nc;
            if (!ni || !nc) { rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory"); break; }
        }
        cancel[n] = sqlite3_column_int(st, 1) | sqlite3_column_int(st, 2) << 1;
        if (st_col_str(st, 0, &ids[n++])) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    }
    sqlite3_finalize(st);
    for (int i = 0; i < n && rc == 0; i++) {
        st_extra x = {0};
        store_status from = STORE_RUNNING, to = STORE_QUEUED;
        if (cancel[i] & 2) { /* bit 1: its creation was interrupted */
            from = STORE_VALIDATING, to = STORE_FAILED;
            x.error_code = "interrupted";
            x.error_message = x.note = "the server stopped while the job was being created; "
                                       "create it again";
        } else if (cancel[i] & 1) {
            to = STORE_CANCELLED, x.note = "cancelled after restart";
        } else {
            x.note = "requeued after restart";
        }
        rc = st_transition(s, ids[i], from, to, &x, err, errlen);
    }
    for (int i = 0; i < n; i++) free(ids[i]);
    free(ids);
    free(cancel);
    return rc ? rc : n;
}

int store_recover(store *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) {
        int n = recover_locked(s, err, errlen);
        rc = st_end(s, n < 0 ? n : 0, err, errlen);
        if (rc == 0) rc = n;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- cancellation and progress ---- */

static int cancel_locked(store *s, const char *id, store_status *now, char *err, size_t errlen)
{
    store_status cur;
    int rc = job_status(s, id, &cur, err, errlen);
    if (rc) return rc;
    if (store_status_terminal(cur))
        return eng_errf(err, errlen, STORE_ECONFLICT, "job %s is already %s", id,
                        store_status_name(cur));
    if (cur != STORE_RUNNING) {
        st_extra x = {.note = "cancel requested"};
        rc = st_transition(s, id, cur, STORE_CANCELLED, &x, err, errlen);
        *now = STORE_CANCELLED;
        return rc;
    }
    rc = st_run(s, err, errlen, "UPDATE jobs SET cancel_requested = 1, updated_at = ?"
                " WHERE id = ? AND status = 'running'", "Is", store_now_ms(), id);
    *now = STORE_RUNNING;
    return rc < 0 ? rc : 0;
}

int store_job_request_cancel(store *s, const char *id, store_status *now,
                             char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    store_status dummy;
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, cancel_locked(s, id, now ? now : &dummy, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int store_job_cancel_requested(store *s, const char *id, int *yes, char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    int64_t v = 0;
    pthread_mutex_lock(&s->mu);
    int rc = st_int(s, &v, err, errlen, "SELECT cancel_requested FROM jobs WHERE id = ?", "s", id);
    pthread_mutex_unlock(&s->mu);
    if (rc == ENG_ENOTFOUND) return eng_errf(err, errlen, rc, "job %s not found", id);
    *yes = rc == 0 && v != 0;
    return rc;
}

static int park_locked(store *s, const char *id, store_status *now, char *err, size_t errlen)
{
    int64_t cancel = 0;
    int rc = st_int(s, &cancel, err, errlen, "SELECT cancel_requested FROM jobs WHERE id = ?",
                    "s", id);
    if (rc == ENG_ENOTFOUND) return eng_errf(err, errlen, rc, "job %s not found", id);
    if (rc) return rc;
    st_extra x = {.note = cancel ? "cancelled while the server was stopping"
                                 : "requeued: the server is stopping"};
    *now = cancel ? STORE_CANCELLED : STORE_QUEUED;
    return st_transition(s, id, STORE_RUNNING, *now, &x, err, errlen);
}

int store_job_park_running(store *s, const char *id, store_status *now, char *err,
                           size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    store_status dummy;
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, park_locked(s, id, now ? now : &dummy, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int store_job_progress(store *s, const char *id, const store_progress *p, int *cancel,
                       char *err, size_t errlen)
{
    if (!id || !p) return eng_errf(err, errlen, ENG_EINVAL, "no job id or progress");
    pthread_mutex_lock(&s->mu);
    /* A single statement is atomic on its own; no transaction, so this stays cheap. */
    int rc = st_run(s, err, errlen,
                    "UPDATE jobs SET step = COALESCE(?, step),"
                    " total_steps = COALESCE(?, total_steps),"
                    " images_per_sec = COALESCE(?, images_per_sec),"
                    " train_loss = COALESCE(?, train_loss), val_top1 = COALESCE(?, val_top1),"
                    " val_top5 = COALESCE(?, val_top5), val_loss = COALESCE(?, val_loss),"
                    " updated_at = ? WHERE id = ? AND status = 'running'",
                    "NNdddddIs", p->step, p->total_steps, p->images_per_sec, p->train_loss,
                    p->val_top1, p->val_top5, p->val_loss, store_now_ms(), id);
    if (rc == 0) rc = not_in_state(s, id, STORE_RUNNING, err, errlen);
    int64_t v = 0;
    if (rc > 0 && cancel)
        rc = st_int(s, &v, err, errlen, "SELECT cancel_requested FROM jobs WHERE id = ?", "s", id);
    pthread_mutex_unlock(&s->mu);
    if (cancel) *cancel = rc >= 0 && v != 0;
    return rc < 0 ? rc : 0;
}

static int delete_locked(store *s, const char *id, char *err, size_t errlen)
{
    store_status cur;
    int rc = job_status(s, id, &cur, err, errlen);
    if (rc) return rc;
    if (!store_status_terminal(cur))
        return eng_errf(err, errlen, STORE_EINUSE, "job %s is %s: cancel it first", id,
                        store_status_name(cur));
    rc = st_run(s, err, errlen, "DELETE FROM jobs WHERE id = ?", "s", id);
    return rc < 0 ? rc : 0;
}

int store_job_delete(store *s, const char *id, char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no job id");
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, delete_locked(s, id, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

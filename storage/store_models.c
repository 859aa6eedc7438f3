/* Models: base checkpoints and fine-tune results, and the job -> succeeded hand-over. */
#include "storage/store_int.h"

#include <stdlib.h>
#include <string.h>

#define MODEL_COLS \
    "id, name, kind, job_id, path, classes_json, architecture, resolution, bytes, created_at"

static int model_read(sqlite3_stmt *st, store_model *m)
{
    char **strs[] = {&m->id, &m->name, &m->kind, &m->job_id, &m->path, &m->classes_json,
                     &m->architecture};
    for (int i = 0; i < 7; i++)
        if (st_col_str(st, i, strs[i])) return ENG_ENOMEM;
    m->resolution = sqlite3_column_int(st, 7);
    m->bytes = sqlite3_column_int64(st, 8);
    m->created_at = sqlite3_column_int64(st, 9);
    return 0;
}

static void model_clear(store_model *m)
{
    free(m->id); free(m->name); free(m->kind); free(m->job_id); free(m->path);
    free(m->classes_json); free(m->architecture);
    memset(m, 0, sizeof *m);
}

void store_model_free(store_model *m)
{
    if (!m) return;
    model_clear(m);
    free(m);
}

void store_models_free(store_models *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) model_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int model_check(const store_model_new *m, char *err, size_t errlen)
{
    int rc = st_text_ok(m->name, 256, "model name", err, errlen);
    if (rc == 0) rc = st_text_ok(m->path, 4096, "model path", err, errlen);
    if (rc == 0 && (!m->kind || (strcmp(m->kind, "base") && strcmp(m->kind, "fine-tuned"))))
        rc = eng_errf(err, errlen, ENG_EINVAL, "model kind must be \"base\" or \"fine-tuned\"");
    if (rc == 0) rc = st_json_ok(m->classes_json, 1, "classes_json", err, errlen);
    if (rc == 0 && (m->resolution < 0 || m->bytes < 0))
        rc = eng_errf(err, errlen, ENG_EINVAL, "negative model resolution or size");
    return rc;
}

int st_model_insert(store *s, const store_model_new *m, char id[STORE_ID_MAX],
                    char *err, size_t errlen)
{
    int rc = model_check(m, err, errlen);
    if (rc == 0) rc = st_id_take(m->id, "mdl", id, err, errlen);
    if (rc) return rc;
    rc = st_run(s, err, errlen,
                "INSERT INTO models (id, name, kind, job_id, path, classes_json, resolution,"
                " architecture, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                "ssssssisII", id, m->name, m->kind, m->job_id, m->path, m->classes_json,
                m->resolution, m->architecture, m->bytes, store_now_ms());
    if (rc == STORE_EEXISTS)
        return eng_errf(err, errlen, rc, "a model named \"%s\" (or id %s) already exists",
                        m->name, id);
    if (rc == ENG_ENOTFOUND) return eng_errf(err, errlen, rc, "job %s not found", m->job_id);
    return rc < 0 ? rc : 0;
}

int store_model_create(store *s, const store_model_new *m, char id[STORE_ID_MAX],
                       char *err, size_t errlen)
{
    if (!m) return eng_errf(err, errlen, ENG_EINVAL, "no model");
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, st_model_insert(s, m, id, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int store_job_succeed(store *s, const char *job_id, const store_model_new *m,
                      char model_id[STORE_ID_MAX], char *err, size_t errlen)
{
    if (!job_id || !m) return eng_errf(err, errlen, ENG_EINVAL, "no job id or model");
    store_model_new mj = *m;
    mj.job_id = job_id;
    st_extra x = {.model_id = model_id};
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) {
        int64_t cancel = 0;
        int r = st_int(s, &cancel, err, errlen, "SELECT cancel_requested FROM jobs WHERE id = ?",
                       "s", job_id);
        if (r == 0 && cancel) /* a cancel that landed before success wins: no model */
            r = eng_errf(err, errlen, STORE_ECONFLICT, "job %s was cancelled", job_id);
        if (r == 0) r = st_model_insert(s, &mj, model_id, err, errlen);
        if (r == 0) r = st_transition(s, job_id, STORE_RUNNING, STORE_SUCCEEDED, &x, err, errlen);
        rc = st_end(s, r, err, errlen);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int model_get_by(store *s, const char *sql, const char *key, store_model **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    if (!key) return eng_errf(err, errlen, ENG_EINVAL, "no model id or name");
    store_model *m = calloc(1, sizeof *m);
    if (!m) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = st_query(s, &st, err, errlen, sql, "s", key);
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 0) rc = eng_errf(err, errlen, ENG_ENOTFOUND, "model %s not found", key);
    if (rc == 1 && (rc = model_read(st, m))) eng_errf(err, errlen, rc, "out of memory");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc) goto fail;
    *out = m;
    return 0;
fail:
    store_model_free(m);
    return rc;
}

int store_model_get(store *s, const char *id, store_model **out, char *err, size_t errlen)
{
    return model_get_by(s, "SELECT " MODEL_COLS " FROM models WHERE id = ?", id, out, err,
                        errlen);
}

int store_model_get_by_name(store *s, const char *name, store_model **out,
                            char *err, size_t errlen)
{
    return model_get_by(s, "SELECT " MODEL_COLS " FROM models WHERE name = ?", name, out, err,
                        errlen);
}

int store_model_list(store *s, const char *kind, store_models *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&s->mu);
    int rc = st_query(s, &st, err, errlen, "SELECT " MODEL_COLS " FROM models"
                      " WHERE ?1 IS NULL OR kind = ?1 ORDER BY created_at DESC, rowid DESC",
                      "s", kind);
    while (rc == 0 && (rc = st_step(s, st, err, errlen)) == 1) {
        rc = st_grow((void **)&out->v, out->n, &cap, sizeof *out->v);
        if (rc == 0) rc = model_read(st, &out->v[out->n++]);
        if (rc) eng_errf(err, errlen, rc, "out of memory listing models");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc) store_models_free(out);
    return rc;
}

static int model_delete_locked(store *s, const char *id, char *err, size_t errlen)
{
    int64_t live = 0;
    int rc = st_int(s, &live, err, errlen, "SELECT 1 FROM models WHERE id = ?", "s", id);
    if (rc == ENG_ENOTFOUND) return eng_errf(err, errlen, rc, "model %s not found", id);
    /* Jobs name their base model by name or id; the worker loads it when the job runs. */
    if (rc == 0)
        rc = st_int(s, &live, err, errlen, "SELECT COUNT(*) FROM jobs WHERE status IN "
                    ST_LIVE_SQL " AND base_model IN (?1, (SELECT name FROM models WHERE id = ?1))",
                    "s", id);
    if (rc) return rc;
    if (live)
        return eng_errf(err, errlen, STORE_EINUSE, "model %s is the base of %lld unfinished job%s",
                        id, (long long)live, live == 1 ? "" : "s");
    rc = st_run(s, err, errlen, "DELETE FROM models WHERE id = ?", "s", id);
    return rc < 0 ? rc : 0;
}

int store_model_delete(store *s, const char *id, char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no model id");
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, model_delete_locked(s, id, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Datasets: plain rows, plus the rule that a live job keeps its dataset. */
#include "storage/store_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- datasets ---- */

#define DATASET_COLS "id, name, status, summary_json, path, created_at, bytes"

static int dataset_read(sqlite3_stmt *st, store_dataset *d)
{
    char **strs[] = {&d->id, &d->name, &d->status, &d->summary_json, &d->path};
    for (int i = 0; i < 5; i++)
        if (st_col_str(st, i, strs[i])) return ENG_ENOMEM;
    d->created_at = sqlite3_column_int64(st, 5);
    d->bytes = sqlite3_column_int64(st, 6);
    return 0;
}

static void dataset_clear(store_dataset *d)
{
    free(d->id); free(d->name); free(d->status); free(d->summary_json); free(d->path);
    memset(d, 0, sizeof *d);
}

void store_dataset_free(store_dataset *d)
{
    if (!d) return;
    dataset_clear(d);
    free(d);
}

void store_datasets_free(store_datasets *l)
{
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) dataset_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

int store_dataset_create(store *s, const store_dataset_new *d, char id[STORE_ID_MAX],
                         char *err, size_t errlen)
{
    if (!d) return eng_errf(err, errlen, ENG_EINVAL, "no dataset");
    int rc = st_text_ok(d->name, 256, "dataset name", err, errlen);
    if (rc == 0) rc = st_text_ok(d->status, 32, "dataset status", err, errlen);
    if (rc == 0) rc = st_text_ok(d->path, 4096, "dataset path", err, errlen);
    if (rc == 0) rc = st_json_ok(d->summary_json, 1, "summary_json", err, errlen);
    if (rc == 0 && d->bytes < 0) rc = eng_errf(err, errlen, ENG_EINVAL, "negative size");
    if (rc == 0) rc = st_id_take(d->id, "ds", id, err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    rc = st_run(s, err, errlen,
                "INSERT INTO datasets (id, name, created_at, status, summary_json, path, bytes)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                "ssIsssI", id, d->name, store_now_ms(), d->status,
                d->summary_json, d->path, d->bytes);
    pthread_mutex_unlock(&s->mu);
    if (rc == STORE_EEXISTS) eng_errf(err, errlen, rc, "dataset %s already exists", id);
    return rc < 0 ? rc : 0;
}

int store_dataset_update(store *s, const char *id, const char *status, const char *summary_json,
                         int64_t bytes, char *err, size_t errlen)
{
    int rc = st_text_ok(id, 64, "dataset id", err, errlen);
    if (rc == 0 && status) rc = st_text_ok(status, 32, "dataset status", err, errlen);
    if (rc == 0) rc = st_json_ok(summary_json, 1, "summary_json", err, errlen);
    if (rc) return rc;
    pthread_mutex_lock(&s->mu);
    rc = st_run(s, err, errlen,
                "UPDATE datasets SET status = COALESCE(?, status),"
                " summary_json = COALESCE(?, summary_json), bytes = COALESCE(?, bytes)"
                " WHERE id = ?", "ssNs", status, summary_json, bytes, id);
    pthread_mutex_unlock(&s->mu);
    if (rc == 0) return eng_errf(err, errlen, ENG_ENOTFOUND, "dataset %s not found", id);
    return rc < 0 ? rc : 0;
}

/* ENG_ENOTFOUND, saying when the dataset was deleted if it was (s->mu held). */
static int not_found(store *s, const char *id, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    char *name = NULL, when[32];
    int rc = st_query(s, &st, NULL, 0, "SELECT name, deleted_at FROM datasets_deleted WHERE id = ?", "s", id);
    if (rc == 0 && st_step(s, st, NULL, 0) == 1 && !st_col_str(st, 0, &name) && name)
        eng_errf(err, errlen, ENG_ENOTFOUND, "dataset %s ('%s') was deleted at %s", id, name,
                 store_rfc3339(sqlite3_column_int64(st, 1), when));
    else
        eng_errf(err, errlen, ENG_ENOTFOUND, "dataset %s not found", id);
    free(name);
    sqlite3_finalize(st);
    return ENG_ENOTFOUND;
}

int store_dataset_get(store *s, const char *id, store_dataset **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no dataset id");
    store_dataset *d = calloc(1, sizeof *d);
    if (!d) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    sqlite3_stmt *st = NULL;
    pthread_mutex_lock(&s->mu);
    int rc = st_query(s, &st, err, errlen, "SELECT " DATASET_COLS " FROM datasets WHERE id = ?",
                      "s", id);
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 0) rc = not_found(s, id, err, errlen);
    if (rc == 1 && (rc = dataset_read(st, d))) eng_errf(err, errlen, rc, "out of memory");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc) goto fail;
    *out = d;
    return 0;
fail:
    store_dataset_free(d);
    return rc;
}

/* Every dataset, or those called name, newest first. */
static int list(store *s, const char *name, store_datasets *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&s->mu);
    int rc = name ? st_query(s, &st, err, errlen, "SELECT " DATASET_COLS " FROM datasets WHERE name = ?"
                             " ORDER BY created_at DESC, rowid DESC", "s", name)
                  : st_query(s, &st, err, errlen, "SELECT " DATASET_COLS " FROM datasets"
                             " ORDER BY created_at DESC, rowid DESC", "");
    while (rc == 0 && (rc = st_step(s, st, err, errlen)) == 1) {
        rc = st_grow((void **)&out->v, out->n, &cap, sizeof *out->v);
        if (rc == 0) rc = dataset_read(st, &out->v[out->n++]);
        if (rc) eng_errf(err, errlen, rc, "out of memory listing datasets");
    }
    sqlite3_finalize(st);
    pthread_mutex_unlock(&s->mu);
    if (rc) store_datasets_free(out);
    return rc;
}

int store_dataset_list(store *s, store_datasets *out, char *err, size_t errlen)
{
    return list(s, NULL, out, err, errlen);
}

int store_dataset_list_named(store *s, const char *name, store_datasets *out, char *err,
                             size_t errlen)
{
    if (!name) return eng_errf(err, errlen, ENG_EINVAL, "no dataset name");
    return list(s, name, out, err, errlen);
}

static int dataset_delete_locked(store *s, const char *id, char *err, size_t errlen)
{
    int64_t live = 0;
    int rc = st_int(s, &live, err, errlen, "SELECT 1 FROM datasets WHERE id = ?", "s", id);
    if (rc == ENG_ENOTFOUND) return not_found(s, id, err, errlen);
    if (rc == 0)
        rc = st_int(s, &live, err, errlen, "SELECT COUNT(*) FROM jobs WHERE dataset_id = ?"
                    " AND status IN " ST_LIVE_SQL, "s", id);
    if (rc) return rc;
    if (live)
        return eng_errf(err, errlen, STORE_EINUSE, "dataset %s is used by %lld unfinished job%s",
                        id, (long long)live, live == 1 ? "" : "s");
    rc = st_run(s, err, errlen, "INSERT OR REPLACE INTO datasets_deleted (id, name, deleted_at)"
                " SELECT id, name, ? FROM datasets WHERE id = ?", "Is", store_now_ms(), id);
    if (rc >= 0) rc = st_run(s, err, errlen, "DELETE FROM datasets WHERE id = ?", "s", id);
    return rc < 0 ? rc : 0;
}

int store_dataset_delete(store *s, const char *id, char *err, size_t errlen)
{
    if (!id) return eng_errf(err, errlen, ENG_EINVAL, "no dataset id");
    pthread_mutex_lock(&s->mu);
    int rc = st_begin(s, err, errlen);
    if (rc == 0) rc = st_end(s, dataset_delete_locked(s, id, err, errlen), err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Internals shared by the storage sources and tests/test_store.c: the store struct,
 * statement and transaction helpers, the migration runner. Not for other modules.
 * Helpers expect s->mu held; strings they return are malloc'd and the caller's. */
#ifndef BIT_STORE_INT_H
#define BIT_STORE_INT_H

#include <pthread.h>
#include <sqlite3.h>

#include "storage/store.h"

/* The unfinished job states, for "status IN " ST_LIVE_SQL; mirrors store_status_terminal. */
#define ST_LIVE_SQL "('validating', 'queued', 'running')"

struct store {
    sqlite3 *db;
    pthread_mutex_t mu; /* one transaction at a time on the shared connection */
    void (*hook)(void *ud, const char *point); /* store_set_test_hook */
    uint64_t events_added; /* under mu: store_event_stamp's in-process part */
    void *hook_ud;
};

/* Runs the test hook, if any, at a named point. */
void st_hook(store *s, const char *point);

/* Brings db from its user_version up to `target` (<= store_schema_version()) in one
 * transaction. Tests call it to build databases at an older version. */
int st_migrate(sqlite3 *db, int target, char *err, size_t errlen);

/* Maps an SQLite result code to a store/ENG code and writes SQLite's message. */
int st_err(sqlite3 *db, int src, char *err, size_t errlen);

/* Bind formats, one letter per parameter: s text (NULL binds NULL), i int, I int64_t,
 * N int64_t (negative binds NULL), d double (NAN binds NULL). */
int st_query(store *s, sqlite3_stmt **st, char *err, size_t errlen, const char *sql,
             const char *fmt, ...);
/* 1 on a row, 0 when done, or a negative code (the statement stays the caller's). */
int st_step(store *s, sqlite3_stmt *st, char *err, size_t errlen);
/* Runs a statement that returns no rows; gives the number of rows changed or a code. */
int st_run(store *s, char *err, size_t errlen, const char *sql, const char *fmt, ...);
/* Runs a query for a single integer (first column of the first row); ENG_ENOTFOUND if none. */
int st_int(store *s, int64_t *v, char *err, size_t errlen, const char *sql, const char *fmt, ...);

int st_begin(store *s, char *err, size_t errlen); /* BEGIN IMMEDIATE */
/* Commits if rc == 0, else rolls back; returns rc or the commit's failure. */
int st_end(store *s, int rc, char *err, size_t errlen);

/* Column readers: copy text (NULL stays NULL); ENG_ENOMEM if the copy fails. */
int st_col_str(sqlite3_stmt *st, int col, char **out);
double st_col_real(sqlite3_stmt *st, int col); /* NAN for NULL */

/* Grows the array *v of n elements (size sz, capacity *cap) so one more fits; zeroes
 * the new tail. ENG_ENOMEM on failure, leaving *v as it was. */
int st_grow(void **v, size_t n, size_t *cap, size_t sz);

/* Checks a caller-supplied id ("<prefix>_" + 16 lowercase hex) or makes a new one. */
int st_id_take(const char *given, const char *prefix, char id[STORE_ID_MAX],
               char *err, size_t errlen);
/* ENG_EINVAL unless json is NULL (when allowed) or parses as JSON. */
int st_json_ok(const char *json, int null_ok, const char *what, char *err, size_t errlen);
/* ENG_EINVAL unless s is a non-empty string of at most max bytes. */
int st_text_ok(const char *str, size_t max, const char *what, char *err, size_t errlen);

/* Appends an event in the caller's transaction. */
int st_event_insert(store *s, const char *job_id, const char *type, int64_t step,
                    const char *data_json, int64_t now, int64_t *seq, char *err, size_t errlen);

/* The transition core, inside the caller's transaction; model_id/note go to the row/event. */
typedef struct st_extra {
    const char *error_code, *error_message, *model_id, *note;
} st_extra;
int st_transition(store *s, const char *id, store_status from, store_status to,
                  const st_extra *x, char *err, size_t errlen);

/* Inserts a model row inside the caller's transaction. */
int st_model_insert(store *s, const store_model_new *m, char id[STORE_ID_MAX],
                    char *err, size_t errlen);

#endif

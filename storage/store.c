/* Opening, pragmas and schema migrations, and the statement helpers the other files use. */
#include "storage/store_int.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Forward migrations: entry i takes user_version i to i + 1. Never edit a shipped entry;
 * append a new one. A step that rebuilds a table must keep foreign keys consistent itself:
 * PRAGMA foreign_keys cannot change inside the migration's transaction. */
static const char *const migrations[] = {
    /* 1: the tables. jobs.seq orders jobs (queue, listing) and is the list cursor;
     * AUTOINCREMENT keeps it from ever being reused. Finished jobs outlive their dataset
     * and model (SET NULL); events die with their job (CASCADE). */
    "CREATE TABLE datasets ("
    " id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL,"
    " status TEXT NOT NULL, summary_json TEXT, path TEXT NOT NULL,"
    " bytes INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE models ("
    " id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " kind TEXT NOT NULL CHECK (kind IN ('base', 'fine-tuned')),"
    " job_id TEXT REFERENCES jobs(id) ON DELETE SET NULL, path TEXT NOT NULL,"
    " classes_json TEXT, resolution INTEGER NOT NULL DEFAULT 0, architecture TEXT,"
    " bytes INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL);"
    "CREATE TABLE jobs ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
    " dataset_id TEXT REFERENCES datasets(id) ON DELETE SET NULL,"
    " base_model TEXT NOT NULL, params_json TEXT NOT NULL, resolved_json TEXT,"
    " status TEXT NOT NULL CHECK (status IN ('validating', 'queued', 'running',"
    "  'succeeded', 'failed', 'cancelled')),"
    " step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,"
    " images_per_sec REAL, train_loss REAL, val_top1 REAL, val_top5 REAL, val_loss REAL,"
    " model_id TEXT REFERENCES models(id) ON DELETE SET NULL,"
    " error_code TEXT, error_message TEXT, created_at INTEGER NOT NULL,"
    " started_at INTEGER, finished_at INTEGER, updated_at INTEGER NOT NULL,"
    " cancel_requested INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE job_events ("
    " job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,"
    " time INTEGER NOT NULL, type TEXT NOT NULL, step INTEGER, data_json TEXT,"
    " PRIMARY KEY (job_id, seq)) WITHOUT ROWID;",
    /* 2: indexes for the queue and status filters, and for the foreign-key checks that a
     * dataset, model or job delete runs against its children. */
    "CREATE INDEX jobs_status ON jobs(status, seq);"
    "CREATE INDEX jobs_dataset ON jobs(dataset_id);"
    "CREATE INDEX jobs_model ON jobs(model_id);"
    "CREATE INDEX models_job ON models(job_id);"
    "CREATE INDEX datasets_created ON datasets(created_at);"
    "CREATE INDEX models_created ON models(created_at);",
    /* 3: deleted datasets, so a later reference to one is told it was deleted rather than
     * that it never existed (finished jobs lose the link: SET NULL). */
    ("CREATE TABLE datasets_deleted ("
     " id TEXT PRIMARY KEY, name TEXT NOT NULL, deleted_at INTEGER NOT NULL);"),
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))

int store_schema_version(void) { return NMIGRATIONS; }

int st_err(sqlite3 *db, int src, char *err, size_t errlen)
{
    int code;
    switch (src & 0xff) {
    case SQLITE_BUSY: case SQLITE_LOCKED: code = STORE_EBUSY; break;
    case SQLITE_NOMEM: code = ENG_ENOMEM; break;
    case SQLITE_FULL: code = ENG_ENOSPC; break;
    case SQLITE_CORRUPT: case SQLITE_NOTADB: code = ENG_EFORMAT; break;
    case SQLITE_CONSTRAINT:
        code = src == SQLITE_CONSTRAINT_UNIQUE || src == SQLITE_CONSTRAINT_PRIMARYKEY
                   ? STORE_EEXISTS
               : src == SQLITE_CONSTRAINT_FOREIGNKEY ? ENG_ENOTFOUND : ENG_EINVAL;
        break;
    default: code = ENG_EIO;
    }
    return eng_errf(err, errlen, code, "database: %s (SQLite code %d)",
                    db ? sqlite3_errmsg(db) : sqlite3_errstr(src), src);
}

static int exec_plain(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    int src = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return src == SQLITE_OK ? 0 : st_err(db, src, err, errlen);
}

static int read_user_version(sqlite3 *db, int *v, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (src == SQLITE_OK) src = sqlite3_step(st);
    int rc = src == SQLITE_ROW ? 0 : st_err(db, src, err, errlen);
    if (rc == 0) *v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc;
}

static int migrate_locked(sqlite3 *db, int target, char *err, size_t errlen)
{
    int v = 0;
    int rc = read_user_version(db, &v, err, errlen);
    if (rc) return rc;
    if (v > NMIGRATIONS)
        return eng_errf(err, errlen, ENG_EUNSUPPORTED,
                        "database schema version %d is newer than this bitd knows (%d): "
                        "upgrade bitd or restore an older database", v, NMIGRATIONS);
    if (v < 0) return eng_errf(err, errlen, ENG_EFORMAT, "database schema version %d", v);
    for (; v < target; v++) {
        rc = exec_plain(db, migrations[v], err, errlen);
        if (rc) return rc;
    }
    char sql[48]; /* PRAGMA takes no bound parameters; v is our own integer */
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", v);
    return exec_plain(db, sql, err, errlen);
}

int st_migrate(sqlite3 *db, int target, char *err, size_t errlen)
{
    if (target < 0 || target > NMIGRATIONS)
        return eng_errf(err, errlen, ENG_EINVAL, "no schema version %d", target);
    /* IMMEDIATE: two processes opening a fresh file must not both run step 1. */
    int rc = exec_plain(db, "BEGIN IMMEDIATE", err, errlen);
    if (rc) return rc;
    rc = migrate_locked(db, target, err, errlen);
    if (rc == 0) rc = exec_plain(db, "COMMIT", err, errlen);
    if (rc) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Runs a pragma whose answer must read back as `want` (SQLite ignores some silently). */
static int pragma_expect(sqlite3 *db, const char *sql, const char *want, char *err,
                         size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (src == SQLITE_OK) src = sqlite3_step(st);
    int rc = 0;
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = st_err(db, src, err, errlen);
    } else {
        const char *got = src == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
        if (!got || strcmp(got, want))
            rc = eng_errf(err, errlen, ENG_EUNSUPPORTED, "%s gave %s, need %s", sql,
                          got ? got : "nothing", want);
    }
    sqlite3_finalize(st);
    return rc;
}

static int configure(sqlite3 *db, char *err, size_t errlen)
{
    /* busy_timeout goes first: from the next statement on, another process may hold a lock. */
    int src = sqlite3_busy_timeout(db, STORE_BUSY_MS);
    if (src != SQLITE_OK) return st_err(db, src, err, errlen);
    sqlite3_extended_result_codes(db, 1);
    int rc = pragma_expect(db, "PRAGMA journal_mode=WAL", "wal", err, errlen);
    /* FULL: a commit reaches the disk before it returns, so job state survives power loss. */
    if (rc == 0) rc = exec_plain(db, "PRAGMA synchronous=FULL", err, errlen);
    if (rc == 0) rc = pragma_expect(db, "PRAGMA synchronous", "2", err, errlen);
    if (rc == 0) rc = exec_plain(db, "PRAGMA foreign_keys=ON", err, errlen);
    if (rc == 0) rc = pragma_expect(db, "PRAGMA foreign_keys", "1", err, errlen);
    return rc;
}

int store_open(const char *path, store **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!path || !*path) return eng_errf(err, errlen, ENG_EINVAL, "no database path");
    if (!sqlite3_threadsafe())
        return eng_errf(err, errlen, ENG_EUNSUPPORTED, "SQLite was built without threads");
    store *s = calloc(1, sizeof *s);
    if (!s) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    int rc;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return eng_errf(err, errlen, ENG_ENOMEM, "cannot create a mutex");
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX;
    int src = sqlite3_open_v2(path, &s->db, flags, NULL);
    if (src != SQLITE_OK) {
        rc = st_err(s->db, src, err, errlen);
        goto fail;
    }
    rc = configure(s->db, err, errlen);
    if (rc == 0) rc = st_migrate(s->db, NMIGRATIONS, err, errlen);
    if (rc) goto fail;
    *out = s;
    return 0;
fail:;
    /* Prefix the path without losing SQLite's words. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", err && errlen ? err : "");
    eng_errf(err, errlen, rc, "%s: %s", path, msg);
    store_close(s);
    return rc;
}

void store_close(store *s)
{
    if (!s) return;
    sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int integrity_locked(store *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = st_query(s, &st, err, errlen, "PRAGMA integrity_check", "");
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 1) {
        const char *r = (const char *)sqlite3_column_text(st, 0);
        rc = r && !strcmp(r, "ok") ? 0
                                   : eng_errf(err, errlen, ENG_EFORMAT, "integrity_check: %s",
                                              r ? r : "(null)");
    } else if (rc == 0) {
        rc = eng_errf(err, errlen, ENG_EFORMAT, "integrity_check returned nothing");
    }
    sqlite3_finalize(st);
    if (rc) return rc;
    st = NULL;
    rc = st_query(s, &st, err, errlen, "PRAGMA foreign_key_check", "");
    if (rc == 0) rc = st_step(s, st, err, errlen);
    if (rc == 1)
        rc = eng_errf(err, errlen, ENG_EFORMAT, "foreign_key_check: table %s row %lld",
                      (const char *)sqlite3_column_text(st, 0),
                      (long long)sqlite3_column_int64(st, 1));
    sqlite3_finalize(st);
    return rc;
}

int store_integrity_check(store *s, char *err, size_t errlen)
{
    pthread_mutex_lock(&s->mu);
    int rc = integrity_locked(s, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- statement helpers ---- */

static int bind_all(sqlite3_stmt *st, const char *fmt, va_list ap)
{
    int src = SQLITE_OK;
    for (int i = 1; fmt[i - 1] && src == SQLITE_OK; i++) {
        switch (fmt[i - 1]) {
        case 's': {
            const char *v = va_arg(ap, const char *);
            src = v ? sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(st, i);
            break;
        }
        case 'i': src = sqlite3_bind_int(st, i, va_arg(ap, int)); break;
        case 'I': src = sqlite3_bind_int64(st, i, va_arg(ap, int64_t)); break;
        case 'N': {
            int64_t v = va_arg(ap, int64_t);
            src = v < 0 ? sqlite3_bind_null(st, i) : sqlite3_bind_int64(st, i, v);
            break;
        }
        case 'd': {
            double v = va_arg(ap, double);
            src = isnan(v) ? sqlite3_bind_null(st, i) : sqlite3_bind_double(st, i, v);
            break;
        }
        default: src = SQLITE_MISUSE;
        }
    }
    return src;
}

static int query_v(store *s, sqlite3_stmt **st, char *err, size_t errlen, const char *sql,
                   const char *fmt, va_list ap)
{
    *st = NULL;
    int src = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (src == SQLITE_OK) src = bind_all(*st, fmt, ap);
    if (src == SQLITE_OK) return 0;
    int rc = st_err(s->db, src, err, errlen);
    sqlite3_finalize(*st);
    *st = NULL;
    return rc;
}

int st_query(store *s, sqlite3_stmt **st, char *err, size_t errlen, const char *sql,
             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = query_v(s, st, err, errlen, sql, fmt, ap);
    va_end(ap);
    return rc;
}

int st_step(store *s, sqlite3_stmt *st, char *err, size_t errlen)
{
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) return 1;
    if (src == SQLITE_DONE) return 0;
    return st_err(s->db, src, err, errlen);
}

int st_run(store *s, char *err, size_t errlen, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    va_start(ap, fmt);
    int rc = query_v(s, &st, err, errlen, sql, fmt, ap);
    va_end(ap);
    if (rc) return rc;
    rc = st_step(s, st, err, errlen);
    if (rc == 1) rc = eng_errf(err, errlen, ENG_EIO, "statement returned rows: %s", sql);
    else if (rc == 0) rc = sqlite3_changes(s->db);
    sqlite3_finalize(st);
    return rc;
}

int st_int(store *s, int64_t *v, char *err, size_t errlen, const char *sql, const char *fmt, ...)
{
    sqlite3_stmt *st;
    va_list ap;
    va_start(ap, fmt);
    int rc = query_v(s, &st, err, errlen, sql, fmt, ap);
    va_end(ap);
    if (rc) return rc;
    rc = st_step(s, st, err, errlen);
    if (rc == 1) {
        *v = sqlite3_column_int64(st, 0);
        rc = 0;
    } else if (rc == 0) {
        rc = ENG_ENOTFOUND; /* callers word the message: they know what was looked for */
    }
    sqlite3_finalize(st);
    return rc;
}

int st_begin(store *s, char *err, size_t errlen)
{
    /* IMMEDIATE takes the write lock up front: a deferred transaction that later tries to
     * write can fail with SQLITE_BUSY without the busy handler ever waiting. */
    return exec_plain(s->db, "BEGIN IMMEDIATE", err, errlen);
}

int st_end(store *s, int rc, char *err, size_t errlen)
{
    if (rc == 0) rc = exec_plain(s->db, "COMMIT", err, errlen);
    /* After some errors (I/O, full disk) SQLite has already rolled back. */
    if (rc && !sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

int st_col_str(sqlite3_stmt *st, int col, char **out)
{
    *out = NULL;
    const unsigned char *t = sqlite3_column_text(st, col);
    if (!t) return sqlite3_column_type(st, col) == SQLITE_NULL ? 0 : ENG_ENOMEM;
    *out = strdup((const char *)t);
    return *out ? 0 : ENG_ENOMEM;
}

double st_col_real(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

/* ---- ids, time, validation ---- */

int store_id_new(const char *prefix, char id[STORE_ID_MAX], char *err, size_t errlen)
{
    if (!prefix || !*prefix || strlen(prefix) > 8)
        return eng_errf(err, errlen, ENG_EINVAL, "id prefix must be 1-8 characters");
    unsigned char r[8];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return eng_errf(err, errlen, ENG_EIO, "getrandom: %s", strerror(errno));
        got += (size_t)n;
    }
    int n = snprintf(id, STORE_ID_MAX, "%s_", prefix);
    for (size_t i = 0; i < sizeof r; i++) snprintf(id + n + 2 * i, 3, "%02x", r[i]);
    return 0;
}

int st_id_take(const char *given, const char *prefix, char id[STORE_ID_MAX],
               char *err, size_t errlen)
{
    if (!given) return store_id_new(prefix, id, err, errlen);
    size_t pl = strlen(prefix);
    int ok = strlen(given) == pl + 17 && !strncmp(given, prefix, pl) && given[pl] == '_';
    for (size_t i = pl + 1; ok && given[i]; i++)
        ok = (given[i] >= '0' && given[i] <= '9') || (given[i] >= 'a' && given[i] <= 'f');
    if (!ok)
        return eng_errf(err, errlen, ENG_EINVAL, "id \"%.40s\" is not %s_ and 16 hex digits",
                        given, prefix);
    memcpy(id, given, pl + 18);
    return 0;
}

int64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *store_rfc3339(int64_t ms, char buf[32])
{
    int64_t sec = ms / 1000, frac = ms % 1000;
    if (frac < 0) { frac += 1000; sec--; } /* floor, so times before 1970 read right */
    time_t t = (time_t)sec;
    struct tm tm;
    /* Four-digit years only (RFC 3339 allows no others; %Y would not zero-pad below 1000). */
    if (!gmtime_r(&t, &tm) || tm.tm_year < 1000 - 1900 || tm.tm_year > 9999 - 1900) {
        snprintf(buf, 32, "invalid-time");
        return buf;
    }
    size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, 32 - n, ".%03dZ", (int)frac);
    return buf;
}

int st_json_ok(const char *json, int null_ok, const char *what, char *err, size_t errlen)
{
    if (!json)
        return null_ok ? 0 : eng_errf(err, errlen, ENG_EINVAL, "%s is missing", what);
    json_error_t je;
    json_t *j = json_loads(json, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!j) return eng_errf(err, errlen, ENG_EINVAL, "%s is not JSON: %s", what, je.text);
    json_decref(j);
    return 0;
}

int st_text_ok(const char *str, size_t max, const char *what, char *err, size_t errlen)
{
    if (!str || !*str) return eng_errf(err, errlen, ENG_EINVAL, "%s is missing", what);
    if (strlen(str) > max)
        return eng_errf(err, errlen, ENG_EINVAL, "%s is longer than %zu bytes", what, max);
    return 0;
}

int st_grow(void **v, size_t n, size_t *cap, size_t sz)
{
    if (n < *cap) return 0;
    size_t nc = *cap ? 2 * *cap : 16;
    void *nv = realloc(*v, nc * sz);
    if (!nv) return ENG_ENOMEM;
    memset((char *)nv + n * sz, 0, (nc - n) * sz);
    *v = nv;
    *cap = nc;
    return 0;
}

void store_set_test_hook(store *s, void (*hook)(void *ud, const char *point), void *ud)
{
    pthread_mutex_lock(&s->mu);
    s->hook = hook, s->hook_ud = ud;
    pthread_mutex_unlock(&s->mu);
}

void st_hook(store *s, const char *point)
{
    if (s->hook) s->hook(s->hook_ud, point);
}

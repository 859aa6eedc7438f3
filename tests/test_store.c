/* Storage: schema and migrations, the job state machine, the queue under concurrency, crash
 * recovery and crash safety (a writer killed mid-loop), paging, deletes and their refusals. */
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "storage/store_int.h"
#include "t.h"

static char err[1024];

static const char *db_path(const char *name)
{
    static char buf[4][700];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", t_tmpdir(), name);
    return b;
}

static store *open_db(const char *name)
{
    store *s = NULL;
    if (store_open(db_path(name), &s, err, sizeof err) != 0) fprintf(stderr, "  open: %s\n", err);
    return s;
}

static int make_dataset(store *s, char id[STORE_ID_MAX])
{
    store_dataset_new d = {.name = "flowers", .status = "ready", .path = "datasets/x",
                           .summary_json = "{\"classes\": 5}", .bytes = 1234};
    return store_dataset_create(s, &d, id, err, sizeof err);
}

/* A job in `validating`, named uniquely (unfinished jobs may not share a name). */
static int make_job(store *s, const char *ds, char id[STORE_ID_MAX])
{
    static int k;
    char name[32];
    snprintf(name, sizeof name, "tune%d", k++);
    store_job_new j = {.name = name, .dataset_id = ds, .base_model = "BiT-M-R50x1",
                       .params_json = "{\"lr\": 0.003}"};
    return store_job_create(s, &j, id, err, sizeof err);
}

static store_status status_of(store *s, const char *id)
{
    store_job *j = NULL;
    if (store_job_get(s, id, &j, err, sizeof err)) return (store_status)-2;
    store_status st = j->status;
    store_job_free(j);
    return st;
}

static int64_t event_count(store *s, const char *id)
{
    store_events ev;
    if (store_event_list(s, id, 0, STORE_LIST_MAX, &ev, err, sizeof err)) return -1;
    int64_t n = (int64_t)ev.n;
    store_events_free(&ev);
    return n;
}

/* The "to" of a status event's data, in buf. */
static const char *event_to(const store_event *e, char *buf, size_t len)
{
    json_t *o = json_loads(e->data_json ? e->data_json : "", 0, NULL);
    snprintf(buf, len, "%s", json_string_value(json_object_get(o, "to")) ?
             json_string_value(json_object_get(o, "to")) : "");
    json_decref(o);
    return buf;
}

/* Moves a fresh (validating) job to `target` by a legal path. */
static int drive_to(store *s, const char *id, store_status target)
{
    static const store_status path_to[STORE_NSTATUS][4] = {
        [STORE_VALIDATING] = {STORE_VALIDATING},
        [STORE_QUEUED] = {STORE_QUEUED},
        [STORE_RUNNING] = {STORE_QUEUED, STORE_RUNNING},
        [STORE_SUCCEEDED] = {STORE_QUEUED, STORE_RUNNING, STORE_SUCCEEDED},
        [STORE_FAILED] = {STORE_FAILED},
        [STORE_CANCELLED] = {STORE_CANCELLED},
    };
    for (int i = 0; i < 4 && path_to[target][i] != STORE_VALIDATING; i++) {
        store_status to = path_to[target][i];
        int rc = store_job_transition(s, id, STORE_ANY, to, to == STORE_FAILED ? "e" : NULL,
                                      NULL, err, sizeof err);
        if (rc) return rc;
        if (to == target) break;
    }
    return 0;
}

static int64_t raw_int(store *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* ---- cases ---- */

static void open_fresh_pragmas(void)
{
    store *s = open_db("fresh.db");
    T_REQUIRE(s);
    T_CHECK(raw_int(s, "PRAGMA user_version") == store_schema_version());
    T_CHECK(store_schema_version() >= 2);
    T_CHECK(raw_int(s, "PRAGMA foreign_keys") == 1);
    T_CHECK(raw_int(s, "PRAGMA synchronous") == 2); /* FULL */
    T_CHECK(raw_int(s, "PRAGMA busy_timeout") == STORE_BUSY_MS);
    sqlite3_stmt *st = NULL;
    T_REQUIRE(sqlite3_prepare_v2(s->db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    T_CHECK(sqlite3_step(st) == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(st, 0), "wal"));
    sqlite3_finalize(st);
    T_EQ(store_integrity_check(s, err, sizeof err), 0);
    store_close(s);
    store_close(NULL);
    /* Opening again does not re-run migrations (they would fail on existing tables). */
    s = open_db("fresh.db");
    T_NE(s, NULL);
    store_close(s);
}

static void ids_and_times(void)
{
    char a[STORE_ID_MAX], b[STORE_ID_MAX], buf[32];
    T_REQUIRE(store_id_new("job", a, err, sizeof err) == 0);
    T_CHECK(strlen(a) == 20 && !strncmp(a, "job_", 4) && strspn(a + 4, "0123456789abcdef") == 16);
    int distinct = 1;
    for (int i = 0; i < 200; i++) {
        T_REQUIRE(store_id_new("job", b, err, sizeof err) == 0);
        if (!strcmp(a, b)) distinct = 0;
    }
    T_CHECK(distinct);
    T_CHECK(store_id_new("", a, err, sizeof err) == ENG_EINVAL);
    T_CHECK(!strcmp(store_rfc3339(0, buf), "1970-01-01T00:00:00.000Z"));
    T_CHECK(!strcmp(store_rfc3339(1714566896789LL, buf), "2024-05-01T12:34:56.789Z"));
    T_CHECK(!strcmp(store_rfc3339(-1, buf), "1969-12-31T23:59:59.999Z"));
    T_CHECK(!strcmp(store_rfc3339(253402300799999LL, buf), "9999-12-31T23:59:59.999Z"));
    T_CHECK(!strcmp(store_rfc3339(INT64_MAX, buf), "invalid-time"));
    int64_t now = store_now_ms();
    T_CHECK(now > 1600000000000LL && now < 4000000000000LL);
    for (int i = 0; i < STORE_NSTATUS; i++)
        T_EQ(store_status_parse(store_status_name((store_status)i)), i);
    T_CHECK(store_status_parse("paused") == -1 && store_status_parse(NULL) == -1);
}

static void transitions_all_pairs(void)
{
    /* Written out here, not taken from the store, so the test checks the table. */
    static const int want[STORE_NSTATUS][STORE_NSTATUS] = {
        /*              val q  run suc fail canc */
        [STORE_VALIDATING] = {0, 1, 0, 0, 1, 1},
        [STORE_QUEUED] =     {0, 0, 1, 0, 1, 1},
        [STORE_RUNNING] =    {0, 1, 0, 1, 1, 1},
        [STORE_SUCCEEDED] =  {0, 0, 0, 0, 0, 0},
        [STORE_FAILED] =     {0, 0, 0, 0, 0, 0},
        [STORE_CANCELLED] =  {0, 0, 0, 0, 0, 0},
    };
    store *s = open_db("trans.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0);
    for (int from = 0; from < STORE_NSTATUS; from++) {
        for (int to = 0; to < STORE_NSTATUS; to++) {
            T_EQ(store_transition_legal(from, to), want[from][to]);
            T_REQUIRE(make_job(s, ds, id) == 0);
            T_REQUIRE(drive_to(s, id, from) == 0 && status_of(s, id) == (store_status)from);
            int64_t before = event_count(s, id);
            int rc = store_job_transition(s, id, from, to, to == STORE_FAILED ? "boom" : NULL,
                                          "details", err, sizeof err);
            if (want[from][to]) {
                T_CHECKF(rc == 0, "%d -> %d: %s", from, to, err);
                T_EQ(status_of(s, id), (store_status)to);
                T_EQ(event_count(s, id), before + 1);
            } else {
                T_CHECKF(rc == STORE_ECONFLICT, "%d -> %d gave %d", from, to, rc);
                T_EQ(status_of(s, id), (store_status)from);
                T_EQ(event_count(s, id), before);
            }
        }
    }
    store_close(s);
}

static void transition_details(void)
{
    store *s = open_db("trans2.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0);
    /* A stale expectation changes nothing. */
    T_CHECK(store_job_transition(s, id, STORE_QUEUED, STORE_RUNNING, NULL, NULL, err,
                                 sizeof err) == STORE_ECONFLICT);
    T_CHECK(strstr(err, "validating") != NULL);
    T_EQ(status_of(s, id), STORE_VALIDATING);
    T_CHECK(store_job_transition(s, "job_0000000000000000", STORE_ANY, STORE_QUEUED, NULL, NULL,
                                 err, sizeof err) == ENG_ENOTFOUND);
    T_CHECK(store_job_transition(s, id, STORE_ANY, STORE_NSTATUS, NULL, NULL, err,
                                 sizeof err) == ENG_EINVAL);
    T_EQ(drive_to(s, id, STORE_RUNNING), 0);
    T_CHECK(store_job_transition(s, id, STORE_RUNNING, STORE_FAILED, NULL, NULL, err,
                                 sizeof err) == ENG_EINVAL); /* failed needs a reason */
    T_CHECK(store_job_transition(s, id, STORE_RUNNING, STORE_FAILED, "oom",
                                 "ran out of \"memory\"", err, sizeof err) == 0);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, id, &j, err, sizeof err) == 0);
    T_CHECK(j->status == STORE_FAILED && !strcmp(j->error_code, "oom"));
    T_CHECK(!strcmp(j->error_message, "ran out of \"memory\""));
    T_CHECK(j->started_at > 0 && j->finished_at >= j->started_at && j->updated_at > 0);
    store_job_free(j);
    store_events ev;
    T_REQUIRE(store_event_list(s, id, 0, 100, &ev, err, sizeof err) == 0);
    T_REQUIRE(ev.n == 4); /* created, queued, running, failed */
    char to[32];
    T_CHECK(!strcmp(ev.v[0].type, "status") && !strcmp(event_to(&ev.v[0], to, sizeof to),
                                                       "validating"));
    json_t *o = json_loads(ev.v[3].data_json, 0, NULL);
    T_CHECK(o && !strcmp(json_string_value(json_object_get(o, "from")), "running"));
    T_CHECK(o && !strcmp(json_string_value(json_object_get(o, "error_message")),
                         "ran out of \"memory\""));
    json_decref(o);
    store_events_free(&ev);
    store_close(s);
}

static void claim_order(void)
{
    store *s = open_db("claim.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[3][STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0);
    for (int i = 0; i < 3; i++) T_REQUIRE(make_job(s, ds, id[i]) == 0);
    store_job *j = NULL;
    T_CHECK(store_job_claim_next(s, &j, err, sizeof err) == 0 && j == NULL);
    /* Queued in the order 2, 0, 1: the oldest job still goes first. */
    int order[] = {2, 0, 1};
    for (int i = 0; i < 3; i++) T_REQUIRE(drive_to(s, id[order[i]], STORE_QUEUED) == 0);
    int64_t n = -1;
    T_CHECK(store_job_count(s, STORE_QUEUED, &n, err, sizeof err) == 0 && n == 3);
    for (int i = 0; i < 3; i++) {
        T_REQUIRE(store_job_claim_next(s, &j, err, sizeof err) == 0 && j);
        T_CHECK(!strcmp(j->id, id[i]) && j->status == STORE_RUNNING && j->started_at > 0);
        store_job_free(j);
    }
    T_CHECK(store_job_claim_next(s, &j, err, sizeof err) == 0 && j == NULL);
    T_CHECK(store_job_count(s, STORE_QUEUED, &n, err, sizeof err) == 0 && n == 0);
    T_CHECK(store_job_count(s, STORE_RUNNING, &n, err, sizeof err) == 0 && n == 3);
    T_CHECK(store_job_count(s, STORE_ANY, &n, err, sizeof err) == 0 && n == 3);
    store_close(s);
}

#define NCLAIM 60
typedef struct claimer {
    store *s;
    char got[NCLAIM][STORE_ID_MAX];
    int n, failed;
} claimer;

static void *claim_loop(void *arg)
{
    claimer *c = arg;
    char e[512];
    for (;;) {
        store_job *j = NULL;
        if (store_job_claim_next(c->s, &j, e, sizeof e)) {
            if (++c->failed > 100) break; /* give up rather than spin forever */
            continue;
        }
        if (!j) break;
        if (c->n < NCLAIM) snprintf(c->got[c->n], STORE_ID_MAX, "%s", j->id);
        c->n++;
        store_job_free(j);
    }
    return NULL;
}

static void claim_concurrent(void)
{
    /* Two connections (as two processes would have), two threads on each. */
    store *a = open_db("race.db"), *b = open_db("race.db");
    T_REQUIRE(a && b);
    char ds[STORE_ID_MAX], ids[NCLAIM][STORE_ID_MAX];
    T_REQUIRE(make_dataset(a, ds) == 0);
    for (int i = 0; i < NCLAIM; i++)
        T_REQUIRE(make_job(a, ds, ids[i]) == 0 && drive_to(a, ids[i], STORE_QUEUED) == 0);
    static claimer c[4];
    pthread_t th[4];
    memset(c, 0, sizeof c);
    for (int i = 0; i < 4; i++) {
        c[i].s = i < 2 ? a : b;
        T_REQUIRE(pthread_create(&th[i], NULL, claim_loop, &c[i]) == 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        T_EQ(c[i].failed, 0);
        total += c[i].n;
    }
    T_EQ(total, NCLAIM);
    for (int k = 0; k < NCLAIM; k++) {
        int seen = 0;
        for (int i = 0; i < 4; i++)
            for (int m = 0; m < c[i].n && m < NCLAIM; m++) seen += !strcmp(c[i].got[m], ids[k]);
        T_CHECKF(seen == 1, "job %d claimed %d times", k, seen);
    }
    int64_t n = -1;
    T_CHECK(store_job_count(b, STORE_RUNNING, &n, err, sizeof err) == 0 && n == NCLAIM);
    store_close(a);
    store_close(b);
}

static void recover_after_crash(void)
{
    store *s = open_db("recover.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], run[STORE_ID_MAX], cancel[STORE_ID_MAX], queued[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, run) == 0 &&
              make_job(s, ds, cancel) == 0 && make_job(s, ds, queued) == 0);
    T_REQUIRE(drive_to(s, run, STORE_RUNNING) == 0 && drive_to(s, cancel, STORE_RUNNING) == 0);
    T_REQUIRE(drive_to(s, queued, STORE_QUEUED) == 0);
    store_progress p = store_progress_none();
    p.step = 17;
    T_REQUIRE(store_job_progress(s, run, &p, NULL, err, sizeof err) == 0);
    T_REQUIRE(store_job_request_cancel(s, cancel, NULL, err, sizeof err) == 0);
    store_close(s); /* the process "dies" with two jobs running */
    s = open_db("recover.db");
    T_REQUIRE(s);
    T_EQ(store_recover(s, err, sizeof err), 2);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, run, &j, err, sizeof err) == 0);
    T_CHECK(j->status == STORE_QUEUED && j->step == 17 && !j->cancel_requested);
    T_CHECK(j->finished_at == 0 && j->started_at > 0);
    store_job_free(j);
    T_EQ(status_of(s, cancel), STORE_CANCELLED);
    T_EQ(status_of(s, queued), STORE_QUEUED);
    store_events ev;
    T_REQUIRE(store_event_list(s, run, 0, 100, &ev, err, sizeof err) == 0 && ev.n > 0);
    const store_event *last = &ev.v[ev.n - 1];
    char to[32];
    T_CHECK(!strcmp(last->type, "status") && !strcmp(event_to(last, to, sizeof to), "queued"));
    T_CHECK(last->data_json && strstr(last->data_json, "requeued after restart"));
    T_CHECK(last->step == 17);
    store_events_free(&ev);
    T_EQ(store_recover(s, err, sizeof err), 0);
    /* The requeued job is claimed again before the younger one. */
    T_REQUIRE(store_job_claim_next(s, &j, err, sizeof err) == 0 && j);
    T_CHECK(!strcmp(j->id, run));
    store_job_free(j);
    store_close(s);
}

static void cancel_and_progress(void)
{
    store *s = open_db("cancel.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], v[STORE_ID_MAX], q[STORE_ID_MAX], r[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, v) == 0 && make_job(s, ds, q) == 0 &&
              make_job(s, ds, r) == 0);
    T_REQUIRE(drive_to(s, q, STORE_QUEUED) == 0 && drive_to(s, r, STORE_RUNNING) == 0);
    store_status now = STORE_ANY;
    T_CHECK(store_job_request_cancel(s, v, &now, err, sizeof err) == 0 && now == STORE_CANCELLED);
    T_CHECK(store_job_request_cancel(s, q, &now, err, sizeof err) == 0 && now == STORE_CANCELLED);
    T_CHECK(status_of(s, v) == STORE_CANCELLED && status_of(s, q) == STORE_CANCELLED);
    /* The validator finishing late loses the race cleanly. */
    T_CHECK(store_job_transition(s, v, STORE_VALIDATING, STORE_QUEUED, NULL, NULL, err,
                                 sizeof err) == STORE_ECONFLICT);
    int yes = -1, cancel = -1;
    store_progress p = store_progress_none();
    p.step = 5;
    p.total_steps = 100;
    p.train_loss = 1.5;
    p.images_per_sec = 42;
    T_CHECK(store_job_progress(s, r, &p, &cancel, err, sizeof err) == 0 && cancel == 0);
    T_CHECK(store_job_cancel_requested(s, r, &yes, err, sizeof err) == 0 && yes == 0);
    T_CHECK(store_job_request_cancel(s, r, &now, err, sizeof err) == 0 && now == STORE_RUNNING);
    T_CHECK(store_job_cancel_requested(s, r, &yes, err, sizeof err) == 0 && yes == 1);
    p = store_progress_none();
    p.step = 6;
    p.val_top1 = 0.75;
    T_CHECK(store_job_progress(s, r, &p, &cancel, err, sizeof err) == 0 && cancel == 1);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, r, &j, err, sizeof err) == 0);
    T_CHECK(j->step == 6 && j->total_steps == 100 && j->train_loss == 1.5);
    T_CHECK(j->images_per_sec == 42 && j->val_top1 == 0.75 && isnan(j->val_top5));
    T_CHECK(isnan(j->val_loss) && j->cancel_requested == 1);
    store_job_free(j);
    T_CHECK(store_job_transition(s, r, STORE_RUNNING, STORE_CANCELLED, NULL, NULL, err,
                                 sizeof err) == 0);
    T_EQ(store_job_progress(s, r, &p, NULL, err, sizeof err), STORE_ECONFLICT);
    T_EQ(store_job_request_cancel(s, r, &now, err, sizeof err), STORE_ECONFLICT);
    T_CHECK(store_job_progress(s, "job_ffffffffffffffff", &p, NULL, err, sizeof err) ==
            ENG_ENOTFOUND);
    T_CHECK(store_job_cancel_requested(s, "job_ffffffffffffffff", &yes, err, sizeof err) ==
            ENG_ENOTFOUND);
    store_close(s);
}

/* A stopping server parks its running job: back to the queue, unless a cancel came in
 * meanwhile (the worker may not have seen the flag yet), which must not be lost. */
static void park_running_keeps_cancel(void)
{
    store *s = open_db("park.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], a[STORE_ID_MAX], b[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, a) == 0 && make_job(s, ds, b) == 0);
    T_REQUIRE(drive_to(s, a, STORE_RUNNING) == 0 && drive_to(s, b, STORE_RUNNING) == 0);
    store_status now = STORE_ANY;
    T_REQUIRE(store_job_request_cancel(s, b, &now, err, sizeof err) == 0 && now == STORE_RUNNING);
    T_CHECK(store_job_park_running(s, a, &now, err, sizeof err) == 0 && now == STORE_QUEUED);
    T_CHECK(store_job_park_running(s, b, &now, err, sizeof err) == 0 && now == STORE_CANCELLED);
    T_CHECK(status_of(s, a) == STORE_QUEUED && status_of(s, b) == STORE_CANCELLED);
    int yes = -1;
    T_CHECK(store_job_cancel_requested(s, a, &yes, err, sizeof err) == 0 && yes == 0);
    /* Only a running job can be parked. */
    T_EQ(store_job_park_running(s, a, &now, err, sizeof err), STORE_ECONFLICT);
    T_EQ(store_job_park_running(s, b, &now, err, sizeof err), STORE_ECONFLICT);
    T_EQ(store_job_park_running(s, "job_ffffffffffffffff", &now, err, sizeof err), ENG_ENOTFOUND);
    store_close(s);
}

static void events_paging(void)
{
    store *s = open_db("events.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX], other[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0 && make_job(s, ds, other) == 0);
    int64_t seq = 0;
    for (int i = 0; i < 9; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"loss\": %d}", i);
        T_REQUIRE(store_event_add(s, id, "train", i * 10, data, &seq, err, sizeof err) == 0);
        T_EQ(seq, i + 2); /* seq 1 is the creation event */
    }
    T_CHECK(store_event_add(s, other, "eval", -1, NULL, &seq, err, sizeof err) == 0 && seq == 2);
    store_events ev;
    int64_t after = 0, expect = 1;
    int pages = 0;
    do {
        T_REQUIRE(store_event_list(s, id, after, 4, &ev, err, sizeof err) == 0);
        for (size_t i = 0; i < ev.n; i++) T_CHECK(ev.v[i].seq == expect++);
        after = ev.n ? ev.v[ev.n - 1].seq : after;
        int more = ev.more;
        T_EQ(ev.n, (pages < 2 ? 4u : 2u));
        store_events_free(&ev);
        pages++;
        if (!more) break;
    } while (pages < 10);
    T_CHECK(pages == 3 && expect == 11);
    T_REQUIRE(store_event_list(s, id, 5, 1, &ev, err, sizeof err) == 0 && ev.n == 1);
    T_CHECK(ev.v[0].seq == 6 && ev.v[0].step == 40 && !strcmp(ev.v[0].type, "train"));
    T_CHECK(!strcmp(ev.v[0].data_json, "{\"loss\": 4}") && ev.v[0].time > 0);
    store_events_free(&ev);
    T_REQUIRE(store_event_list(s, other, 1, 10, &ev, err, sizeof err) == 0 && ev.n == 1);
    T_CHECK(ev.v[0].step == -1 && ev.v[0].data_json == NULL && !ev.more);
    store_events_free(&ev);
    T_CHECK(store_event_list(s, id, 10, 10, &ev, err, sizeof err) == 0 && ev.n == 0 && !ev.more);
    store_events_free(&ev); /* an empty page is still the caller's to free */
    T_CHECK(store_event_list(s, "job_0123456789abcdef", 0, 10, &ev, err, sizeof err) ==
            ENG_ENOTFOUND);
    T_EQ(store_event_list(s, id, 0, 0, &ev, err, sizeof err), ENG_EINVAL);
    T_CHECK(store_event_add(s, "job_0123456789abcdef", "train", 1, NULL, NULL, err, sizeof err) ==
            ENG_ENOTFOUND);
    T_CHECK(store_event_add(s, id, "train", 1, "{nope", NULL, err, sizeof err) == ENG_EINVAL);
    T_CHECK(store_event_add(s, id, "", 1, NULL, NULL, err, sizeof err) == ENG_EINVAL);
    store_close(s);
}

static void job_list_paging(void)
{
    store *s = open_db("list.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[10][STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0);
    for (int i = 0; i < 10; i++) {
        T_REQUIRE(make_job(s, ds, id[i]) == 0);
        if (i % 2 == 0) T_REQUIRE(drive_to(s, id[i], STORE_QUEUED) == 0);
    }
    /* All jobs, pages of 3, newest first; a job deleted mid-way does not disturb the cursor. */
    store_jobs l;
    int64_t after = 0;
    int next = 9, pages = 0, more;
    do {
        T_REQUIRE(store_job_list(s, STORE_ANY, after, 3, &l, err, sizeof err) == 0);
        for (size_t i = 0; i < l.n; i++) {
            if (next == 5) next--; /* deleted below, after the first page */
            T_CHECKF(next >= 0 && !strcmp(l.v[i].id, id[next]), "page %d item %zu", pages, i);
            next--;
        }
        after = l.n ? l.v[l.n - 1].seq : after;
        more = l.more;
        store_jobs_free(&l);
        if (pages++ == 0) {
            T_REQUIRE(drive_to(s, id[5], STORE_CANCELLED) == 0);
            T_REQUIRE(store_job_delete(s, id[5], err, sizeof err) == 0);
        }
    } while (more && pages < 10);
    T_CHECK(next == -1 && pages == 3);
    /* Only queued ones: 8, 6, 4, 2, 0. */
    T_REQUIRE(store_job_list(s, STORE_QUEUED, 0, 4, &l, err, sizeof err) == 0);
    T_CHECK(l.n == 4 && l.more && !strcmp(l.v[0].id, id[8]) && !strcmp(l.v[3].id, id[2]));
    T_CHECK(l.v[0].status == STORE_QUEUED && !strcmp(l.v[0].params_json, "{\"lr\": 0.003}"));
    after = l.v[3].seq;
    store_jobs_free(&l);
    T_REQUIRE(store_job_list(s, STORE_QUEUED, after, 4, &l, err, sizeof err) == 0);
    T_CHECK(l.n == 1 && !l.more && !strcmp(l.v[0].id, id[0]));
    store_jobs_free(&l);
    T_EQ(store_job_list(s, STORE_ANY, 0, 0, &l, err, sizeof err), ENG_EINVAL);
    T_EQ(store_job_list(s, STORE_ANY, 0, STORE_LIST_MAX + 1, &l, err, sizeof err), ENG_EINVAL);
    store_close(s);
}

static void dataset_delete_rules(void)
{
    store *s = open_db("dsdel.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], a[STORE_ID_MAX], b[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, a) == 0 && make_job(s, ds, b) == 0);
    T_EQ(store_dataset_delete(s, ds, err, sizeof err), STORE_EINUSE); /* validating */
    T_REQUIRE(drive_to(s, a, STORE_QUEUED) == 0 && drive_to(s, b, STORE_RUNNING) == 0);
    T_EQ(store_dataset_delete(s, ds, err, sizeof err), STORE_EINUSE);
    T_CHECK(strstr(err, "2 unfinished jobs") != NULL);
    T_REQUIRE(store_job_transition(s, a, STORE_QUEUED, STORE_CANCELLED, NULL, NULL, err,
                                   sizeof err) == 0);
    T_EQ(store_dataset_delete(s, ds, err, sizeof err), STORE_EINUSE); /* b still runs */
    T_REQUIRE(store_job_transition(s, b, STORE_RUNNING, STORE_SUCCEEDED, NULL, NULL, err,
                                   sizeof err) == 0);
    store_dataset *d = NULL;
    T_CHECK(store_dataset_get(s, ds, &d, err, sizeof err) == 0 && d);
    store_dataset_free(d);
    T_EQ(store_dataset_delete(s, ds, err, sizeof err), 0);
    /* a deleted dataset is remembered: referring to it later says so, not "not found" */
    T_CHECK(store_dataset_get(s, ds, &d, err, sizeof err) == ENG_ENOTFOUND && !d);
    T_CHECKF(strstr(err, "was deleted at 20") && strstr(err, ds), "%s", err);
    T_EQ(store_dataset_delete(s, ds, err, sizeof err), ENG_ENOTFOUND);
    T_CHECKF(strstr(err, "was deleted"), "%s", err);
    T_CHECK(store_dataset_get(s, "ds_00000000000000ff", &d, err, sizeof err) == ENG_ENOTFOUND &&
            strstr(err, "not found"));
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, b, &j, err, sizeof err) == 0);
    T_CHECK(j->dataset_id == NULL && j->status == STORE_SUCCEEDED); /* history kept */
    store_job_free(j);
    char c[STORE_ID_MAX];
    T_EQ(make_job(s, ds, c), ENG_ENOTFOUND); /* no jobs on a deleted dataset */
    T_EQ(store_integrity_check(s, err, sizeof err), 0);
    store_close(s);
}

static void datasets_crud(void)
{
    store *s = open_db("ds.db");
    T_REQUIRE(s);
    char id1[STORE_ID_MAX], id2[STORE_ID_MAX], given[STORE_ID_MAX];
    T_REQUIRE(store_id_new("ds", given, err, sizeof err) == 0);
    store_dataset_new d = {.id = given, .name = "a", .status = "importing", .path = "p/a"};
    T_REQUIRE(store_dataset_create(s, &d, id1, err, sizeof err) == 0 && !strcmp(id1, given));
    T_EQ(store_dataset_create(s, &d, id2, err, sizeof err), STORE_EEXISTS);
    d.id = "ds_../../etc";
    T_EQ(store_dataset_create(s, &d, id2, err, sizeof err), ENG_EINVAL);
    d.id = NULL;
    d.summary_json = "{broken";
    T_EQ(store_dataset_create(s, &d, id2, err, sizeof err), ENG_EINVAL);
    d.summary_json = NULL;
    d.name = "b";
    T_REQUIRE(store_dataset_create(s, &d, id2, err, sizeof err) == 0 && strncmp(id2, "ds_", 3) == 0);
    T_CHECK(store_dataset_update(s, id1, "ready", "{\"images\": 10}", 999, err, sizeof err) == 0);
    T_EQ(store_dataset_update(s, id1, NULL, NULL, -1, err, sizeof err), 0);
    T_CHECK(store_dataset_update(s, "ds_0000000000000000", "ready", NULL, -1, err, sizeof err) ==
            ENG_ENOTFOUND);
    store_dataset *g = NULL;
    T_REQUIRE(store_dataset_get(s, id1, &g, err, sizeof err) == 0);
    T_CHECK(!strcmp(g->status, "ready") && !strcmp(g->summary_json, "{\"images\": 10}"));
    T_CHECK(g->bytes == 999 && !strcmp(g->name, "a") && !strcmp(g->path, "p/a") && g->created_at > 0);
    store_dataset_free(g);
    store_datasets l;
    T_REQUIRE(store_dataset_list(s, &l, err, sizeof err) == 0);
    T_CHECK(l.n == 2 && !strcmp(l.v[0].id, id2) && !strcmp(l.v[1].id, id1)); /* newest first */
    store_datasets_free(&l);
    /* names need not be unique: by name, every dataset that has it, newest first */
    char id3[STORE_ID_MAX];
    T_REQUIRE(store_dataset_create(s, &d, id3, err, sizeof err) == 0); /* a second "b" */
    T_REQUIRE(store_dataset_list_named(s, "b", &l, err, sizeof err) == 0);
    T_CHECK(l.n == 2 && !strcmp(l.v[0].id, id3) && !strcmp(l.v[1].id, id2));
    store_datasets_free(&l);
    T_REQUIRE(store_dataset_list_named(s, "a", &l, err, sizeof err) == 0);
    T_CHECK(l.n == 1 && !strcmp(l.v[0].id, id1));
    store_datasets_free(&l);
    T_CHECK(store_dataset_list_named(s, "nothing", &l, err, sizeof err) == 0 && l.n == 0);
    T_EQ(store_dataset_list_named(s, NULL, &l, err, sizeof err), ENG_EINVAL);
    store_close(s);
}

static void jobs_and_events_cascade(void)
{
    store *s = open_db("cascade.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0);
    for (int i = 0; i < 5; i++)
        T_REQUIRE(store_event_add(s, id, "train", i, NULL, NULL, err, sizeof err) == 0);
    T_REQUIRE(drive_to(s, id, STORE_RUNNING) == 0);
    T_EQ(store_job_delete(s, id, err, sizeof err), STORE_EINUSE);
    T_CHECK(raw_int(s, "SELECT COUNT(*) FROM job_events") == 8);
    T_REQUIRE(store_job_transition(s, id, STORE_RUNNING, STORE_FAILED, "x", NULL, err,
                                   sizeof err) == 0);
    T_EQ(store_job_delete(s, id, err, sizeof err), 0);
    T_CHECK(raw_int(s, "SELECT COUNT(*) FROM job_events") == 0);
    store_job *j = NULL;
    T_CHECK(store_job_get(s, id, &j, err, sizeof err) == ENG_ENOTFOUND && !j);
    T_EQ(store_job_delete(s, id, err, sizeof err), ENG_ENOTFOUND);
    /* Bad inputs are refused before anything is written. */
    store_job_new bad = {.name = "n", .dataset_id = ds, .base_model = "m", .params_json = "[1,"};
    char nid[STORE_ID_MAX];
    T_EQ(store_job_create(s, &bad, nid, err, sizeof err), ENG_EINVAL);
    bad.params_json = "{}";
    bad.name = "";
    T_EQ(store_job_create(s, &bad, nid, err, sizeof err), ENG_EINVAL);
    T_CHECK(raw_int(s, "SELECT COUNT(*) FROM jobs") == 0);
    store_close(s);
}

/* One name space: a job may not take a model's name, nor that of another unfinished job; a
 * finished job's name is free again. Created with resolved values, a job starts queued. */
static void job_names_and_queued_creation(void)
{
    store *s = open_db("names.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], a[STORE_ID_MAX], b[STORE_ID_MAX], m[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0);
    store_model_new mn = {.name = "taken", .kind = "base", .path = "models/taken.npz"};
    T_REQUIRE(store_model_create(s, &mn, m, err, sizeof err) == 0);
    store_job_new j = {.name = "taken", .dataset_id = ds, .base_model = "x", .params_json = "{}",
                       .resolved_json = "{\"steps\": 7}", .total_steps = 7};
    T_EQ(store_job_create(s, &j, a, err, sizeof err), STORE_EEXISTS);
    T_CHECK(strstr(err, "taken") != NULL);
    j.name = "mine";
    T_REQ_EQ(store_job_create(s, &j, a, err, sizeof err), 0);
    T_EQ(status_of(s, a), STORE_QUEUED);
    store_job *got = NULL;
    T_REQ_EQ(store_job_get(s, a, &got, err, sizeof err), 0);
    T_EQ(got->total_steps, 7);
    T_STREQ(got->resolved_json, "{\"steps\": 7}");
    store_job_free(got);
    T_EQ(store_job_create(s, &j, b, err, sizeof err), STORE_EEXISTS);
    T_EQ(store_job_transition(s, a, STORE_QUEUED, STORE_CANCELLED, NULL, NULL, err, sizeof err), 0);
    T_EQ(store_job_create(s, &j, b, err, sizeof err), 0);
    j.resolved_json = "not json";
    j.name = "other";
    T_EQ(store_job_create(s, &j, b, err, sizeof err), ENG_EINVAL);
    store_close(s);
}

/* A cancel accepted while the job finishes wins over its success: no model, and the job
 * can then only end cancelled. */
static void cancel_beats_success(void)
{
    store *s = open_db("cancelwins.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX], m[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0 && drive_to(s, id, STORE_RUNNING) == 0);
    store_status now;
    T_REQ_EQ(store_job_request_cancel(s, id, &now, err, sizeof err), 0);
    T_EQ(now, STORE_RUNNING);
    store_model_new mn = {.name = "late", .kind = "fine-tuned", .path = "jobs/x/model.npz"};
    T_EQ(store_job_succeed(s, id, &mn, m, err, sizeof err), STORE_ECONFLICT);
    store_model *got = NULL;
    T_EQ(store_model_get_by_name(s, "late", &got, err, sizeof err), ENG_ENOTFOUND);
    T_EQ(status_of(s, id), STORE_RUNNING);
    T_EQ(store_job_transition(s, id, STORE_RUNNING, STORE_CANCELLED, NULL, NULL, err, sizeof err), 0);
    store_close(s);
}

static void models(void)
{
    store *s = open_db("models.db");
    T_REQUIRE(s);
    char base[STORE_ID_MAX], ds[STORE_ID_MAX], job[STORE_ID_MAX], tuned[STORE_ID_MAX], x[STORE_ID_MAX];
    store_model_new m = {.name = "BiT-M-R50x1", .kind = "base", .path = "models/r50.npz",
                         .architecture = "R50x1", .resolution = 224, .bytes = 100};
    T_REQUIRE(store_model_create(s, &m, base, err, sizeof err) == 0);
    T_EQ(store_model_create(s, &m, x, err, sizeof err), STORE_EEXISTS); /* same name */
    m.kind = "tuned";
    m.name = "other";
    T_EQ(store_model_create(s, &m, x, err, sizeof err), ENG_EINVAL);
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, job) == 0);
    store_model_new out = {.name = "flowers-r50", .kind = "fine-tuned", .path = "models/f.npz",
                           .classes_json = "[\"daisy\", \"rose\"]", .resolution = 128};
    /* Not running yet: no model is left behind by the refused hand-over. */
    T_EQ(store_job_succeed(s, job, &out, tuned, err, sizeof err), STORE_ECONFLICT);
    store_model *g = NULL;
    T_CHECK(store_model_get_by_name(s, "flowers-r50", &g, err, sizeof err) == ENG_ENOTFOUND);
    T_REQUIRE(drive_to(s, job, STORE_RUNNING) == 0);
    T_EQ(store_model_delete(s, base, err, sizeof err), STORE_EINUSE); /* base of a live job */
    T_REQUIRE(store_job_succeed(s, job, &out, tuned, err, sizeof err) == 0);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, job, &j, err, sizeof err) == 0);
    T_CHECK(j->status == STORE_SUCCEEDED && j->model_id && !strcmp(j->model_id, tuned));
    store_job_free(j);
    T_REQUIRE(store_model_get(s, tuned, &g, err, sizeof err) == 0);
    T_CHECK(!strcmp(g->kind, "fine-tuned") && !strcmp(g->job_id, job) && g->resolution == 128);
    T_CHECK(!strcmp(g->classes_json, "[\"daisy\", \"rose\"]") && g->architecture == NULL);
    store_model_free(g);
    store_models l;
    T_REQUIRE(store_model_list(s, NULL, &l, err, sizeof err) == 0);
    T_CHECK(l.n == 2 && !strcmp(l.v[0].id, tuned));
    store_models_free(&l);
    T_REQUIRE(store_model_list(s, "base", &l, err, sizeof err) == 0);
    T_CHECK(l.n == 1 && !strcmp(l.v[0].name, "BiT-M-R50x1") && l.v[0].bytes == 100);
    store_models_free(&l);
    T_EQ(store_model_delete(s, base, err, sizeof err), 0);
    T_EQ(store_model_delete(s, tuned, err, sizeof err), 0);
    T_REQUIRE(store_job_get(s, job, &j, err, sizeof err) == 0);
    T_CHECK(j->model_id == NULL); /* the job's record outlives its model */
    store_job_free(j);
    T_EQ(store_model_delete(s, tuned, err, sizeof err), ENG_ENOTFOUND);
    T_EQ(store_integrity_check(s, err, sizeof err), 0);
    store_close(s);
}

static void migrate_from_v1(void)
{
    /* A database as the first schema left it, with rows in it. */
    sqlite3 *db = NULL;
    T_REQUIRE(sqlite3_open(db_path("v1.db"), &db) == SQLITE_OK);
    T_REQUIRE(st_migrate(db, 1, err, sizeof err) == 0);
    const char *rows =
        "INSERT INTO datasets VALUES ('ds_00000000000000aa', 'old', 5, 'ready', NULL, 'p', 7);"
        "INSERT INTO jobs (id, name, dataset_id, base_model, params_json, status, created_at,"
        " updated_at) VALUES ('job_00000000000000bb', 'j', 'ds_00000000000000aa', 'm', '{}',"
        " 'queued', 5, 5);"
        "INSERT INTO job_events VALUES ('job_00000000000000bb', 1, 5, 'status', NULL, NULL);";
    T_REQUIRE(sqlite3_exec(db, rows, NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_stmt *st = NULL;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    T_CHECK(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    store *s = open_db("v1.db");
    T_REQUIRE(s);
    T_CHECK(raw_int(s, "PRAGMA user_version") == store_schema_version());
    T_CHECK(raw_int(s, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index'"
                       " AND name = 'jobs_status'") == 1);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, "job_00000000000000bb", &j, err, sizeof err) == 0);
    T_CHECK(j->status == STORE_QUEUED && !strcmp(j->dataset_id, "ds_00000000000000aa"));
    store_job_free(j);
    T_CHECK(event_count(s, "job_00000000000000bb") == 1);
    T_CHECK(store_job_claim_next(s, &j, err, sizeof err) == 0 && j);
    store_job_free(j);
    T_EQ(store_integrity_check(s, err, sizeof err), 0);
    store_close(s);
    T_EQ(st_migrate(NULL, 99, err, sizeof err), ENG_EINVAL);
}

static void refuse_newer_and_garbage(void)
{
    sqlite3 *db = NULL;
    T_REQUIRE(sqlite3_open(db_path("future.db"), &db) == SQLITE_OK);
    T_REQUIRE(sqlite3_exec(db, "CREATE TABLE x (a); PRAGMA user_version = 99", NULL, NULL,
                           NULL) == SQLITE_OK);
    sqlite3_close(db);
    store *s = NULL;
    T_CHECK(store_open(db_path("future.db"), &s, err, sizeof err) == ENG_EUNSUPPORTED && !s);
    T_CHECK(strstr(err, "newer") && strstr(err, "99") && strstr(err, "future.db"));
    FILE *f = fopen(db_path("garbage.db"), "wb");
    T_REQUIRE(f);
    for (int i = 0; i < 4096; i++) fputc("not a database "[i % 15], f);
    fclose(f);
    T_CHECK(store_open(db_path("garbage.db"), &s, err, sizeof err) == ENG_EFORMAT && !s);
    T_CHECK(store_open("/nonexistent-dir/x/y.db", &s, err, sizeof err) < 0 && !s && err[0]);
    T_CHECK(store_open("", &s, err, sizeof err) == ENG_EINVAL);
}

static void reopen_persists(void)
{
    store *s = open_db("persist.db");
    T_REQUIRE(s);
    char ds[STORE_ID_MAX], id[STORE_ID_MAX];
    T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0);
    T_REQUIRE(store_job_set_resolved(s, id, "{\"steps\": 500}", 500, err, sizeof err) == 0);
    T_REQUIRE(drive_to(s, id, STORE_RUNNING) == 0);
    T_CHECK(store_job_set_resolved(s, id, "{}", 1, err, sizeof err) == STORE_ECONFLICT);
    store_progress p = store_progress_none();
    p.step = 250;
    p.val_top5 = 0.9;
    T_REQUIRE(store_job_progress(s, id, &p, NULL, err, sizeof err) == 0);
    store_close(s);
    s = open_db("persist.db");
    T_REQUIRE(s);
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, id, &j, err, sizeof err) == 0);
    T_CHECK(j->status == STORE_RUNNING && j->step == 250 && j->total_steps == 500);
    T_CHECK(j->val_top5 == 0.9 && !strcmp(j->resolved_json, "{\"steps\": 500}"));
    T_CHECK(!strcmp(j->dataset_id, ds) && !strcmp(j->base_model, "BiT-M-R50x1"));
    store_job_free(j);
    T_EQ(event_count(s, id), 3);
    store_close(s);
}

/* ---- a writer killed at a random moment ---- */

static void crash_child(const char *path, const char *id, int ready_fd)
{
    store *s = NULL;
    char e[512];
    if (store_open(path, &s, e, sizeof e)) _exit(3);
    for (int64_t i = 1;; i++) {
        store_progress p = store_progress_none();
        p.step = i;
        if (store_job_transition(s, id, STORE_QUEUED, STORE_RUNNING, NULL, NULL, e, sizeof e) ||
            store_job_progress(s, id, &p, NULL, e, sizeof e) ||
            store_event_add(s, id, "train", i, "{\"loss\": 0.5}", NULL, e, sizeof e) ||
            store_job_transition(s, id, STORE_RUNNING, STORE_QUEUED, NULL, NULL, e, sizeof e))
            _exit(4);
        if (i == 3 && write(ready_fd, "r", 1) != 1) _exit(5);
    }
}

/* What every committed state must satisfy: events numbered 1..n without gaps, the job's
 * status equal to the last status event's "to", step at most one ahead of the last event. */
static void crash_check(store *s, const char *id)
{
    store_job *j = NULL;
    T_REQUIRE(store_job_get(s, id, &j, err, sizeof err) == 0);
    int64_t last_train = 0, expect = 1;
    char to[32] = "";
    store_events ev = {0};
    do {
        int64_t after = expect - 1;
        store_events_free(&ev);
        T_REQUIRE(store_event_list(s, id, after, STORE_LIST_MAX, &ev, err, sizeof err) == 0);
        for (size_t i = 0; i < ev.n; i++) {
            T_EQ(ev.v[i].seq, expect++);
            if (!strcmp(ev.v[i].type, "train")) last_train = ev.v[i].step;
            if (!strcmp(ev.v[i].type, "status")) event_to(&ev.v[i], to, sizeof to);
        }
    } while (ev.more);
    store_events_free(&ev);
    T_CHECKF(!strcmp(to, store_status_name(j->status)), "last status event %s, job %s", to,
             store_status_name(j->status));
    T_CHECKF(j->step == last_train || j->step == last_train + 1, "step %lld, last event %lld",
             (long long)j->step, (long long)last_train);
    T_CHECK(last_train >= 3);
    store_job_free(j);
}

static void crash_kill9(void)
{
    for (int round = 0; round < 8; round++) {
        char name[32];
        snprintf(name, sizeof name, "crash%d.db", round);
        store *s = open_db(name);
        T_REQUIRE(s);
        char ds[STORE_ID_MAX], id[STORE_ID_MAX];
        T_REQUIRE(make_dataset(s, ds) == 0 && make_job(s, ds, id) == 0 &&
                  drive_to(s, id, STORE_QUEUED) == 0);
        store_close(s); /* no connection crosses the fork */
        int fds[2];
        T_REQUIRE(pipe(fds) == 0);
        pid_t pid = fork();
        T_REQUIRE(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(db_path(name), id, fds[1]);
        }
        close(fds[1]);
        char c;
        ssize_t got = read(fds[0], &c, 1); /* the child has committed a few rounds */
        close(fds[0]);
        struct timespec ts = {0, (long)(round * 23 + 3) * 1000000L};
        if (got == 1) nanosleep(&ts, NULL);
        kill(pid, SIGKILL); /* before any check can return and leave the child looping */
        int wst = 0;
        T_REQUIRE(waitpid(pid, &wst, 0) == pid);
        T_REQUIRE(got == 1);
        T_CHECKF(WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "child status %d", wst);
        s = open_db(name);
        T_REQUIRE(s);
        T_CHECKF(store_integrity_check(s, err, sizeof err) == 0, "%s", err);
        crash_check(s, id);
        int moved = store_recover(s, err, sizeof err);
        T_CHECK(moved == 0 || moved == 1);
        T_EQ(status_of(s, id), STORE_QUEUED);
        crash_check(s, id);
        store_close(s);
    }
}

int main(void)
{
    T_RUN(open_fresh_pragmas);
    T_RUN(ids_and_times);
    T_RUN(transitions_all_pairs);
    T_RUN(transition_details);
    T_RUN(claim_order);
    T_RUN(claim_concurrent);
    T_RUN(recover_after_crash);
    T_RUN(cancel_and_progress);
    T_RUN(park_running_keeps_cancel);
    T_RUN(events_paging);
    T_RUN(job_list_paging);
    T_RUN(dataset_delete_rules);
    T_RUN(datasets_crud);
    T_RUN(jobs_and_events_cascade);
    T_RUN(job_names_and_queued_creation);
    T_RUN(cancel_beats_success);
    T_RUN(models);
    T_RUN(migrate_from_v1);
    T_RUN(refuse_newer_and_garbage);
    T_RUN(reopen_persists);
    T_RUN(crash_kill9);
    return t_done();
}

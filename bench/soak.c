/* soak: runs `bit serve` under mixed load for a while and checks it neither errs nor grows.
 * Classify clients, dataset uploads (valid and hostile), job creation, cancellation and jobs
 * running to completion; samples the server's RSS and open descriptors. Prints a JSON report
 * and exits 1 on any 5xx, unexpected status, crash, or RSS/fd growth. Never a unit test. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "npz.h"
#include "tests/thttp.h"
#include "tests/tserve.h"

enum { EP_CLASSIFY, EP_UPLOAD, EP_HOSTILE, EP_JOB, EP_POLL, EP_CANCEL, EP_DELETE, EP_N };
static const char *ep_names[] = {"classify", "upload", "upload_hostile", "job_create",
                                 "job_poll", "job_cancel", "delete"};

typedef struct stats {
    pthread_mutex_t mu;
    double *lat[EP_N];
    size_t n[EP_N], cap[EP_N];
    long by_status[EP_N][6]; /* 1xx..5xx, and -1 (connection failed) at [0] */
    long unexpected;
} stats;

typedef struct soak {
    int port;
    double until;
    const char *image, *dataset, *hostile;
    void *img, *ds, *evil;
    size_t img_len, ds_len, evil_len;
    stats st;
    atomic_int stop;
} soak;

static void record(soak *s, int ep, double ms, int status, int expected)
{
    stats *st = &s->st;
    pthread_mutex_lock(&st->mu);
    if (st->n[ep] == st->cap[ep]) {
        st->cap[ep] = st->cap[ep] ? 2 * st->cap[ep] : 1024;
        st->lat[ep] = realloc(st->lat[ep], sizeof(double) * st->cap[ep]);
    }
    st->lat[ep][st->n[ep]++] = ms;
    st->by_status[ep][status > 0 ? status / 100 : 0]++;
    if (status != expected) st->unexpected++;
    pthread_mutex_unlock(&st->mu);
}

/* One timed request; returns the parsed JSON body (or NULL). */
static json_t *req(soak *s, int ep, int expected, const char *method, const char *path,
                   const char *hdr, const void *body, size_t len, int *status)
{
    th_resp r;
    double t0 = (eng_now_ms() / 1e3);
    int rc = th_request(s->port, method, path, hdr, body, len, &r);
    *status = rc ? -1 : r.status;
    record(s, ep, ((eng_now_ms() / 1e3) - t0) * 1e3, *status, expected);
    json_t *j = rc ? NULL : json_loads(r.body, 0, NULL);
    if (!rc) th_free(&r);
    return j;
}

static void *classify_client(void *ud)
{
    soak *s = ud;
    int st;
    while (!s->stop && (eng_now_ms() / 1e3) < s->until) {
        json_t *j = req(s, EP_CLASSIFY, 200, "POST", "/v1/models/tiny/classify?top_k=3",
                        "Content-Type: image/jpeg\r\n", s->img, s->img_len, &st);
        json_decref(j);
    }
    return NULL;
}

static void *uploader(void *ud)
{
    soak *s = ud;
    int st;
    while (!s->stop && (eng_now_ms() / 1e3) < s->until) {
        json_t *j = req(s, EP_UPLOAD, 201, "POST", "/v1/datasets?format=npz",
                        "Content-Type: application/octet-stream\r\n", s->ds, s->ds_len, &st);
        const char *id = json_string_value(json_object_get(j, "id"));
        if (id) {
            char p[128];
            snprintf(p, sizeof p, "/v1/datasets/%s", id);
            json_decref(req(s, EP_DELETE, 200, "DELETE", p, NULL, NULL, 0, &st));
        }
        json_decref(j);
        json_decref(req(s, EP_HOSTILE, 422, "POST", "/v1/datasets", "Content-Type: application/x-tar\r\n",
                        s->evil, s->evil_len, &st));
        usleep(500000);
    }
    return NULL;
}

static const char *job_dataset; /* uploaded once, used by every job */

static json_t *poll_until_done(soak *s, const char *id)
{
    char p[128];
    int st;
    snprintf(p, sizeof p, "/v1/jobs/%s", id);
    for (;;) {
        json_t *j = req(s, EP_POLL, 200, "GET", p, NULL, NULL, 0, &st);
        const char *now = json_string_value(json_object_get(j, "status"));
        if (!now || s->stop || (strcmp(now, "queued") && strcmp(now, "running") && strcmp(now, "validating")))
            return j;
        json_decref(j);
        usleep(100000);
    }
}

static void *job_client(void *ud)
{
    soak *s = ud;
    char body[512], p[160];
    int st;
    snprintf(body, sizeof body, "{\"dataset\": \"%s\", \"base_model\": \"tiny\", "
                                "\"hyperparameters\": {\"steps\": 20, \"batch\": 6}}", job_dataset);
    for (long k = 0; !s->stop && (eng_now_ms() / 1e3) < s->until; k++) {
        json_t *j = req(s, EP_JOB, 201, "POST", "/v1/jobs", "Content-Type: application/json\r\n",
                        body, strlen(body), &st);
        char id[64] = "";
        if (json_string_value(json_object_get(j, "id")))
            snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
        json_decref(j);
        if (!id[0]) continue;
        if (k % 2) { /* every other job is cancelled while it runs (or 409 if it already ended) */
            usleep(300000);
            snprintf(p, sizeof p, "/v1/jobs/%s/cancel", id);
            th_resp r;
            double t0 = (eng_now_ms() / 1e3);
            int rc = th_request(s->port, "POST", p, NULL, NULL, 0, &r);
            record(s, EP_CANCEL, ((eng_now_ms() / 1e3) - t0) * 1e3, rc ? -1 : r.status, rc || (r.status != 200 && r.status != 409) ? 200 : r.status);
            if (!rc) th_free(&r);
        }
        j = poll_until_done(s, id);
        if (s->stop) { /* the run is over: the job may still be live, leave it */
            json_decref(j);
            break;
        }
        const char *model = json_string_value(json_object_get(j, "model"));
        if (model) {
            snprintf(p, sizeof p, "/v1/models/%s", model);
            json_decref(req(s, EP_DELETE, 200, "DELETE", p, NULL, NULL, 0, &st));
        }
        json_decref(j);
        snprintf(p, sizeof p, "/v1/jobs/%s", id);
        json_decref(req(s, EP_DELETE, 200, "DELETE", p, NULL, NULL, 0, &st));
    }
    return NULL;
}

typedef struct sample {
    double t;
    long rss_kb, fds;
} sample;

static sample take_sample(pid_t pid, double t0)
{
    sample sm = {(eng_now_ms() / 1e3) - t0, -1, 0};
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) sm.rss_kb = atol(line + 6);
    if (f) fclose(f);
    snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(p);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') sm.fds++;
    if (d) closedir(d);
    return sm;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double q)
{
    if (!n) return 0;
    qsort(v, n, sizeof *v, cmp_d);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i];
}

/* Growth over the run: mean of the last quarter against the mean of the second quarter (the
 * first quarter is warm-up: model loads, plan caches, allocator arenas). */
static void growth(const sample *sm, int n, double *rss_mb, double *fds)
{
    double a = 0, b = 0, fa = 0, fb = 0;
    int na = 0, nb = 0;
    for (int i = n / 4; i < n / 2; i++) a += sm[i].rss_kb, fa += sm[i].fds, na++;
    for (int i = 3 * n / 4; i < n; i++) b += sm[i].rss_kb, fb += sm[i].fds, nb++;
    *rss_mb = na && nb ? (b / nb - a / na) / 1024 : 0;
    *fds = na && nb ? fb / nb - fa / na : 0;
}

/* The data the load needs: a tensor dataset, a hostile tar, the image. */
static int prepare(soak *s, const char *dir, char *err, size_t errlen)
{
    char ds[600], evil[600];
    snprintf(ds, sizeof ds, "%s/data.npz", dir);
    snprintf(evil, sizeof evil, "%s/evil.tar", dir);
    int64_t xs[] = {24, 3, 32, 32}, ys[] = {24};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    for (int i = 0; i < 24; i++) {
        ((int64_t *)y->data)[i] = i % 3;
        for (int k = 0; k < 3 * 1024; k++) ((float *)x->data)[i * 3 * 1024 + k] = k / 1024 == i % 3 ? 0.5f : -0.2f;
    }
    eng_npz *z = eng_npz_new();
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    int rc = eng_npz_save(ds, z, 0, err, errlen);
    eng_npz_free(z);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_open_filename(a, evil);
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, "../escape.jpg");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_size(e, 4);
    archive_write_header(a, e);
    archive_write_data(a, "evil", 4);
    archive_entry_free(e);
    archive_write_free(a);
    if (rc || eng_file_read(ds, 1 << 26, &s->ds, &s->ds_len, err, errlen) ||
        eng_file_read(evil, 1 << 20, &s->evil, &s->evil_len, err, errlen) ||
        eng_file_read(s->image, 1 << 26, &s->img, &s->img_len, err, errlen))
        return -1;
    return 0;
}

static json_t *report(soak *s, const sample *sm, int n, double rss_mb, double fds)
{
    json_t *eps = json_object(), *curve = json_array();
    for (int e = 0; e < EP_N; e++) {
        json_t *st = json_object();
        static const char *cls[] = {"failed", "1xx", "2xx", "3xx", "4xx", "5xx"};
        for (int k = 0; k < 6; k++)
            if (s->st.by_status[e][k]) json_object_set_new(st, cls[k], json_integer(s->st.by_status[e][k]));
        json_object_set_new(eps, ep_names[e],
                            json_pack("{s:I, s:o, s:f, s:f}", "requests", (json_int_t)s->st.n[e], "status", st,
                                      "p50_ms", pct(s->st.lat[e], s->st.n[e], 0.5),
                                      "p99_ms", pct(s->st.lat[e], s->st.n[e], 0.99)));
    }
    for (int i = 0; i < n; i++)
        json_array_append_new(curve, json_pack("[f, I, I]", sm[i].t, (json_int_t)sm[i].rss_kb, (json_int_t)sm[i].fds));
    return json_pack("{s:o, s:I, s:f, s:f, s:o}", "endpoints", eps, "unexpected_status",
                     (json_int_t)s->st.unexpected, "rss_growth_mb", rss_mb, "fd_growth", fds,
                     "samples_t_rss_kb_fds", curve);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"bin", 1, 0, 'b'}, {"model", 1, 0, 'm'}, {"image", 1, 0, 'i'},
                                         {"seconds", 1, 0, 's'}, {"clients", 1, 0, 'c'},
                                         {"sample-s", 1, 0, 'p'}, {"dir", 1, 0, 'd'}, {0, 0, 0, 0}};
    const char *bin = "./bit", *model = NULL, *dir = NULL;
    double seconds = 600, sample_s = 5;
    int clients = 4, o;
    soak s = {.st = {.mu = PTHREAD_MUTEX_INITIALIZER}};
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (o == 'b') bin = optarg;
        else if (o == 'm') model = optarg;
        else if (o == 'i') s.image = optarg;
        else if (o == 's') seconds = atof(optarg);
        else if (o == 'c') clients = atoi(optarg);
        else if (o == 'p') sample_s = atof(optarg);
        else if (o == 'd') dir = optarg;
        else return 2;
    }
    if (!model || !s.image || !dir || clients < 1 || clients > 64 || seconds <= 0) {
        fprintf(stderr, "usage: soak --model M.npz --image I.jpg --dir SCRATCH [--bin ./bit] "
                        "[--seconds 600] [--clients 4] [--sample-s 5]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char err[512];
    mkdir(dir, 0755);
    ts_server srv;
    if (prepare(&s, dir, err, sizeof err) || ts_start(&srv, bin, dir, "tiny", model, NULL)) {
        fprintf(stderr, "soak: cannot set up: %s\n", err);
        return 1;
    }
    s.port = srv.port;
    int st;
    json_t *d = req(&s, EP_UPLOAD, 201, "POST", "/v1/datasets?format=npz",
                    "Content-Type: application/octet-stream\r\n", s.ds, s.ds_len, &st);
    job_dataset = strdup(json_string_value(json_object_get(d, "id")) ? json_string_value(json_object_get(d, "id")) : "none");
    json_decref(d);
    double t0 = (eng_now_ms() / 1e3);
    s.until = t0 + seconds;
    pthread_t th[70];
    int nth = 0;
    for (int i = 0; i < clients; i++) pthread_create(&th[nth++], NULL, classify_client, &s);
    pthread_create(&th[nth++], NULL, uploader, &s);
    pthread_create(&th[nth++], NULL, job_client, &s);
    int cap = (int)(seconds / sample_s) + 8, n = 0;
    sample *sm = calloc((size_t)cap, sizeof *sm);
    while ((eng_now_ms() / 1e3) < s.until && n < cap) {
        sm[n++] = take_sample(srv.pid, t0);
        if (sm[n - 1].rss_kb < 0) break; /* the server died */
        usleep((useconds_t)(sample_s * 1e6));
    }
    s.stop = 1;
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    int alive = kill(srv.pid, 0) == 0, wst = ts_stop(&srv, SIGTERM);
    double rss_mb, fds;
    growth(sm, n, &rss_mb, &fds);
    json_t *rep = report(&s, sm, n, rss_mb, fds);
    int ok = alive && WIFEXITED(wst) && WEXITSTATUS(wst) == 0 && s.st.unexpected == 0 &&
             rss_mb < 32 && fds < 4;
    json_object_set_new(rep, "pass", json_boolean(ok));
    json_object_set_new(rep, "clean_exit", json_boolean(WIFEXITED(wst) && WEXITSTATUS(wst) == 0));
    char *txt = json_dumps(rep, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    puts(txt);
    free(txt);
    json_decref(rep);
    return ok ? 0 : 1;
}

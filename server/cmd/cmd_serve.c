/* bit serve: the daemon. One process holds the HTTP server (its own thread pool), the job
 * worker and the inference thread (which share the cores through one budget: inference takes
 * every core while no job trains, --infer-share of them while one does) and the store;
 * SIGTERM/SIGINT stop it gracefully.
 * Every option is a flag and a BIT_* environment variable (flags win), read once at start. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "cli.h"
#include "server/http/srv.h"
#include "server/svc/paths.h"
#include "server/svc/svc.h"

typedef struct serve_cfg {
    char listen[300], data_dir[2048], models_dir[2048], token_file[2048], precision[8], ui[8];
    eng_precision prec; /* precision, parsed */
    long http_threads, train_threads, loader_threads, max_upload_mb, max_queued;
    long max_connections, timeout_s, max_dataset_mb, max_image_mp, shutdown_s;
    long infer_threads, max_batch, batch_delay_ms, infer_queue, model_cache_mb, base_resolution;
    long memory_budget_mb, max_per_ip, head_timeout_ms, min_body_rate, health_reserve;
    long max_head_kb, park_timeout_ms, max_streams, stream_buffer_kb;
    long cores, infer_share, train_yield_ms, decode_threads;
} serve_cfg;

typedef struct opt {
    const char *flag, *env, *help;
    int is_str;
    void *ptr;
    size_t len; /* strings: buffer size; numbers: unused */
    long lo, hi;
} opt;

#define STR(f, e, field, h) {f, e, h, 1, c->field, sizeof c->field, 0, 0}
#define NUM(f, e, field, lo, hi, h) {f, e, h, 0, &c->field, 0, lo, hi}

/* The option table: flags, environment variables, help (the README's table follows it). */
static int options(serve_cfg *c, opt *o)
{
    opt t[] = {
        STR("listen", "BIT_LISTEN", listen, "address:port to listen on (default 127.0.0.1:8080)"),
        STR("data-dir", "BIT_DATA_DIR", data_dir, "datasets, jobs and the database (default ./var)"),
        STR("models-dir", "BIT_MODELS_DIR", models_dir, "base models NAME.npz (default ./models)"),
        STR("api-token-file", "BIT_API_TOKEN_FILE", token_file, "file holding the bearer token (or BIT_API_TOKEN)"),
        STR("ui", "BIT_UI", ui, "the web page at / and /ui/: on or off (default on)"),
        NUM("http-threads", "BIT_HTTP_THREADS", http_threads, 1, 256, "HTTP thread pool (default 8)"),
        NUM("cores", "BIT_CORES", cores, 0, 4096, "compute threads inference and training share (0 = online CPUs)"),
        NUM("train-threads", "BIT_TRAIN_THREADS", train_threads, 0, 4096, "a job's compute threads (0 = cores - infer-share)"),
        STR("precision", "BIT_PRECISION", precision, "of inference: " CLI_PRECISION_HELP),
        NUM("infer-threads", "BIT_INFER_THREADS", infer_threads, 0, 4096, "most inference compute threads (0 = every free core, the default)"),
        NUM("infer-share", "BIT_INFER_SHARE", infer_share, -1, 4096, "cores inference keeps while a job trains (-1 = half the cores, the default; 0 = none: it waits for training to yield)"),
        NUM("train-yield-ms", "BIT_TRAIN_YIELD_MS", train_yield_ms, -1, 600000, "training yields its cores when a classify request waited this long (default 50; -1 = never)"),
        NUM("decode-threads", "BIT_DECODE_THREADS", decode_threads, 0, 16, "classify image decoding threads (0 = min(cores, 4))"),
        NUM("max-batch", "BIT_MAX_BATCH", max_batch, 1, 64, "images per forward pass (default 8)"),
        NUM("batch-delay-ms", "BIT_BATCH_DELAY_MS", batch_delay_ms, 0, 10000, "wait for a fuller batch while the queue is shallow (default 5)"),
        NUM("infer-queue", "BIT_INFER_QUEUE", infer_queue, 1, 100000, "waiting images before 503 (default 64)"),
        NUM("model-cache-mb", "BIT_MODEL_CACHE_MB", model_cache_mb, 1, 1 << 24, "weights kept loaded (default 2048)"),
        NUM("base-resolution", "BIT_BASE_RESOLUTION", base_resolution, 32, 4096, "eval size of base models (default 128)"),
        NUM("loader-threads", "BIT_LOADER_THREADS", loader_threads, 1, 64, "image decoding threads per job (default 1)"),
        NUM("max-upload-mb", "BIT_MAX_UPLOAD_MB", max_upload_mb, 1, 1 << 22, "largest request body (default 2048)"),
        NUM("max-dataset-mb", "BIT_MAX_DATASET_MB", max_dataset_mb, 1, 1 << 24, "largest unpacked dataset (default 8192)"),
        NUM("max-image-mp", "BIT_MAX_IMAGE_MP", max_image_mp, 1, 1000, "largest image in megapixels (default 40)"),
        NUM("memory-budget-mb", "BIT_MEMORY_BUDGET_MB", memory_budget_mb, 0, 1 << 30, "memory client requests may hold: decodes, imports, a job's training (0 = half of RAM or the cgroup limit)"),
        NUM("max-queued", "BIT_MAX_QUEUED", max_queued, 1, 1000000, "queued jobs before 503 (default 100)"),
        NUM("max-connections", "BIT_MAX_CONNECTIONS", max_connections, 1, 100000, "open connections (default 256)"),
        NUM("timeout-s", "BIT_TIMEOUT_S", timeout_s, 1, 86400, "idle connection timeout (default 30)"),
        NUM("max-per-ip", "BIT_MAX_PER_IP", max_per_ip, 1, 100000, "connections per client address, 429 beyond (default 64)"),
        NUM("head-timeout-ms", "BIT_HEAD_TIMEOUT_MS", head_timeout_ms, 100, 600000, "time to send a whole request head (default 10000)"),
        NUM("min-body-rate", "BIT_MIN_BODY_RATE", min_body_rate, 1, 1 << 30, "slowest body upload in bytes/s over 10 s windows (default 1024)"),
        NUM("health-reserve", "BIT_HEALTH_RESERVE", health_reserve, 1, 1000, "connections kept for /healthz under load (default 4)"),
        NUM("max-head-kb", "BIT_MAX_HEAD_KB", max_head_kb, 1, 64, "largest request head, 431 beyond (default 16)"),
        NUM("park-timeout-ms", "BIT_PARK_TIMEOUT_MS", park_timeout_ms, 100, 3600000, "longest wait of a parked request (default 30000)"),
        NUM("max-streams", "BIT_MAX_STREAMS", max_streams, 1, 100000, "open event streams, 503 beyond (default 64)"),
        NUM("stream-buffer-kb", "BIT_STREAM_BUFFER_KB", stream_buffer_kb, 16, 1 << 20, "what a slow stream reader may leave unread (default 256)"),
        NUM("shutdown-s", "BIT_SHUTDOWN_S", shutdown_s, 1, 3600, "grace period for in-flight requests (default 10)"),
    };
    memcpy(o, t, sizeof t);
    return (int)(sizeof t / sizeof t[0]);
}

static int set_opt(const opt *o, const char *v, const char *from)
{
    if (o->is_str) {
        if (strlen(v) >= o->len) return cli_fail("serve", "%s: value too long", from), -1;
        strcpy(o->ptr, v);
        return 0;
    }
    long x;
    if (cli_int("serve", from, v, o->lo, o->hi, &x)) return -1;
    *(long *)o->ptr = x;
    return 0;
}

static void usage(FILE *f, serve_cfg *c)
{
    opt o[48];
    int n = options(c, o);
    fprintf(f, "usage: bit serve [options]\n\nRuns the bitd server. Options (each also an environment variable):\n");
    for (int i = 0; i < n; i++) fprintf(f, "  --%-18s %-20s %s\n", o[i].flag, o[i].env, o[i].help);
}

static int parse(int argc, char **argv, serve_cfg *c)
{
    *c = (serve_cfg){.listen = "127.0.0.1:8080", .data_dir = "./var", .models_dir = "./models",
                     .precision = "auto", .ui = "on",
                     .http_threads = 8, .loader_threads = 1, .max_upload_mb = 2048,
                     .max_queued = 100, .max_connections = 256, .timeout_s = 30,
                     .max_dataset_mb = 8192, .max_image_mp = 40, .shutdown_s = 10,
                     .infer_threads = 0, .infer_share = -1, .train_yield_ms = 50,
                     .max_batch = 8, .batch_delay_ms = 5, .infer_queue = 64,
                     .model_cache_mb = 2048, .base_resolution = 128, .max_per_ip = 64,
                     .head_timeout_ms = 10000, .min_body_rate = 1024, .health_reserve = 4,
                     .max_head_kb = 16, .park_timeout_ms = 30000, .max_streams = 64,
                     .stream_buffer_kb = 256};
    opt o[48];
    struct option lo[50];
    int n = options(c, o);
    for (int i = 0; i < n; i++) {
        const char *v = getenv(o[i].env);
        if (v && *v && set_opt(&o[i], v, o[i].env)) return 2;
        lo[i] = (struct option){o[i].flag, 1, 0, i};
    }
    lo[n] = (struct option){"help", 0, 0, 'h'};
    lo[n + 1] = (struct option){0, 0, 0, 0};
    int k;
    optind = 1;
    while ((k = cli_getopt("serve", argc, argv, lo)) != -1) {
        if (k == 'h') return usage(stdout, c), 1;
        if (k < 0 || k >= n) return usage(stderr, c), 2;
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", o[k].flag);
        if (set_opt(&o[k], optarg, flag)) return 2;
    }
    if (optind != argc) return usage(stderr, c), 2;
    if (strcmp(c->ui, "on") && strcmp(c->ui, "off"))
        return cli_fail("serve", "--ui: on or off, not '%s'", c->ui), 2;
    return cli_precision("serve", c->precision, &c->prec) ? 2 : 0;
}

/* BIT_API_TOKEN, or the first line of the token file; "" when neither is set. */
static int read_token(const serve_cfg *c, char *tok, size_t len)
{
    const char *env = getenv("BIT_API_TOKEN");
    tok[0] = 0;
    if (env && *env) {
        snprintf(tok, len, "%s", env);
    } else if (c->token_file[0]) {
        FILE *f = fopen(c->token_file, "r");
        if (!f || !fgets(tok, (int)len, f)) {
            if (f) fclose(f);
            return cli_fail("serve", "%s: cannot read the API token", c->token_file), -1;
        }
        fclose(f);
        tok[strcspn(tok, "\r\n")] = 0;
    } else {
        return 0;
    }
    if (strlen(tok) < 16) return cli_fail("serve", "the API token must have at least 16 characters"), -1;
    return 0;
}

static int split_listen(const char *l, char *addr, size_t len, int *port)
{
    const char *colon = strrchr(l, ':');
    long p;
    if (!colon || colon == l || cli_int("serve", "--listen port", colon + 1, 0, 65535, &p)) return -1;
    size_t n = (size_t)(colon - l);
    if (l[0] == '[' && n >= 2 && l[n - 1] == ']') l++, n -= 2; /* [::1]:8080 */
    if (n >= len) return -1;
    memcpy(addr, l, n);
    addr[n] = 0;
    *port = (int)p;
    return 0;
}

static void warn_models_dir(const serve_cfg *c)
{
    struct stat sb;
    if (stat(c->models_dir, &sb) || !S_ISDIR(sb.st_mode))
        fprintf(stderr, "bit serve: warning: models directory %s does not exist yet\n", c->models_dir);
}

/* Everything `bit serve` runs, in start order; stop() takes it down in reverse. */
typedef struct parts {
    svc *svc;
    api *a;
    srv *s;
} parts;

static void svc_config_of(const serve_cfg *c, svc_config *vc)
{
    /* libgomp teams spin while waiting: more compute threads than cores collapses both, so
     * one budget (server/svc/cores.h) hands the cores to inference and training */
    *vc = (svc_config){.data_dir = c->data_dir, .models_dir = c->models_dir, .worker = 1,
                       .cores = (int)c->cores, .train_threads = (int)c->train_threads,
                       .infer_share = c->infer_share < 0 ? 0 : c->infer_share == 0 ? -1 : (int)c->infer_share,
                       .train_yield_ms = c->train_yield_ms < 0 ? -1 : c->train_yield_ms == 0 ? 1 : (int)c->train_yield_ms,
                       .decode_threads = (int)c->decode_threads,
                       .loader_threads = (int)c->loader_threads, .max_queued = (int)c->max_queued,
                       .base_resolution = (int)c->base_resolution,
                       .memory_budget = (uint64_t)c->memory_budget_mb << 20,
                       .max_followers = (unsigned)c->max_streams};
    vc->arc.max_total_bytes = (uint64_t)c->max_dataset_mb << 20;
    vc->img.max_pixels = (uint64_t)c->max_image_mp * 1000000;
    vc->infer = (inf_config){.threads = (int)c->infer_threads, .max_batch = (int)c->max_batch,
                             .batch_delay_ms = c->batch_delay_ms ? (int)c->batch_delay_ms : -1,
                             .max_queue = (int)c->infer_queue,
                             .cache_bytes = (uint64_t)c->model_cache_mb << 20,
                             .precision = eng_precision_resolve(c->prec)};
}

static int start(const serve_cfg *c, const char *token, parts *p, char *err, size_t errlen)
{
    char addr[256], tmp[2100];
    int port, rc;
    svc_config vc;
    if (split_listen(c->listen, addr, sizeof addr, &port))
        return eng_errf(err, errlen, ENG_EINVAL, "--listen wants ADDRESS:PORT, not '%s'", c->listen);
    svc_config_of(c, &vc);
    srv_config sc;
    srv_config_init(&sc);
    sc.address = addr, sc.port = port, sc.threads = (unsigned)c->http_threads;
    sc.max_connections = (unsigned)c->max_connections, sc.timeout_s = (unsigned)c->timeout_s;
    sc.max_body = (uint64_t)c->max_upload_mb << 20, sc.token = token;
    sc.stop_timeout_ms = (unsigned)c->shutdown_s * 1000;
    sc.max_per_ip = (unsigned)c->max_per_ip, sc.head_timeout_ms = (unsigned)c->head_timeout_ms;
    sc.body_rate = (unsigned)c->min_body_rate, sc.health_reserve = (unsigned)c->health_reserve;
    sc.max_head = (size_t)c->max_head_kb << 10, sc.park_timeout_ms = (unsigned)c->park_timeout_ms;
    sc.max_streams = (unsigned)c->max_streams, sc.stream_buffer = (size_t)c->stream_buffer_kb << 10;
    svc_path_tmp(c->data_dir, tmp, sizeof tmp); /* same filesystem: uploads rename into place */
    sc.temp_dir = tmp;
    if ((rc = svc_open(&vc, &p->svc, err, errlen))) return rc;
    api_config ac = {.service = p->svc, .ui = !strcmp(c->ui, "on")};
    if ((rc = api_new(&ac, &p->a, err, errlen)) || (rc = srv_new(&sc, &p->s, err, errlen)) ||
        (rc = api_register(p->a, p->s, err, errlen)) || (rc = svc_start(p->svc, err, errlen)) ||
        (rc = srv_start(p->s, err, errlen)))
        return rc;
    fprintf(stderr, "{\"component\":\"serve\",\"event\":\"listening\",\"url\":\"http://%s%s%s:%d\",\"pid\":%ld}\n",
            strchr(addr, ':') ? "[" : "", addr, strchr(addr, ':') ? "]" : "", srv_port(p->s), (long)getpid());
    return 0;
}

/* Stop order: no new requests (in-flight ones finish, so inference stops after them), then
 * the service (inference, then the worker checkpoints and requeues its job), then the
 * database closes with the service. */
static void stop(parts *p)
{
    if (p->s) srv_stop(p->s);
    svc_stop(p->svc);
    srv_free(p->s);
    api_free(p->a);
    svc_close(p->svc);
}

int cmd_serve(int argc, char **argv)
{
    serve_cfg c;
    int prc = parse(argc, argv, &c);
    if (prc) return prc == 1 ? 0 : prc;
    char token[512], err[1024];
    if (read_token(&c, token, sizeof token)) return 1;
    warn_models_dir(&c);
    /* Block the stop signals in every thread; this one waits for them with sigwait. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    parts p = {0};
    if (start(&c, token, &p, err, sizeof err)) {
        stop(&p);
        return cli_fail("serve", "%s", err);
    }
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "{\"component\":\"serve\",\"event\":\"stopping\",\"signal\":%d}\n", sig);
    stop(&p);
    fprintf(stderr, "{\"component\":\"serve\",\"event\":\"stopped\"}\n");
    return 0;
}

/* bit jobs and bit job: following a running server's jobs without curl and jq: list them,
 * show one, watch its progress and events until it ends, cancel it. A client of the HTTP API
 * (cli_http.h); the server is --url, else BIT_URL, else http://127.0.0.1:8080. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "server/cmd/cli_http.h"
#include "server/cmd/cli_live.h"

static const char jobs_usage[] =
    "usage: bit jobs [--url URL] [--status S] [--limit N] [--json]\n"
    "       bit job show|watch|cancel ID [--url URL] [--json] [--interval S]\n\n"
    "A client of a running `bit serve`. bit jobs lists jobs, newest first: id, status,\n"
    "step, validation top-1, name. bit job show prints one job as JSON; bit job watch follows\n"
    "its progress (a live line on a terminal) and events (evaluations, checkpoints, status\n"
    "changes) until it ends, exiting 0 when it succeeded and 1 otherwise (Ctrl-C stops\n"
    "watching, not the job); bit job cancel cancels it.\n\n"
    "  --url URL       the server (default: BIT_URL, else http://127.0.0.1:8080); the token\n"
    "                  comes from BIT_API_TOKEN\n"
    "  --status S      list only jobs in this status (queued, running, succeeded, ...)\n"
    "  --limit N       at most N jobs (default 20)\n"
    "  --json          the server's JSON as it is (watch: one event per line)\n"
    "  --interval S    seconds between polls while watching (default 1)\n";

typedef struct jobs_cfg {
    const char *url, *status, *verb, *id;
    long limit, interval;
    int json;
} jobs_cfg;

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig, g_stop = 1; }

static int parse(const char *sub, int argc, char **argv, jobs_cfg *c, int verbs)
{
    static const struct option opts[] = {{"url", 1, 0, 'u'}, {"status", 1, 0, 's'}, {"limit", 1, 0, 'l'},
                                         {"json", 0, 0, 'J'}, {"interval", 1, 0, 'i'},
                                         {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    *c = (jobs_cfg){.limit = 20, .interval = 1};
    int o, bad = 0;
    optind = 1;
    while ((o = cli_getopt(sub, argc, argv, opts)) != -1) {
        switch (o) {
        case 'u': c->url = optarg; break;
        case 's': c->status = optarg; break;
        case 'l': bad |= cli_int(sub, "--limit", optarg, 1, 1000, &c->limit); break;
        case 'J': c->json = 1; break;
        case 'i': bad |= cli_int(sub, "--interval", optarg, 1, 3600, &c->interval); break;
        case 'h': fputs(jobs_usage, stdout); return 1;
        default: bad = 1;
        }
    }
    if (verbs && optind + 2 == argc) c->verb = argv[optind], c->id = argv[optind + 1];
    if (bad || optind + (verbs ? 2 : 0) != argc ||
        (verbs && strcmp(c->verb, "show") && strcmp(c->verb, "watch") && strcmp(c->verb, "cancel"))) {
        if (!bad && verbs && c->verb) cli_fail(sub, "unknown action '%s': show, watch or cancel", c->verb);
        fputs(jobs_usage, stderr);
        return 2;
    }
    return 0;
}

static void print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) puts(s);
    free(s);
}

/* GET/POST path expecting `want`; the body, or NULL after saying why. */
static json_t *ask(const cli_server *s, const char *sub, const char *method, const char *path, int want)
{
    int status;
    json_t *j = NULL;
    if (cli_http(s, sub, method, path, &status, &j)) return NULL;
    if (status == want && j) return j;
    cli_http_fail(sub, status, j);
    json_decref(j);
    return NULL;
}

/* The options and the server: 0 to go on, else the exit code (help printed: 0). */
static int setup(const char *sub, int argc, char **argv, jobs_cfg *c, int verbs, cli_server *s)
{
    int prc = parse(sub, argc, argv, c, verbs);
    if (prc) return prc == 1 ? -1 : prc;
    return cli_server_init(s, sub, c->url) ? 2 : 0;
}

int cmd_jobs(int argc, char **argv)
{
    jobs_cfg c;
    cli_server s;
    char path[600];
    int rc = setup("jobs", argc, argv, &c, 0, &s);
    if (rc) return rc < 0 ? 0 : rc;
    snprintf(path, sizeof path, "/v1/jobs?limit=%ld%s%s", c.limit, c.status ? "&status=" : "", c.status ? c.status : "");
    json_t *j = ask(&s, "jobs", "GET", path, 200);
    if (!j) return 1;
    if (c.json) {
        print_json(j);
    } else {
        json_t *v;
        size_t i;
        printf("%-21s %-10s %-13s %-8s %s\n", "ID", "STATUS", "STEP", "VAL_TOP1", "NAME");
        json_array_foreach(json_object_get(j, "jobs"), i, v) {
            json_t *p = json_object_get(v, "progress");
            double top1 = cli_json_num(json_object_get(v, "metrics"), "val_top1");
            char step[32], acc[16] = "-";
            snprintf(step, sizeof step, "%lld/%lld", (long long)json_integer_value(json_object_get(p, "step")),
                     (long long)json_integer_value(json_object_get(p, "total_steps")));
            if (!isnan(top1)) snprintf(acc, sizeof acc, "%.4f", top1);
            printf("%-21s %-10s %-13s %-8s %s\n", cli_json_str(v, "id"), cli_json_str(v, "status"), step, acc, cli_json_str(v, "name"));
        }
        if (!json_array_size(json_object_get(j, "jobs"))) printf("(no jobs)\n");
    }
    json_decref(j);
    return 0;
}

static int finished(const char *status)
{
    return !strcmp(status, "succeeded") || !strcmp(status, "failed") || !strcmp(status, "cancelled");
}

/* Prints the events after *seq (a line each; JSON lines with --json). 0, or -1 on an error. */
static int new_events(const cli_server *s, const jobs_cfg *c, cli_live *live, int64_t *seq)
{
    for (;;) {
        char path[300];
        snprintf(path, sizeof path, "/v1/jobs/%s/events?after=%lld&limit=200", c->id, (long long)*seq);
        json_t *j = ask(s, "job", "GET", path, 200), *ev;
        size_t i;
        if (!j) return -1;
        json_array_foreach(json_object_get(j, "events"), i, ev) {
            char line[1200];
            *seq = json_integer_value(json_object_get(ev, "seq"));
            if (c->json) {
                char *t = json_dumps(ev, JSON_COMPACT);
                if (t) puts(t), fflush(stdout);
                free(t);
            } else if (!cli_event_text(ev, line, sizeof line)) {
                cli_live_note(live, "%s", line);
            }
        }
        int more = json_is_true(json_object_get(j, "more"));
        json_decref(j);
        if (!more) return 0;
    }
}

static int watch(const cli_server *s, const jobs_cfg *c)
{
    cli_live live;
    int64_t seq = 0;
    char path[300];
    int rc = 1;
    cli_live_init(&live, stdout);
    snprintf(path, sizeof path, "/v1/jobs/%s", c->id);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    while (!g_stop) {
        json_t *j = ask(s, "job", "GET", path, 200);
        if (!j || new_events(s, c, &live, &seq)) {
            json_decref(j);
            break;
        }
        json_t *p = json_object_get(j, "progress");
        const char *status = cli_json_str(j, "status");
        if (!c->json && !strcmp(status, "running"))
            cli_live_progress(&live, json_integer_value(json_object_get(p, "step")),
                              json_integer_value(json_object_get(p, "total_steps")),
                              cli_json_num(json_object_get(j, "metrics"), "train_loss"), NAN,
                              cli_json_num(p, "images_per_sec"), cli_json_num(p, "eta_seconds"));
        if (finished(status)) {
            cli_live_end(&live);
            json_t *e = json_object_get(j, "error");
            if (!c->json)
                printf("%s %s%s%s%s%s\n", c->id, status, cli_json_str(j, "model")[0] ? ": model " : "", cli_json_str(j, "model"),
                       json_is_object(e) ? ": " : "", json_is_object(e) ? cli_json_str(e, "message") : "");
            rc = strcmp(status, "succeeded") ? 1 : 0;
            json_decref(j);
            return rc;
        }
        json_decref(j);
        for (long k = 0; k < c->interval * 10 && !g_stop; k++) usleep(100000);
    }
    cli_live_end(&live);
    if (g_stop) fprintf(stderr, "bit job: stopped watching; the job goes on (bit job cancel %s stops it)\n", c->id);
    return g_stop ? 130 : 1;
}

int cmd_job(int argc, char **argv)
{
    jobs_cfg c;
    cli_server s;
    char path[300];
    int rc = setup("job", argc, argv, &c, 1, &s);
    if (rc) return rc < 0 ? 0 : rc;
    if (!strcmp(c.verb, "watch")) return watch(&s, &c);
    int cancel = !strcmp(c.verb, "cancel");
    snprintf(path, sizeof path, "/v1/jobs/%s%s", c.id, cancel ? "/cancel" : "");
    json_t *j = ask(&s, "job", cancel ? "POST" : "GET", path, 200);
    if (!j) return 1;
    if (c.json || !cancel) print_json(j);
    else printf("%s %s\n", cli_json_str(j, "id"), cli_json_str(j, "status"));
    json_decref(j);
    return 0;
}

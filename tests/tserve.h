/* Starting and stopping `bit serve` for integration tests and benchmarks: an ephemeral port
 * read from the server's "listening" log line, data and models in a directory of the caller's,
 * and every server still running at exit killed (never left behind). */
#ifndef BIT_TSERVE_H
#define BIT_TSERVE_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct ts_server {
    pid_t pid;
    int port;
    char dir[1024], log[1100];
} ts_server;

static pid_t ts_live[64];
static int ts_nlive;

static inline void ts_kill_live(void)
{
    for (int i = 0; i < ts_nlive; i++)
        if (ts_live[i] > 0) kill(ts_live[i], SIGKILL);
}

/* Starts bin serve with --data-dir dir/var --models-dir dir/models, models/<model_name>.npz
 * linked to model_path (model_name NULL: the caller filled models/); extra: more arguments
 * (NULL-terminated; a repeated option overrides the defaults here). */
static inline int ts_start(ts_server *s, const char *bin, const char *dir, const char *model_name,
                    const char *model_path, const char *const *extra)
{
    static int registered;
    if (!registered) atexit(ts_kill_live), registered = 1;
    char models[1100], data[1100], link[1400];
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    snprintf(s->log, sizeof s->log, "%s/serve.log", dir);
    snprintf(models, sizeof models, "%s/models", dir);
    snprintf(data, sizeof data, "%s/var", dir);
    mkdir(dir, 0755);
    mkdir(models, 0755);
    snprintf(link, sizeof link, "%s/%s.npz", models, model_name ? model_name : "");
    if (model_name && symlink(model_path, link) && errno != EEXIST) return -1;
    const char *argv[40] = {bin, "serve", "--listen", "127.0.0.1:0", "--data-dir", data,
                            "--models-dir", models, "--train-threads", "1", "--http-threads", "4"};
    int n = 12;
    for (int i = 0; extra && extra[i] && n < 39; i++) argv[n++] = extra[i];
    unlink(s->log); /* so the parent never reads a previous run's port */
    s->pid = fork();
    if (s->pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    if (ts_nlive < 64) ts_live[ts_nlive++] = s->pid;
    const char *key = "\"url\":\"http://127.0.0.1:";
    for (int i = 0; i < 400; i++) { /* the port appears in the "listening" log line */
        usleep(25000);
        FILE *f = fopen(s->log, "r");
        char line[1024];
        s->port = 0;
        while (f && fgets(line, sizeof line, f)) {
            char *u = strstr(line, key);
            if (u) s->port = atoi(u + strlen(key));
        }
        if (f) fclose(f);
        if (s->port) return 0;
    }
    fprintf(stderr, "  server did not start (see %s)\n", s->log);
    return -1;
}

/* Sends sig, waits, returns the wait status. */
static inline int ts_stop(ts_server *s, int sig)
{
    int st = 0;
    kill(s->pid, sig);
    waitpid(s->pid, &st, 0);
    for (int i = 0; i < ts_nlive; i++)
        if (ts_live[i] == s->pid) ts_live[i] = 0;
    return st;
}

/* ---- requests (need tests/thttp.h and jansson before this header's user includes it) ---- */
#ifdef BIT_THTTP_H
#include <jansson.h>

/* A request answered with JSON (NULL if the body is not JSON); status into *status. */
static inline json_t *ts_call(const ts_server *s, const char *method, const char *path,
                              const char *hdr, const void *body, size_t len, int *status)
{
    th_resp r;
    if (th_request(s->port, method, path, hdr, body, len, &r)) {
        *status = -1;
        return NULL;
    }
    *status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    th_free(&r);
    return j;
}

static inline const char *ts_str(const json_t *j, const char *k)
{
    return json_string_value(json_object_get(j, k));
}

/* The error code of an error answer, or "". */
static inline const char *ts_err_code(const json_t *j)
{
    const char *c = ts_str(json_object_get(j, "error"), "code");
    return c ? c : "";
}

/* Polls a job until its status is want or terminal; the last JSON (the caller's), or NULL. */
static inline json_t *ts_wait_job(const ts_server *s, const char *id, const char *want,
                                  double seconds)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    for (int i = 0; i < seconds * 20; i++, usleep(50000)) {
        int st;
        json_t *j = ts_call(s, "GET", path, NULL, NULL, 0, &st);
        const char *now = j ? ts_str(j, "status") : NULL;
        if (now && (!strcmp(now, want) || !strcmp(now, "failed") || !strcmp(now, "succeeded") ||
                    !strcmp(now, "cancelled")))
            return j;
        json_decref(j);
    }
    return NULL;
}

/* A field of /proc/PID/status in KiB ("VmRSS:", "VmHWM:"), or -1. */
static inline long ts_status_kb(pid_t pid, const char *field)
{
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, strlen(field))) kb = atol(line + strlen(field));
    if (f) fclose(f);
    return kb;
}

/* VmHWM of a process (its peak resident memory) in KiB, or -1. */
static inline long ts_peak_kb(pid_t pid) { return ts_status_kb(pid, "VmHWM:"); }
#endif

#endif

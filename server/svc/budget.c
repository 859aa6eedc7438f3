#include "server/svc/budget.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/svc/svc.h"

struct bud {
    uint64_t total, used, peak, refused;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static uint64_t read_u64(const char *path, const char *key)
{
    FILE *f = fopen(path, "r");
    char line[256];
    uint64_t v = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (key && strncmp(line, key, strlen(key))) continue;
        if (!strncmp(line, "max", 3)) break; /* cgroup v2: no limit */
        v = strtoull(key ? line + strlen(key) : line, NULL, 10);
        if (key) v *= 1024; /* /proc/meminfo says kB */
        break;
    }
    if (f) fclose(f);
    return v;
}

uint64_t bud_default_total(void)
{
    uint64_t mem = read_u64("/proc/meminfo", "MemTotal:");
    uint64_t cg = read_u64("/sys/fs/cgroup/memory.max", NULL);
    if (!cg) cg = read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes", NULL);
    if (cg && (!mem || cg < mem)) mem = cg;
    return mem ? mem / 2 : (uint64_t)2 << 30;
}

int bud_new(uint64_t total, bud **out, char *err, size_t errlen)
{
    bud *b = calloc(1, sizeof *b);
    if (!b) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    b->total = total ? total : bud_default_total();
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    *out = b;
    return 0;
}

void bud_free(bud *b)
{
    if (!b) return;
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}

uint64_t bud_total(const bud *b) { return b->total; }

int bud_reserve(bud *b, uint64_t bytes, int wait_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    long ns = dl.tv_nsec + (long)(wait_ms % 1000) * 1000000L;
    dl.tv_sec += wait_ms / 1000 + ns / 1000000000L, dl.tv_nsec = ns % 1000000000L;
    pthread_mutex_lock(&b->mu);
    int rc = 0;
    if (bytes > b->total) {
        rc = ENG_ELIMIT;
    } else {
        while (b->used + bytes > b->total && rc == 0)
            if (pthread_cond_timedwait(&b->cv, &b->mu, &dl)) rc = SVC_EBUSY;
        if (b->used + bytes <= b->total) rc = 0;
    }
    if (rc) b->refused++;
    else if ((b->used += bytes) > b->peak) b->peak = b->used;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void bud_release(bud *b, uint64_t bytes)
{
    pthread_mutex_lock(&b->mu);
    b->used -= bytes < b->used ? bytes : b->used;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void bud_metrics_text(bud *b, FILE *f)
{
    pthread_mutex_lock(&b->mu);
    uint64_t total = b->total, used = b->used, peak = b->peak, refused = b->refused;
    pthread_mutex_unlock(&b->mu);
    fprintf(f, "# HELP bit_memory_budget_bytes What client requests may hold at once.\n"
               "# TYPE bit_memory_budget_bytes gauge\nbit_memory_budget_bytes %llu\n"
               "# HELP bit_memory_reserved_bytes Reserved now by decodes and imports.\n"
               "# TYPE bit_memory_reserved_bytes gauge\nbit_memory_reserved_bytes %llu\n"
               "# HELP bit_memory_reserved_peak_bytes The most ever reserved at once.\n"
               "# TYPE bit_memory_reserved_peak_bytes gauge\nbit_memory_reserved_peak_bytes %llu\n"
               "# HELP bit_memory_refused_total Requests refused or timed out for lack of budget.\n"
               "# TYPE bit_memory_refused_total counter\nbit_memory_refused_total %llu\n",
            (unsigned long long)total, (unsigned long long)used, (unsigned long long)peak,
            (unsigned long long)refused);
}

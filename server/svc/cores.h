/* The machine's cores shared by inference and training so that their OpenMP teams never add
 * up to more threads than cores: each compute thread holds a grant (a team size) while it
 * computes and sets omp_set_num_threads to it. cores owns nothing its callers see; the
 * inference queue's oldest wait is told to it (cores_waiting) so training can yield. */
#ifndef BIT_SVC_CORES_H
#define BIT_SVC_CORES_H

#include <stdio.h>

typedef struct cores_config {
    int cores;          /* compute threads in all; default: online CPUs */
    int infer_threads;  /* a fixed inference team; 0: every core training does not hold */
    int infer_share;    /* cores kept for inference while a job trains; 0: the default
                           (cores / 2, at least 1 when cores > 1); negative: none, so
                           inference runs only while training yields */
    int train_threads;  /* a fixed training team; 0: cores - infer_share (at least 1) */
    int train_yield_ms; /* training yields while a classify request has waited this long;
                           default 50, negative: never */
} cores_config;

typedef struct cores cores;

typedef struct cores_stats {
    int cores, infer_share, train_team, yield_ms;
    int infer_held, train_held; /* threads held now */
    int peak;                   /* the most threads ever held at once (never above cores) */
    int peak_observed;          /* the largest sum of team sizes the holders measured */
    unsigned long long yields, infer_grants;
} cores_stats;

int cores_new(const cores_config *cfg, cores **out, char *err, size_t errlen);
void cores_free(cores *c);
/* Wakes every waiter for good: grants still work, but never block again (shutdown). */
void cores_shutdown(cores *c);

/* Inference (and other short compute, such as a speed measurement): blocks until a core is
 * free (none is while a job holds them all, infer_share 0, until it yields) and returns the
 * team size, at most want (0: as many as are free, capped by infer_threads), held until
 * cores_infer_release gives the same number back. */
int cores_infer_grant(cores *c, int want);
/* The same without waiting: 0 when no core is free now. */
int cores_infer_try(cores *c, int want);
void cores_infer_release(cores *c, int n);

/* Training: the team a job runs with for its whole life (its oneDNN primitives are built
 * for it). Acquire blocks until it fits beside the inference grant in flight; from then on,
 * inference grants leave it room. */
int cores_train_team(const cores *c);
void cores_train_acquire(cores *c);
void cores_train_release(cores *c);
/* Between micro-batches: while a classify request has waited train_yield_ms, gives the team
 * back and waits until the queue is drained (or at most 20 x train_yield_ms, so training
 * keeps moving under constant load), then acquires it again. 1 when it yielded. */
int cores_train_yield(cores *c);

/* The inference queue's oldest request: when it was queued (eng_now_ms), 0 when empty. */
void cores_waiting(cores *c, double since_ms);
/* A holder's measured OpenMP team size while it holds its grant (train: 1 for the training
 * team, 0 for inference): the test hook and metric that show what really runs at once. */
void cores_observe(cores *c, int train, int team);
void cores_get_stats(cores *c, cores_stats *st);
/* Prometheus text: bit_cores_* (total, held by each side, peak) and training yields. */
void cores_metrics_text(cores *c, FILE *f);

#endif

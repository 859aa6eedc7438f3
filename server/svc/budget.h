/* The memory budget for what clients ask for (--memory-budget-mb): decode buffers of classify
 * requests and tensor datasets being imported reserve their bytes here before they allocate,
 * waiting a bounded time when it is full; fine-tune jobs are sized against it at creation.
 * A bud is shared by every thread; it owns nothing but its counters. */
#ifndef BIT_SVC_BUDGET_H
#define BIT_SVC_BUDGET_H

#include <stdint.h>
#include <stdio.h>

typedef struct bud bud;

/* total 0: half of what the machine or its cgroup allows. */
int bud_new(uint64_t total, bud **out, char *err, size_t errlen);
void bud_free(bud *b);
uint64_t bud_total(const bud *b);
/* The default budget: half of min(MemTotal, the cgroup's memory limit). */
uint64_t bud_default_total(void);

/* Reserves bytes, waiting up to wait_ms for others to release; ENG_ELIMIT when bytes exceed
 * the whole budget (never satisfiable), SVC_EBUSY after the wait. */
int bud_reserve(bud *b, uint64_t bytes, int wait_ms);
void bud_release(bud *b, uint64_t bytes);
/* Prometheus text: the budget, what is reserved, refusals. */
void bud_metrics_text(bud *b, FILE *f);

#endif

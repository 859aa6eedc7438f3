/* Internal to the fine-tuning run (finetune.c, ftlinear.c): the state of one run and the
 * helpers both kinds of run share to write it. Not for other modules. */
#ifndef BIT_FINETUNE_INT_H
#define BIT_FINETUNE_INT_H

#include "finetune.h"
#include "train.h"

#define FT_RATE_WINDOW 20 /* steps the throughput and ETA are measured over */

typedef struct run {
    const char *dir, *base, *data;
    ft_resolved r;
    ds_dataset *d;
    eng_trainer *t;     /* a full fine-tune */
    eng_npz *fixed;     /* a linear probe: its final parameters (there is no trainer) */
    eng_arch arch;
    json_t *history;
    int64_t step;
    uint64_t fp;
    const ft_hooks *hooks;
    double stamps[FT_RATE_WINDOW]; /* times (s) of the last steps, for a moving rate */
    int nstamps;
    int64_t best_step;  /* select=best: the checkpoint with the best top-1 so far, or -1 */
    double best_top1;
    json_t *best_metrics;
} run;

/* Writes checkpoints/step-<step> from the trainer (or r->fixed) and points the run's files
 * at it; prunes old ones but the best. */
int ft__checkpoint(run *R, char *err, size_t errlen);
/* Sends an event to the hooks. */
void ft__emit(const run *R, json_t *ev);
/* Writes metrics.json: {"step", "val": metrics} (metrics NULL: null). */
int ft__write_metrics(const run *R, json_t *metrics, char *err, size_t errlen);

/* A linear probe over the run's dataset from the base weights z (a zero head for the
 * dataset's classes already in place; z becomes the run's parameters). */
int ft__linear(run *R, eng_npz *z, const ft_params *p, char *err, size_t errlen);

#endif

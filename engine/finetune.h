/* Fine-tuning runs: a base checkpoint plus a dataset become a run directory, step for step as
 * the official BiT code trains (HyperRule, MixUp, batch split), with evaluation, atomic
 * checkpoints and exact resume. The CLI and the server's job worker both drive ft_run. */
#ifndef BIT_FINETUNE_H
#define BIT_FINETUNE_H

#include <jansson.h>

#include "dataset.h"
#include "hyper.h"
#include "net.h"

/* How a run trains: the HyperRule's fine-tuning of every layer, or the linear-evaluation
 * protocol (backbone frozen, features computed once, a softmax regression head). */
typedef enum { FT_MODE_FULL = 0, FT_MODE_LINEAR = 1 } ft_mode;
/* Which model a run ends with: its last step (as BiT), or its best validation top-1. */
typedef enum { FT_SELECT_LAST = 0, FT_SELECT_BEST = 1 } ft_select;

/* What the user asked for; zero / negative fields mean "the HyperRule decides". */
typedef struct ft_params {
    ft_mode mode;      /* set_mode says whether it was asked for (a budget may pick it) */
    ft_select select;
    int set_mode, set_select;
    double budget_s;   /* finish within this many seconds (0: no budget) */
    int64_t steps;                          /* scale the rule's schedule to this many steps */
    int64_t schedule[ENG_MAX_SCHEDULE];     /* explicit boundaries (nsched > 0) */
    int nsched;
    int batch, batch_split;
    double base_lr;                         /* 0: 0.003 */
    int precrop, crop;
    int pretrain_res;   /* the base model's pre-training resolution (its NAME.json's
                           pretrain_resolution): the rule's sizes scale by it / 224; 0: 224 */
    double mixup;                           /* < 0: rule; 0 disables */
    int examples_per_class;
    uint64_t seed;
    int64_t eval_every, save_every;         /* 0: at the end only / the default interval */
    int no_augment, no_shuffle;
    int loader_threads;
    eng_precision precision;
    /* Training memory a micro-batch may take (0: no limit): when batch_split is left to the
     * rule, the batch is split until a micro-batch fits (eng_arch_train_bytes), and a run
     * where not even one image fits is refused. The server sizes jobs itself at creation. */
    uint64_t memory_bytes;
    /* Upstream pre-training (bit pretrain) instead of fine-tuning: train init_arch from random
     * initialisation with the paper's recipe: lr 0.03 * batch / 256, linear warm-up, / 10 at
     * 30, 60 and 80 of `epochs` = 90 epochs, weight decay 1e-4 on the conv kernels. */
    const eng_arch *init_arch;
    double epochs;          /* pre-training length (0: 90) */
    int64_t warmup_steps;   /* pre-training warm-up (0: 500, at most a tenth of the run) */
    double weight_decay;    /* on conv kernels; < 0: the recipe's (0 fine-tuning, 1e-4 pre-training) */
} ft_params;

/* The values a run actually uses, stored in state.json. */
typedef struct ft_resolved {
    eng_hyper h;       /* schedule, batch, base_lr, mixup_alpha, precrop, crop */
    int batch_split, micro;
    int examples_per_class;
    uint64_t seed;
    int64_t eval_every, save_every;
    int augment, shuffle;
    double weight_decay;
    int pretrain;
    ft_mode mode;
    ft_select select;
    eng_precision precision; /* f32 or bf16: auto resolved for this CPU */
    /* The plan a time budget chose (budget_s > 0), and what it predicted. */
    double budget_s, predicted_s;
    int pretrain_res;  /* what the rule's resolution was scaled for */
} ft_resolved;

typedef struct ft_progress {
    int64_t step, total;
    double lr, loss, images_per_sec, eta_s;
} ft_progress;

typedef struct ft_hooks {
    /* after every step */
    void (*progress)(void *ud, const ft_progress *p);
    /* a JSON event: {"type": "eval"|"checkpoint"|"train", "step": ..., ...}; borrowed */
    void (*event)(void *ud, const json_t *ev);
    /* polled every step: 0 go on, 1 stop now (cancel), 2 checkpoint then stop (shutdown) */
    int (*stop)(void *ud);
    void *ud;
    /* between micro-batches (NULL: never): may block to lend the cores to someone whose wait
     * is worth more (the server's classify requests); training goes on when it returns */
    void (*yield)(void *ud);
} ft_hooks;

#define FT_ESTOPPED (-30) /* ft_run ended early because hooks->stop asked */

/* What the HyperRule needs to know of a dataset (the server keeps it from the upload). */
typedef struct ft_data_info {
    int64_t train_images;
    int median_w, median_h;
    int tensor_h, tensor_w; /* 0 for image datasets */
} ft_data_info;

void ft_data_info_of(const ds_dataset *d, ft_data_info *info);
/* Resolves the HyperRule and the overrides for a dataset. */
int ft_resolve(const ft_params *p, const ft_data_info *d, ft_resolved *r, char *err,
               size_t errlen);

/* Trains base (an official-schema .npz) on data (directory, archive or tensor .npz) into
 * run_dir (layout: rundir.h); with resume, continues from run_dir's last checkpoint (same
 * data and settings). A fresh run uses resolved when given (a job runs exactly what it
 * resolved at creation), else resolves p for the data; p always gives the loader threads,
 * precision and pre-training architecture. Writes model.npz (official schema, new head),
 * labels.txt, optimizer.npz, state.json and metrics.json (final evaluation with per-class
 * accuracy and confusion matrix). */
int ft_run(const char *base, const char *data, const char *run_dir, const ft_params *p,
           const ft_resolved *resolved, int resume, const ft_hooks *hooks, char *err,
           size_t errlen);

/* Replaces a checkpoint's head by a zero head of `classes` outputs, as the official code does
 * (so the first steps only move the head); a->head follows. ENG_ENOMEM. */
int ft_new_head(eng_npz *z, eng_arch *a, int classes);

/* Evaluation of a model on a split: top-1, top-5, mean loss, per-class accuracy, confusion
 * matrix (when classes <= 1000). The caller owns the returned object. */
int ft_evaluate(eng_net *net, const ds_dataset *d, ds_split split, int crop, int batch,
                json_t **metrics, char *err, size_t errlen);

#endif

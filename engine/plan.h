/* Time budgets for fine-tuning runs: what a run costs on this machine (measured seconds per
 * image of the real model) and which plan finishes within a budget. ft_plan is a pure function
 * of the rule's resolution, the dataset's size, the measured costs and the budget; the
 * measurement (ft_measure) is the only part that runs the model. */
#ifndef BIT_PLAN_H
#define BIT_PLAN_H

#include "finetune.h"

/* Seconds per image at one crop, measured on the real architecture. */
typedef struct ft_cost {
    double train_s; /* forward + backward + its share of the update, at the run's micro-batch */
    double infer_s; /* forward only (features, evaluation) */
} ft_cost;

typedef struct ft_plan_in {
    ft_resolved rule;       /* the HyperRule with the request's explicit values, resolved */
    int64_t train_images, val_images;
    int classes, features;  /* the head's shape: classes x feature width */
    int64_t params;         /* of the model (checkpoints cost their bytes) */
    double budget_s;
    int fixed_res, fixed_steps, fixed_mode; /* the request set these: the budget keeps them */
    /* The cost at a crop (0), or nonzero when it cannot be had. */
    int (*cost)(void *ud, int crop, ft_cost *c);
    void *ud;
} ft_plan_in;

/* The crops a budget may fall back to, largest first: the rule's crop times 1, 4/5, 3/5,
 * 7/15 and 4/15 (480 -> 384 -> 288 -> 224 -> 128 for the paper's rule), multiples of 8, at
 * least 32; precrop keeps the rule's precrop/crop ratio. Returns how many (<= 5). */
int ft_plan_ladder(int precrop, int crop, int precrops[5], int crops[5]);

/* Predicted seconds of r on in's dataset at cost c (r.mode decides which formula). */
double ft_plan_predict(const ft_resolved *r, const ft_plan_in *in, const ft_cost *c);

/* Chooses, in this order, the first plan that fits in->budget_s: the rule's resolution and
 * steps; fewer steps (the schedule's shape scaled, at least a fifth of the rule's and 50); a
 * lower resolution from the ladder (with the rule's steps, then fewer); the linear mode at
 * the largest resolution that fits. What the request fixed is never changed (a fixed plan
 * that does not fit is kept and predicted as it is). *out gets the plan with budget_s and
 * predicted_s set. ENG_EINVAL when nothing fits, naming the minimum feasible budget. */
int ft_plan(const ft_plan_in *in, ft_resolved *out, char *err, size_t errlen);

/* Measures the cost of base (an official-schema checkpoint) at crop: a trainer at micro-batch
 * micro (a new head of `classes` outputs) for a few timed steps, and the forward pass, under
 * the calling thread's OpenMP budget. Takes seconds (more at high resolution). */
int ft_measure(const char *base, int classes, int crop, int micro, eng_precision prec,
               ft_cost *out, char *err, size_t errlen);

#endif

/* The BiT-HyperRule: resolution, schedule and MixUp from a dataset's size and image size,
 * and the learning rate at each step. Pure functions over caller-owned values. */
#ifndef BIT_HYPER_H
#define BIT_HYPER_H

#include <stdint.h>

#define ENG_MAX_SCHEDULE 16

typedef struct eng_hyper {
    int precrop, crop;                 /* resize to precrop, random crop to crop */
    int64_t schedule[ENG_MAX_SCHEDULE]; /* warm-up end, decay steps..., last = total steps */
    int nsched;
    int batch;
    double base_lr, mixup_alpha;
} eng_hyper;

/* The rule as the paper gives it, for train_images training examples whose median original
 * size is median_w x median_h (area under 96 x 96: 160/128, else 512/480). */
void eng_hyper_rule(int64_t train_images, int median_w, int median_h, eng_hyper *h);
/* The resolution the released BiT models were pre-trained at, which the rule's sizes assume. */
#define ENG_HYPER_PRETRAIN_RES 224
/* Scales the rule's resolution to a base model pre-trained at pretrain_res instead of 224:
 * crop = round(crop * pretrain_res / 224), at least ENG_MIN_RES (32), and precrop keeps its
 * ratio to crop (so 56 gives 40/32 and 128/120). 224 leaves the rule exactly as it is. */
void eng_hyper_scale_res(eng_hyper *h, int pretrain_res);
/* Rescales the rule's schedule to `steps` total steps, keeping the proportions. */
void eng_hyper_scale_steps(eng_hyper *h, int64_t steps);
/* Learning rate at step: base * step / schedule[0] during warm-up (exactly 0 at step 0), then
 * base / 10 for every later boundary strictly below step; < 0 once step >= the last. */
double eng_hyper_lr(const eng_hyper *h, int64_t step);

#endif

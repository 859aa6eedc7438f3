#include "hyper.h"

#include "arch.h"

void eng_hyper_rule(int64_t train_images, int median_w, int median_h, eng_hyper *h)
{
    static const int64_t small[] = {100, 200, 300, 400, 500};
    static const int64_t medium[] = {500, 3000, 6000, 9000, 10000};
    static const int64_t large[] = {500, 6000, 12000, 18000, 20000};
    const int64_t *s = train_images < 20000 ? small : train_images < 500000 ? medium : large;
    int lowres = (int64_t)median_w * median_h < 96 * 96;
    h->precrop = lowres ? 160 : 512;
    h->crop = lowres ? 128 : 480;
    h->nsched = 5;
    for (int i = 0; i < 5; i++) h->schedule[i] = s[i];
    h->batch = 512;
    h->base_lr = 0.003;
    h->mixup_alpha = train_images < 20000 ? 0.0 : 0.1;
}

/* Scaling both sides alike keeps what the rule means: fine-tune small images below the
 * pre-training size (128 of 224) and large ones a little above it (480 of 224 is the FixRes
 * effect: test-time objects look larger than the random crops seen in training). */
void eng_hyper_scale_res(eng_hyper *h, int pretrain_res)
{
    if (pretrain_res == ENG_HYPER_PRETRAIN_RES) return;
    int64_t crop = ((int64_t)h->crop * pretrain_res + ENG_HYPER_PRETRAIN_RES / 2) / ENG_HYPER_PRETRAIN_RES;
    if (crop < ENG_MIN_RES) crop = ENG_MIN_RES;
    h->precrop = (int)(((int64_t)h->precrop * crop + h->crop / 2) / h->crop);
    h->crop = (int)crop;
}

void eng_hyper_scale_steps(eng_hyper *h, int64_t steps)
{
    int64_t last = h->schedule[h->nsched - 1], prev = 0;
    for (int i = 0; i < h->nsched; i++) {
        int64_t v = h->schedule[i] * steps / last;
        /* keep boundaries strictly increasing and the warm-up at least one step */
        if (v <= prev) v = prev + 1;
        h->schedule[i] = prev = v;
    }
    h->schedule[h->nsched - 1] = steps > prev ? steps : prev;
}

double eng_hyper_lr(const eng_hyper *h, int64_t step)
{
    const int64_t *s = h->schedule;
    if (step < s[0]) return h->base_lr * (double)step / (double)s[0];
    if (step >= s[h->nsched - 1]) return -1;
    double lr = h->base_lr;
    for (int i = 1; i < h->nsched; i++)
        if (s[i] < step) lr /= 10;
    return lr;
}

#include "hyper.h"

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

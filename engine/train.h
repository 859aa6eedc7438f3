/* The fine-tuning engine: a forward pass that keeps what backward needs, gradients of every
 * parameter (convolutions through oneDNN; GroupNorm, Weight Standardization, the zero-padded
 * max-pool and the head by us), and SGD with momentum. In bf16 the convolutions read and write
 * bf16; master weights, momentum, WS, gradient sums, the loss and the update stay f32. An
 * eng_trainer owns the parameters, momentum buffers, gradients and every buffer of its
 * micro-batch shape (a step allocates nothing); one thread drives it, its OpenMP budget (as
 * when it was made, or less) doing the work. */
#ifndef BIT_TRAIN_H
#define BIT_TRAIN_H

#include "net.h"

typedef struct eng_trainer eng_trainer;

typedef struct eng_train_opts {
    eng_precision precision;
    int micro_batch; /* examples per forward/backward */
    int h, w;        /* input size of every micro-batch */
    eng_prof *prof;  /* borrowed; time per pass kind is added here */
} eng_train_opts;

/* Takes the parameters of ckpt (architecture a, head included) as the starting point. */
int eng_trainer_new(const eng_npz *ckpt, const eng_arch *a, const eng_train_opts *o,
                    eng_trainer **out, char *err, size_t errlen);
void eng_trainer_free(eng_trainer *t);
/* The precision the trainer computes in (never AUTO). */
eng_precision eng_trainer_precision(const eng_trainer *t);

/* One micro-batch: x [micro, 3, h, w], labels y (and, for MixUp, partner labels y2 with
 * weight 1 - lam; y2 NULL means lam = 1). loss = mean over the micro-batch of
 * lam * CE(y) + (1 - lam) * CE(y2); *loss receives it. Adds scale * d(loss)/d(param) to the
 * gradients (scale = 1 / batch_split). Optionally writes the logits [micro, classes]. */
int eng_trainer_step(eng_trainer *t, const float *x, const int64_t *y, const int64_t *y2,
                     float lam, float scale, double *loss, float *logits, char *err,
                     size_t errlen);
/* Forward only (evaluation at the training shape): logits [micro, classes]. */
int eng_trainer_logits(eng_trainer *t, const float *x, float *logits, char *err, size_t errlen);
/* SGD in PyTorch's form: buf = momentum * buf + grad (+ wd * p for conv kernels);
 * p -= lr * buf; then gradients are zeroed and the kernels re-standardised. */
int eng_trainer_update(eng_trainer *t, double lr, double momentum, double wd_conv, char *err,
                       size_t errlen);

/* Copies out, in the official BiT schema: parameters, momentum buffers, gradients. */
int eng_trainer_params(const eng_trainer *t, eng_npz **out);
int eng_trainer_momentum(const eng_trainer *t, eng_npz **out);
int eng_trainer_grads(eng_trainer *t, eng_npz **out); /* sums pending micro-batches first */
/* Restores momentum buffers saved by eng_trainer_momentum (resume). */
int eng_trainer_set_momentum(eng_trainer *t, const eng_npz *m, char *err, size_t errlen);

#endif

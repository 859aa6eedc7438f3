/* The linear-evaluation protocol's head: multinomial logistic (softmax) regression on fixed
 * features, fitted by full-batch L-BFGS, with its L2 strength chosen on a validation split.
 * Pure computation on caller-owned arrays (row-major); uses oneDNN's sgemm under the calling
 * thread's OpenMP budget. */
#ifndef BIT_LINEAR_H
#define BIT_LINEAR_H

#include <stdint.h>

/* n examples of f features (x, row-major) with labels y in [0, k). */
typedef struct ft_lin_data {
    const float *x;
    const int64_t *y;
    int64_t n;
    int f, k;
} ft_lin_data;

/* Minimises mean cross-entropy + l2 / 2 * |W|^2 (the bias is not penalised) over W [k, f] and
 * b [k], starting from their values (warm start), for at most iters L-BFGS iterations (memory
 * 10, Armijo backtracking). *loss receives the final objective. ENG_ENOMEM, ENG_EDNNL. */
int ft_lin_fit(const ft_lin_data *d, double l2, int iters, float *w, float *b, double *loss);

/* Top-1 accuracy of (W, b) on d. */
double ft_lin_accuracy(const ft_lin_data *d, const float *w, const float *b);

/* The L2 strengths tried, strongest first, and the iterations of the first fit and of each
 * warm-started one after it. */
#define FT_LIN_NGRID 6
extern const double ft_lin_grid[FT_LIN_NGRID];
#define FT_LIN_FIRST_ITERS 100
#define FT_LIN_PATH_ITERS 60

/* Fits along the grid (warm-starting each from the last), keeps the (W, b) of the best
 * validation top-1 (ties: the stronger L2); *l2 and *val_top1 say which. progress(ud, i) is
 * called after fit i (may be NULL). */
int ft_lin_select(const ft_lin_data *train, const ft_lin_data *val, float *w, float *b,
                  double *l2, double *val_top1, void (*progress)(void *ud, int i), void *ud);

/* A prediction of ft_lin_select's seconds for n examples (for time budgets). */
double ft_linear_head_seconds(int64_t n, int features, int classes);

#endif

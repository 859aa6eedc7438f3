/* Deterministic random numbers (xoshiro256** seeded by splitmix64): the same seed gives the
 * same stream on every machine and thread count. The state is a plain value the caller owns. */
#ifndef BIT_RNG_H
#define BIT_RNG_H

#include <stdint.h>

typedef struct eng_rng { uint64_t s[4]; } eng_rng;

void eng_rng_seed(eng_rng *r, uint64_t seed);
/* Seeds from several values (e.g. seed, epoch, index) so that each draw site has its own
 * stream that does not depend on the order things run in. */
void eng_rng_seed3(eng_rng *r, uint64_t a, uint64_t b, uint64_t c);
uint64_t eng_rng_u64(eng_rng *r);
double eng_rng_uniform(eng_rng *r);            /* [0, 1) */
uint64_t eng_rng_below(eng_rng *r, uint64_t n); /* [0, n), unbiased; n > 0 */
double eng_rng_normal(eng_rng *r);             /* standard normal */
double eng_rng_gamma(eng_rng *r, double shape); /* Gamma(shape, 1), shape > 0 */
double eng_rng_beta(eng_rng *r, double a, double b); /* Beta(a, b): MixUp's lambda */

#endif

#include "rng.h"

#include <math.h>

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void eng_rng_seed(eng_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&seed);
}

void eng_rng_seed3(eng_rng *r, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = a;
    uint64_t h = splitmix(&x) ^ b;
    h = splitmix(&h) ^ c;
    eng_rng_seed(r, splitmix(&h));
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t eng_rng_u64(eng_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double eng_rng_uniform(eng_rng *r) { return (double)(eng_rng_u64(r) >> 11) * 0x1.0p-53; }

uint64_t eng_rng_below(eng_rng *r, uint64_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n, x;
    do x = eng_rng_u64(r);
    while (x >= limit);
    return x % n;
}

double eng_rng_normal(eng_rng *r)
{
    double u = eng_rng_uniform(r), v = eng_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u)) * cos(2.0 * M_PI * v);
}

double eng_rng_gamma(eng_rng *r, double shape)
{
    if (shape < 1) { /* boost: Gamma(a) = Gamma(a + 1) * U^(1/a) */
        double u = eng_rng_uniform(r);
        return eng_rng_gamma(r, shape + 1) * pow(1.0 - u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3, c = 1.0 / sqrt(9 * d); /* Marsaglia and Tsang */
    for (;;) {
        double x = eng_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = 1.0 - eng_rng_uniform(r);
        if (log(u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

double eng_rng_beta(eng_rng *r, double a, double b)
{
    double x = eng_rng_gamma(r, a), y = eng_rng_gamma(r, b);
    return x + y > 0 ? x / (x + y) : 0.5;
}

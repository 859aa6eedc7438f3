#include "names.h"

#include <stdio.h>
#include <string.h>

#define MAX_NAME 64

/* Levenshtein distance plus adjacent transpositions ("sted" for "steps" is two edits). */
static size_t distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > MAX_NAME || m > MAX_NAME) return (size_t)-1;
    size_t d[MAX_NAME + 1][MAX_NAME + 1];
    for (size_t i = 0; i <= n; i++) d[i][0] = i;
    for (size_t j = 0; j <= m; j++) d[0][j] = j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            size_t best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

const char *eng_nearest(const char *word, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t bd = (size_t)-1;
    for (size_t i = 0; word && i < n; i++) {
        size_t d = distance(word, names[i]), limit = strlen(names[i]) / 3;
        if (limit < 2) limit = 2;
        if (d <= limit && d < bd) best = names[i], bd = d;
    }
    return best;
}

const char *eng_names_hint(char *buf, size_t len, const char *word, const char *const *names,
                           size_t n, const char *prefix)
{
    const char *near = eng_nearest(word, names, n);
    size_t o = 0;
    if (!len) return buf;
    buf[0] = 0;
#define PUT(...) (o += (size_t)snprintf(buf + o, o < len ? len - o : 0, __VA_ARGS__))
    if (near) PUT("did you mean %s%s? ", prefix, near);
    PUT("one of: ");
    for (size_t i = 0; i < n; i++) PUT("%s%s%s", i ? ", " : "", prefix, names[i]);
#undef PUT
    if (o >= len && len > 4) memcpy(buf + len - 4, "...", 4);
    return buf;
}

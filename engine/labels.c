#include "labels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LABELS 1000000

void eng_labels_free(eng_labels *l)
{
    if (!l) return;
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    free(l);
}

const char *eng_labels_get(const eng_labels *l, int i)
{
    return l && i >= 0 && i < l->n ? l->names[i] : NULL;
}

int eng_labels_load(const char *path, eng_labels **out, char *err, size_t errlen)
{
    void *buf;
    size_t len;
    *out = NULL;
    int rc = eng_file_read(path, (size_t)64 << 20, &buf, &len, err, errlen);
    if (rc) return rc;
    eng_labels *l = calloc(1, sizeof *l);
    int cap = 0;
    char *s = buf, *end = s + len;
    while (l && s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s)), *e = nl ? nl : end;
        size_t n = (size_t)(e - s);
        if (n && s[n - 1] == '\r') n--;
        if (n > 4096 || l->n == MAX_LABELS) {
            rc = eng_errf(err, errlen, ENG_ELIMIT, "%s: line %d too long or too many lines", path, l->n + 1);
            goto fail;
        }
        if (l->n == cap) {
            cap = cap ? 2 * cap : 256;
            char **nn = realloc(l->names, sizeof *nn * (size_t)cap);
            if (!nn) goto oom;
            l->names = nn;
        }
        if (!(l->names[l->n] = strndup(s, n))) goto oom;
        l->n++;
        s = e + 1;
    }
    if (!l) goto oom;
    free(buf);
    *out = l;
    return 0;
oom:
    rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
fail:
    free(buf);
    eng_labels_free(l);
    return rc;
}

int eng_topk(const float *logits, int classes, int topk, int *idx, float *prob)
{
    if (topk > classes) topk = classes;
    double mx = logits[0], sum = 0;
    for (int j = 1; j < classes; j++) mx = logits[j] > mx ? logits[j] : mx;
    for (int j = 0; j < classes; j++) sum += exp(logits[j] - mx);
    int n = 0;
    for (int j = 0; j < classes; j++) { /* insertion into a short sorted list */
        if (n == topk && logits[j] <= logits[idx[n - 1]]) continue;
        int p = n < topk ? n++ : n - 1;
        while (p > 0 && logits[idx[p - 1]] < logits[j]) idx[p] = idx[p - 1], p--;
        idx[p] = j;
    }
    for (int i = 0; i < n; i++) prob[i] = (float)(exp(logits[idx[i]] - mx) / sum);
    return n;
}

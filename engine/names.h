/* Names people type (options, fields, query parameters, statuses): when one is unknown, the
 * answer names the nearest known one and lists them all. Pure functions; the lists and the
 * output buffers are the caller's. */
#ifndef BIT_NAMES_H
#define BIT_NAMES_H

#include <stddef.h>

/* The known name closest to word (optimal string alignment distance, at most 2 edits, or a
 * third of the name's length for long names), or NULL when none is close. Ties: the first. */
const char *eng_nearest(const char *word, const char *const *names, size_t n);

/* Writes "did you mean NEAREST? one of: A, B, C" (or "one of: A, B, C" when none is near)
 * into buf, each name between prefix and suffix (e.g. "--" and ""); returns buf. */
const char *eng_names_hint(char *buf, size_t len, const char *word, const char *const *names,
                           size_t n, const char *prefix);

#endif

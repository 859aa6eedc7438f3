/* Running the bit binary from C tests as a user would: `bit ARGS` with stdout to a file and
 * stderr kept in the test's scratch directory (t_tmpdir), then checks on what it printed. */
#ifndef BIT_TCLI_H
#define BIT_TCLI_H

#include <sys/wait.h>

#include "common.h"
#include "t.h"

/* Runs `ENV $BIT_BIN ARGS` (./bit without BIT_BIN; ENV: assignments for the shell, or "")
 * with stdout to out_path (if given) and stderr to stderr.txt in t_tmpdir(); returns the exit
 * status, -1 when it did not exit normally. */
static inline int bit_env(const char *env, const char *args, const char *out_path)
{
    char cmd[8192];
    const char *bin = getenv("BIT_BIN");
    snprintf(cmd, sizeof cmd, "%s %s %s >%s 2>%s/stderr.txt", env, bin ? bin : "./bit", args,
             out_path ? out_path : "/dev/null", t_tmpdir());
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int bit(const char *args, const char *out_path) { return bit_env("", args, out_path); }

/* Whether the last bit()'s stderr contains needle; says what it held when not. */
static inline int stderr_has(const char *needle)
{
    char path[600], e[256];
    void *buf;
    size_t len;
    snprintf(path, sizeof path, "%s/stderr.txt", t_tmpdir());
    if (eng_file_read(path, 1 << 20, &buf, &len, e, sizeof e)) return 0;
    char *s = realloc(buf, len + 1);
    if (!s) return free(buf), 0;
    s[len] = 0;
    int found = strstr(s, needle) != NULL;
    if (!found) fprintf(stderr, "  stderr lacks '%s': %s\n", needle, s);
    free(s);
    return found;
}

#endif

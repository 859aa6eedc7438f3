#include "server/cmd/cli_live.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ftjson.h"

void cli_live_init(cli_live *l, FILE *f)
{
    memset(l, 0, sizeof *l);
    l->f = f;
    l->tty = isatty(fileno(f));
}

/* Back to the start of the live line and erase it (ECMA-48 "erase in line"). */
static void clear_live(cli_live *l)
{
    if (l->line[0]) fputs("\r\033[K", l->f);
}

void cli_live_progress(cli_live *l, int64_t step, int64_t total, double loss, double lr,
                       double ips, double eta_s)
{
    if (!l->tty) return;
    size_t o = 0, n = sizeof l->line;
#define PUT(...) (o += (size_t)snprintf(l->line + o, o < n ? n - o : 0, __VA_ARGS__))
    PUT("step %lld/%lld", (long long)step, (long long)total);
    if (!isnan(loss)) PUT("  loss %.4f", loss);
    if (!isnan(lr)) PUT("  lr %.5f", lr);
    if (!isnan(ips) && ips > 0) PUT("  %.1f img/s", ips);
    if (!isnan(eta_s) && eta_s >= 0) PUT("  eta %.0fs", eta_s);
#undef PUT
    fprintf(l->f, "\r\033[K%s", l->line);
    fflush(l->f);
}

void cli_live_note(cli_live *l, const char *fmt, ...)
{
    va_list ap;
    clear_live(l);
    va_start(ap, fmt);
    vfprintf(l->f, fmt, ap);
    va_end(ap);
    fputc('\n', l->f);
    if (l->tty && l->line[0]) fputs(l->line, l->f);
    fflush(l->f);
}

void cli_live_end(cli_live *l)
{
    if (l->tty && l->line[0]) fputc('\n', l->f);
    l->line[0] = 0;
    fflush(l->f);
}

double cli_json_num(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

const char *cli_json_str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

int cli_event_text(const json_t *ev, char *buf, size_t len)
{
    const char *type = cli_json_str(ev, "type");
    json_t *stepv = json_object_get(ev, "step");
    char step[32] = "";
    if (json_is_integer(stepv)) snprintf(step, sizeof step, "step %lld: ", (long long)json_integer_value(stepv));
    if (!strcmp(type, "eval")) {
        snprintf(buf, len, "%sval top-1 %.4f  top-5 %.4f  loss %.4f", step, cli_json_num(ev, "val_top1"),
                 cli_json_num(ev, "val_top5"), cli_json_num(ev, "val_loss"));
    } else if (!strcmp(type, "checkpoint")) {
        snprintf(buf, len, "%scheckpoint saved%s%s", step, *cli_json_str(ev, "path") ? " in " : "", cli_json_str(ev, "path"));
    } else if (!strcmp(type, "status")) {
        const char *why = *cli_json_str(ev, "error_message") ? cli_json_str(ev, "error_message") : cli_json_str(ev, "note");
        snprintf(buf, len, "status: %s%s%s%s%s", cli_json_str(ev, "from"), *cli_json_str(ev, "from") ? " -> " : "",
                 cli_json_str(ev, "to"), *why ? ": " : "", why);
    } else if (!strcmp(type, "start")) {
        ft_resolved r;
        char flags[600] = "?";
        if (!ft_resolved_from_json(json_object_get(ev, "hyperparameters"), &r))
            ft_resolved_flags(&r, flags, sizeof flags);
        snprintf(buf, len, "%s at step %lld of %lld (%s, %lld training images, %lld classes); resolved: %s",
                 json_is_true(json_object_get(ev, "resume")) ? "resuming" : "starting",
                 (long long)json_integer_value(stepv),
                 (long long)json_integer_value(json_object_get(ev, "total_steps")),
                 *cli_json_str(ev, "architecture") ? cli_json_str(ev, "architecture") : "?",
                 (long long)json_integer_value(json_object_get(ev, "train_images")),
                 (long long)json_integer_value(json_object_get(ev, "classes")), flags);
    } else if (!strcmp(type, "train") || !*type) {
        return -1;
    } else {
        char *s = json_dumps(ev, JSON_COMPACT);
        snprintf(buf, len, "%s%s", step, s ? s : type);
        free(s);
    }
    return 0;
}

/* Progress on a terminal: one live line (redrawn in place) under finished lines, for bit
 * finetune/pretrain and bit job watch. A note clears the live line, prints itself and redraws
 * the live line below it, so nothing is ever printed into the middle of it. Without a
 * terminal there is no live line and notes are plain lines. */
#ifndef BIT_CLI_LIVE_H
#define BIT_CLI_LIVE_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

typedef struct cli_live {
    FILE *f;
    int tty;
    char line[256]; /* the live line, "" when none is shown */
} cli_live;

void cli_live_init(cli_live *l, FILE *f);
/* lr, ips, eta_s: NAN (or eta < 0) when unknown, then left out. */
void cli_live_progress(cli_live *l, int64_t step, int64_t total, double loss, double lr,
                       double ips, double eta_s);
void cli_live_note(cli_live *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ends the live line with a newline, so what follows starts on a line of its own. */
void cli_live_end(cli_live *l);

/* An event of a run or a job ({"type": "eval"|"checkpoint"|"status"|"start", ...}) as one
 * line for people; 0 when it is worth a line (train events are progress, not lines). */
int cli_event_text(const json_t *ev, char *buf, size_t len);

/* A number field of o (NAN when absent or not a number); a string field ("" when absent). */
double cli_json_num(const json_t *o, const char *k);
const char *cli_json_str(const json_t *o, const char *k);

#endif

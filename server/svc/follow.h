/* The follower: one thread that hands new job events to every live follow (svc_job_follow),
 * so a listener costs a small record here, never a thread. It polls the store's event stamp
 * (cheap: no query while nothing was written) and reads each followed job's events once per
 * change for all its followers. A fol borrows its store; the follows are described in svc.h. */
#ifndef BIT_FOLLOW_H
#define BIT_FOLLOW_H

#include <stddef.h>

#include "server/svc/svc.h"

typedef struct fol fol;

/* max: follows that may exist at once (created, not yet ended); 0: 64. */
int fol_new(store *st, unsigned max, fol **out, char *err, size_t errlen);
int fol_start(fol *f, char *err, size_t errlen);
/* Ends every follow (end(ud, NULL)) and joins the thread; follows started later end at once.
 * Idempotent; fol_free calls it. */
void fol_stop(fol *f);
void fol_free(fol *f);
/* A new follow that has not started, or NULL at the limit (SVC_EBUSY) or out of memory. */
int fol_add(fol *f, const char *job, int64_t after, const svc_follow_ops *ops, void *ud,
            svc_follow **out);
unsigned fol_count(fol *f); /* follows now, for /metrics */

#endif

/* The layout of a fine-tuning run directory, in one place: which file holds what, where the
 * checkpoints go, and what state.json says of the run. ft_run writes it; `bit predict/eval`,
 * the job worker, the model registry and the API read it through these functions only.
 * Paths are written into the caller's buffers; returned objects are the caller's. */
#ifndef BIT_RUNDIR_H
#define BIT_RUNDIR_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* The run's top-level files (each a hard link into its newest checkpoint directory). */
typedef enum {
    FT_FILE_MODEL,     /* model.npz: the official schema, new head */
    FT_FILE_LABELS,    /* labels.txt: one class name per line */
    FT_FILE_OPTIMIZER, /* optimizer.npz: momentum */
    FT_FILE_STATE,     /* state.json: step, resolved settings, classes, history */
    FT_FILE_METRICS,   /* metrics.json: the final evaluation */
    FT_FILE_CHECKPOINTS, /* checkpoints/: step-NNNNNNNNN directories */
    FT_NFILES
} ft_file;

/* What a checkpoint directory holds: the run's files but metrics.json. */
#define FT_CKPT_NFILES 4
extern const ft_file ft_ckpt_files[FT_CKPT_NFILES];

const char *ft_file_name(ft_file f);
/* run_dir/<file>; ENG_EINVAL when it does not fit. */
int ft_rundir_path(const char *run_dir, ft_file f, char *buf, size_t len);
/* run_dir/checkpoints/step-NNNNNNNNN (or .tmp-STEP-PID while it is being written). */
int ft_rundir_checkpoint(const char *run_dir, int64_t step, char *buf, size_t len);
int ft_rundir_checkpoint_tmp(const char *run_dir, int64_t step, char *buf, size_t len);
/* 1 when run_dir already holds a run (a checkpoints directory): resume it, do not overwrite. */
int ft_rundir_has_run(const char *run_dir);
/* The newest complete checkpoint directory; ENG_ENOTFOUND when there is none. */
int ft_rundir_newest(const char *run_dir, char *buf, size_t len);

typedef struct ft_checkpoint {
    int64_t step, bytes; /* bytes: its model.npz */
    int64_t mtime_ms;
} ft_checkpoint;
/* Complete checkpoints, oldest first, into a malloc'd array (*out, *n; free()). A missing
 * run directory is an empty list. */
int ft_rundir_checkpoints(const char *run_dir, ft_checkpoint **out, size_t *n, char *err,
                          size_t errlen);
/* Removes all but the newest keep checkpoints and the one at step also (-1: none). */
void ft_rundir_prune(const char *run_dir, int keep, int64_t also);

/* What state.json says of a run (a run directory or one of its checkpoints). */
typedef struct ft_run_info {
    int64_t step, total_steps;
    int precrop, crop;      /* the resolution it trained at */
    int64_t seed;           /* the hold-out seed */
    char architecture[32];  /* "R50x1", "custom" */
    json_t *classes;        /* array of class names (the caller's: json_decref) */
    json_t *resolved;       /* the resolved settings (the caller's) */
} ft_run_info;
/* ENG_ENOTFOUND when dir has no state.json, ENG_EFORMAT when it does not parse. */
int ft_rundir_info(const char *dir, ft_run_info *info, char *err, size_t errlen);
void ft_run_info_clear(ft_run_info *info);

/* What to remove of a run directory; missing files are fine. */
typedef enum {
    FT_RM_ALL,        /* the directory and everything in it */
    FT_RM_KEEP_MODEL, /* all but model.npz and labels.txt (a registered model still uses them) */
    FT_RM_MODEL,      /* model.npz, labels.txt, optimizer.npz (the model was deleted) */
} ft_rm;
int ft_rundir_remove(const char *run_dir, ft_rm what, char *err, size_t errlen);

#endif

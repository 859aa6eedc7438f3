#include "rundir.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arc.h"
#include "common.h"

static const char *const names[FT_NFILES] = {"model.npz", "labels.txt", "optimizer.npz",
                                             "state.json", "metrics.json", "checkpoints"};

const ft_file ft_ckpt_files[FT_CKPT_NFILES] = {FT_FILE_MODEL, FT_FILE_OPTIMIZER, FT_FILE_LABELS,
                                               FT_FILE_STATE};

const char *ft_file_name(ft_file f) { return f >= 0 && f < FT_NFILES ? names[f] : "?"; }

int ft_rundir_path(const char *run_dir, ft_file f, char *buf, size_t len)
{
    return eng_path_join(buf, len, run_dir, ft_file_name(f));
}

static int fits(char *buf, size_t len, int n)
{
    if (n >= 0 && (size_t)n < len) return 0;
    if (len) buf[0] = 0;
    return ENG_EINVAL;
}

int ft_rundir_checkpoint(const char *run_dir, int64_t step, char *buf, size_t len)
{
    return fits(buf, len, snprintf(buf, len, "%s/checkpoints/step-%09lld", run_dir, (long long)step));
}

int ft_rundir_checkpoint_tmp(const char *run_dir, int64_t step, char *buf, size_t len)
{
    return fits(buf, len, snprintf(buf, len, "%s/checkpoints/.tmp-%lld-%ld", run_dir,
                                   (long long)step, (long)getpid()));
}

int ft_rundir_has_run(const char *run_dir)
{
    char p[4200];
    struct stat sb;
    return !ft_rundir_path(run_dir, FT_FILE_CHECKPOINTS, p, sizeof p) && stat(p, &sb) == 0;
}

/* "step-" followed by digits only: anything else in checkpoints/ is not a checkpoint. */
static int64_t step_of(const char *name)
{
    if (strncmp(name, "step-", 5) || !name[5] || strlen(name) > 24) return -1;
    int64_t v = 0;
    for (const char *c = name + 5; *c; c++) {
        if (*c < '0' || *c > '9') return -1;
        v = v * 10 + (*c - '0');
    }
    return v;
}

static int cmp_ckpt(const void *a, const void *b)
{
    int64_t x = ((const ft_checkpoint *)a)->step, y = ((const ft_checkpoint *)b)->step;
    return x < y ? -1 : x > y;
}

int ft_rundir_checkpoints(const char *run_dir, ft_checkpoint **out, size_t *n, char *err,
                          size_t errlen)
{
    char ck[4200];
    *out = NULL, *n = 0;
    if (ft_rundir_path(run_dir, FT_FILE_CHECKPOINTS, ck, sizeof ck))
        return eng_errf(err, errlen, ENG_EINVAL, "run directory path too long");
    DIR *dh = opendir(ck);
    if (!dh) return 0;
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(dh)) && !rc) {
        char f[4500];
        struct stat sb;
        int64_t step = step_of(e->d_name);
        if (step < 0 || snprintf(f, sizeof f, "%s/%s/model.npz", ck, e->d_name) >= (int)sizeof f ||
            stat(f, &sb))
            continue;
        if (*n == cap) {
            ft_checkpoint *g = realloc(*out, (cap = cap ? 2 * cap : 8) * sizeof *g);
            if (!g) {
                rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
                break;
            }
            *out = g;
        }
        (*out)[(*n)++] = (ft_checkpoint){step, (int64_t)sb.st_size,
                                         (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000};
    }
    closedir(dh);
    if (rc) {
        free(*out);
        *out = NULL, *n = 0;
        return rc;
    }
    if (*n) qsort(*out, *n, sizeof **out, cmp_ckpt);
    return 0;
}

int ft_rundir_newest(const char *run_dir, char *buf, size_t len)
{
    ft_checkpoint *l = NULL;
    size_t n = 0;
    int rc = ft_rundir_checkpoints(run_dir, &l, &n, NULL, 0);
    if (!rc) rc = n ? ft_rundir_checkpoint(run_dir, l[n - 1].step, buf, len) : ENG_ENOTFOUND;
    free(l);
    return rc;
}

void ft_rundir_prune(const char *run_dir, int keep, int64_t also)
{
    ft_checkpoint *l = NULL;
    size_t n = 0;
    if (ft_rundir_checkpoints(run_dir, &l, &n, NULL, 0)) return;
    for (size_t i = 0; i + (size_t)keep < n; i++) {
        char p[4400], e2[128];
        if (l[i].step == also) continue;
        if (!ft_rundir_checkpoint(run_dir, l[i].step, p, sizeof p)) arc_remove_tree(p, e2, sizeof e2);
    }
    free(l);
}

void ft_run_info_clear(ft_run_info *info)
{
    json_decref(info->classes);
    json_decref(info->resolved);
    memset(info, 0, sizeof *info);
}

int ft_rundir_info(const char *dir, ft_run_info *info, char *err, size_t errlen)
{
    char p[4200];
    json_error_t je;
    memset(info, 0, sizeof *info);
    if (ft_rundir_path(dir, FT_FILE_STATE, p, sizeof p))
        return eng_errf(err, errlen, ENG_EINVAL, "run directory path too long");
    if (access(p, F_OK))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "%s: not a run directory (no state.json)", dir);
    json_t *s = json_load_file(p, 0, &je);
    json_t *r = json_object_get(s, "resolved"), *res = json_object_get(r, "resolution");
    json_t *cls = json_object_get(s, "classes");
    if (!json_is_object(r) || json_array_size(res) != 2 || !json_is_array(cls)) {
        json_decref(s);
        return eng_errf(err, errlen, ENG_EFORMAT, "%s: not a run's state (%s)", p,
                        je.text[0] ? je.text : "no resolved settings or classes");
    }
    info->step = json_integer_value(json_object_get(s, "step"));
    info->total_steps = json_integer_value(json_object_get(s, "total_steps"));
    info->precrop = (int)json_integer_value(json_array_get(res, 0));
    info->crop = (int)json_integer_value(json_array_get(res, 1));
    info->seed = json_integer_value(json_object_get(r, "seed"));
    const char *arch = json_string_value(json_object_get(s, "architecture"));
    snprintf(info->architecture, sizeof info->architecture, "%s", arch ? arch : "custom");
    info->classes = json_incref(cls);
    info->resolved = json_incref(r);
    json_decref(s);
    return 0;
}

int ft_rundir_remove(const char *run_dir, ft_rm what, char *err, size_t errlen)
{
    if (what == FT_RM_ALL) return arc_remove_tree(run_dir, err, errlen);
    for (int f = 0; f < FT_NFILES; f++) {
        int model_file = f == FT_FILE_MODEL || f == FT_FILE_LABELS;
        if (what == FT_RM_KEEP_MODEL ? model_file : !(model_file || f == FT_FILE_OPTIMIZER)) continue;
        char p[4200];
        if (ft_rundir_path(run_dir, (ft_file)f, p, sizeof p)) continue;
        if (f == FT_FILE_CHECKPOINTS) arc_remove_tree(p, err, errlen);
        else unlink(p);
    }
    return 0;
}

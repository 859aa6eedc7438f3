#include "server/svc/paths.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static int put(char *buf, size_t len, int n)
{
    if (n >= 0 && (size_t)n < len) return 0;
    if (len) buf[0] = 0;
    return ENG_EINVAL;
}

static const char *const dir_names[SVC_DIR_N] = {"tmp", "datasets", "jobs"};

const char *svc_dir_name(svc_dir d) { return d < SVC_DIR_N ? dir_names[d] : ""; }

int svc_path_db(const char *data_dir, char *buf, size_t len)
{
    return eng_path_join(buf, len, data_dir, "bit.db");
}

int svc_path_tmp(const char *data_dir, char *buf, size_t len)
{
    return eng_path_join(buf, len, data_dir, dir_names[SVC_DIR_TMP]);
}

int svc_path_dataset_dir(const char *data_dir, const char *id, char *buf, size_t len)
{
    return put(buf, len, snprintf(buf, len, "%s/%s/%s", data_dir, dir_names[SVC_DIR_DATASETS], id));
}

int svc_path_dataset_stage(const char *data_dir, const char *id, char *buf, size_t len)
{
    return put(buf, len, snprintf(buf, len, "%s/%s/" SVC_STAGE_PREFIX "%s", data_dir,
                                  dir_names[SVC_DIR_DATASETS], id));
}

int svc_path_dataset_upload(const char *dir, int npz, char *buf, size_t len)
{
    return eng_path_join(buf, len, dir, npz ? "data.npz" : "upload");
}

int svc_path_dataset_data(const char *data_dir, const char *id, char *buf, size_t len)
{
    const char *ds = dir_names[SVC_DIR_DATASETS];
    if (put(buf, len, snprintf(buf, len, "%s/%s/%s/data.npz", data_dir, ds, id))) return ENG_EINVAL;
    if (access(buf, R_OK) == 0) return 0;
    return put(buf, len, snprintf(buf, len, "%s/%s/%s/data", data_dir, ds, id));
}

int svc_path_job_dir(const char *data_dir, const char *id, char *buf, size_t len)
{
    return put(buf, len, snprintf(buf, len, "%s/%s/%s", data_dir, dir_names[SVC_DIR_JOBS], id));
}

int svc_paths_make(const char *data_dir, char *err, size_t errlen)
{
    for (int i = -1; i < SVC_DIR_N; i++) { /* -1: the data directory itself */
        char p[4200];
        if (put(p, sizeof p, snprintf(p, sizeof p, "%s%s%s", data_dir, i < 0 ? "" : "/",
                                      i < 0 ? "" : dir_names[i])))
            return eng_errf(err, errlen, ENG_EINVAL, "data directory path too long");
        if (mkdir(p, 0755) && errno != EEXIST)
            return eng_errf(err, errlen, ENG_EIO, "%s: %s", p, strerror(errno));
    }
    return 0;
}

int svc_path_base(const char *models_dir, const char *name, svc_base_file f, char *buf,
                  size_t len)
{
    static const char *suffix[] = {".npz", ".labels.txt", ".json"};
    return put(buf, len, snprintf(buf, len, "%s/%s%s", models_dir, name, suffix[f]));
}

void svc_path_scrub(char *msg, size_t len, const char *data_dir, const char *models_dir)
{
    const char *dirs[2] = {data_dir, models_dir}, *names[2] = {"data", "models"};
    for (int i = 0; i < 2; i++) {
        size_t dl = dirs[i] ? strlen(dirs[i]) : 0, nl = strlen(names[i]), o = 0;
        if (dl < 2) continue;
        char out[4096];
        for (const char *p = msg; *p && o + 1 < sizeof out;) {
            if (!strncmp(p, dirs[i], dl) && o + nl + 1 < sizeof out) {
                memcpy(out + o, names[i], nl);
                o += nl, p += dl;
            } else {
                out[o++] = *p++;
            }
        }
        out[o] = 0;
        snprintf(msg, len, "%s", out);
    }
}

#include "server/svc/registry.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "arch.h"
#include "modelmeta.h"
#include "preproc.h"
#include "rundir.h"
#include "server/svc/paths.h"

/* The resolution a base checkpoint carries, by file version: reading it scans the archive,
 * which every classify request would otherwise pay (milliseconds for an R50). */
typedef struct res_memo {
    char path[4200];
    int64_t mtime_ns, size;
    int resolution; /* 0: the file carries none */
} res_memo;

struct reg {
    reg_config cfg;
    pthread_mutex_t mu; /* memo */
    res_memo memo[8];
    unsigned next;
};

int reg_new(const reg_config *cfg, reg **out, char *err, size_t errlen)
{
    reg *r = calloc(1, sizeof *r);
    if (!r) return eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    r->cfg = *cfg;
    pthread_mutex_init(&r->mu, NULL);
    if (r->cfg.base_resolution < ENG_MIN_RES) r->cfg.base_resolution = 128;
    *out = r;
    return 0;
}

void reg_free(reg *r)
{
    if (!r) return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* The resolution inside a checkpoint (0: none), from the memo while the file is unchanged. */
static int carried_resolution(reg *r, const char *path)
{
    struct stat sb;
    if (stat(path, &sb)) return 0;
    int64_t mt = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < sizeof r->memo / sizeof r->memo[0]; i++) {
        const res_memo *e = &r->memo[i];
        if (e->mtime_ns == mt && e->size == (int64_t)sb.st_size && !strcmp(e->path, path)) {
            int v = e->resolution;
            pthread_mutex_unlock(&r->mu);
            return v;
        }
    }
    pthread_mutex_unlock(&r->mu);
    eng_meta meta;
    int v = 0;
    if (!eng_meta_read(path, &meta, NULL, 0) && meta.resolution >= ENG_MIN_RES &&
        meta.resolution <= PRE_MAX_SIDE)
        v = meta.resolution;
    eng_meta_clear(&meta);
    if (strlen(path) < sizeof r->memo[0].path) {
        pthread_mutex_lock(&r->mu);
        res_memo *e = &r->memo[r->next++ % (sizeof r->memo / sizeof r->memo[0])];
        snprintf(e->path, sizeof e->path, "%s", path);
        e->mtime_ns = mt, e->size = (int64_t)sb.st_size, e->resolution = v;
        pthread_mutex_unlock(&r->mu);
    }
    return v;
}

int reg_is_id(const char *s)
{
    const char *u = s ? strchr(s, '_') : NULL;
    if (!u || u == s || u - s > 8 || strlen(u + 1) != 16) return 0;
    for (const char *c = s; c < u; c++)
        if (*c < 'a' || *c > 'z') return 0;
    for (const char *c = u + 1; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f'))) return 0;
    return 1;
}

int reg_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 200 || s[0] == '.' || reg_is_id(s)) return 0;
    for (const char *c = s; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '_' || *c == '-'))
            return 0;
    return 1;
}

/* NAME.json beside a base model may say {"resolution": R, "pretrain_resolution": P}; else
 * the size the checkpoint carries (a fine-tuned model copied in, modelmeta.h); else the
 * configured default. */
static void base_resolution(reg *r, const char *name, reg_model *m)
{
    char path[4400];
    m->resolution = r->cfg.base_resolution;
    if (svc_path_base(r->cfg.models_dir, name, SVC_BASE_JSON, path, sizeof path) || access(path, R_OK)) {
        int v = carried_resolution(r, m->path);
        if (v) m->resolution = v;
        return;
    }
    json_t *j = json_load_file(path, 0, NULL);
    json_int_t v = json_integer_value(json_object_get(j, "resolution"));
    json_int_t pv = json_integer_value(json_object_get(j, "pretrain_resolution"));
    json_decref(j);
    if (v >= ENG_MIN_RES && v <= PRE_MAX_SIDE) m->resolution = (int)v;
    if (pv >= ENG_MIN_RES && pv <= 4096) m->pretrain_resolution = (int)pv;
}

static int from_file(reg *r, const char *name, reg_model *m, char *err, size_t errlen)
{
    struct stat sb;
    if (!reg_name_ok(name) || svc_path_base(r->cfg.models_dir, name, SVC_BASE_NPZ, m->path, sizeof m->path) ||
        stat(m->path, &sb) || !S_ISREG(sb.st_mode))
        return eng_errf(err, errlen, ENG_ENOTFOUND, "no model '%s'", name);
    snprintf(m->id, sizeof m->id, "%s", name);
    snprintf(m->name, sizeof m->name, "%s", name);
    svc_path_base(r->cfg.models_dir, name, SVC_BASE_LABELS, m->labels, sizeof m->labels);
    m->base = 1;
    base_resolution(r, name, m);
    return 0;
}

/* A row's labels: NAME.labels.txt beside its file, else its run directory's labels.txt. */
static void from_row(const reg *r, reg_model *m)
{
    const store_model *row = m->row;
    size_t n = strlen(row->path);
    snprintf(m->id, sizeof m->id, "%s", row->id);
    snprintf(m->name, sizeof m->name, "%s", row->name ? row->name : row->id);
    snprintf(m->path, sizeof m->path, "%s", row->path);
    snprintf(m->labels, sizeof m->labels, "%.*s.labels.txt", n > 4 ? (int)(n - 4) : (int)n, row->path);
    if (access(m->labels, R_OK)) {
        const char *slash = strrchr(row->path, '/');
        char dir[4200];
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - row->path) : 1, slash ? row->path : ".");
        ft_rundir_path(dir, FT_FILE_LABELS, m->labels, sizeof m->labels);
    }
    m->base = !strcmp(row->kind, "base");
    m->resolution = row->resolution >= ENG_MIN_RES ? row->resolution : r->cfg.base_resolution;
}

int reg_resolve(reg *r, const char *ref, reg_model *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (!ref || !*ref) return eng_errf(err, errlen, ENG_ENOTFOUND, "no model ''");
    int rc = reg_is_id(ref) ? store_model_get(r->cfg.st, ref, &m->row, err, errlen)
                            : store_model_get_by_name(r->cfg.st, ref, &m->row, err, errlen);
    if (!rc) {
        from_row(r, m);
        return 0;
    }
    if (rc != ENG_ENOTFOUND) return rc;
    if (reg_is_id(ref)) return eng_errf(err, errlen, ENG_ENOTFOUND, "no model '%s'", ref);
    return from_file(r, ref, m, err, errlen);
}

void reg_model_clear(reg_model *m)
{
    store_model_free(m->row);
    memset(m, 0, sizeof *m);
}

void reg_models_free(reg_model *v, size_t n)
{
    for (size_t i = 0; i < n; i++) store_model_free(v[i].row);
    free(v);
}

static int npz_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return n > 4 && !strcmp(e->d_name + n - 4, ".npz");
}

static int shadowed(const store_models *l, const char *name)
{
    for (size_t k = 0; k < l->n; k++)
        if (!strcmp(l->v[k].name, name) || !strcmp(l->v[k].id, name)) return 1;
    return 0;
}

int reg_list(reg *r, reg_model **out, size_t *n, char *err, size_t errlen)
{
    store_models l = {0};
    struct dirent **ents = NULL;
    *out = NULL, *n = 0;
    int rc = store_model_list(r->cfg.st, NULL, &l, err, errlen);
    if (rc) return rc;
    int nf = scandir(r->cfg.models_dir, &ents, npz_file, alphasort);
    reg_model *v = calloc((size_t)(nf > 0 ? nf : 0) + l.n + 1, sizeof *v);
    if (!v) rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
    for (int i = 0; i < nf; i++) {
        char name[300];
        snprintf(name, sizeof name, "%.*s", (int)strlen(ents[i]->d_name) - 4, ents[i]->d_name);
        if (v && !shadowed(&l, name) && from_file(r, name, &v[*n], NULL, 0) == 0) (*n)++;
        free(ents[i]);
    }
    free(ents);
    for (size_t k = 0; v && k < l.n; k++) { /* the rows move into the list */
        store_model *row = malloc(sizeof *row);
        if (!row) {
            rc = eng_errf(err, errlen, ENG_ENOMEM, "out of memory");
            break;
        }
        *row = l.v[k];
        memset(&l.v[k], 0, sizeof l.v[k]);
        v[*n].row = row;
        from_row(r, &v[(*n)++]);
    }
    store_models_free(&l);
    if (rc) {
        reg_models_free(v, *n);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

int reg_name_free(reg *r, const char *name, char *err, size_t errlen)
{
    char path[4400];
    if (!reg_name_ok(name))
        return eng_errf(err, errlen, ENG_EINVAL, "name: '%s' is not a valid name (%s)", name, REG_NAME_RULE);
    if (!svc_path_base(r->cfg.models_dir, name, SVC_BASE_NPZ, path, sizeof path) && access(path, F_OK) == 0)
        return eng_errf(err, errlen, STORE_EEXISTS, "name: '%s' is a base model's name", name);
    return 0;
}

int reg_register_run(reg *r, const store_job *j, const char *run_dir, char id[STORE_ID_MAX],
                     char *err, size_t errlen)
{
    char model[4200], alt[300];
    ft_run_info info;
    struct stat sb;
    int rc = ft_rundir_info(run_dir, &info, err, errlen);
    if (rc) return rc;
    char *classes = json_dumps(info.classes, JSON_COMPACT);
    ft_rundir_path(run_dir, FT_FILE_MODEL, model, sizeof model);
    store_model_new m = {.name = j->name && *j->name ? j->name : j->id, .kind = "fine-tuned",
                         .path = model, .job_id = j->id, .classes_json = classes,
                         .architecture = info.architecture, .resolution = info.crop,
                         .bytes = stat(model, &sb) ? 0 : (int64_t)sb.st_size};
    rc = store_job_succeed(r->cfg.st, j->id, &m, id, err, errlen);
    if (rc == STORE_EEXISTS) { /* only if the name check at creation was raced: stay unique */
        snprintf(alt, sizeof alt, "%s-%s", m.name, j->id);
        m.name = alt;
        rc = store_job_succeed(r->cfg.st, j->id, &m, id, err, errlen);
    }
    free(classes);
    ft_run_info_clear(&info);
    return rc;
}

int reg_delete(reg *r, const reg_model *m, char *err, size_t errlen)
{
    if (!m->row) return eng_errf(err, errlen, STORE_ECONFLICT, "%s is a base model", m->name);
    int rc = store_model_delete(r->cfg.st, m->row->id, err, errlen);
    if (rc) return rc;
    /* Only files the server made: model.npz in a run directory data/jobs/<job id>/. The row's
     * job_id is gone once its job was deleted, so the path says which job. */
    char jobs[4200], dir[4200], e2[256];
    const char *path = m->row->path, *slash = strrchr(path, '/');
    size_t jl;
    if (svc_path_job_dir(r->cfg.data_dir, "", jobs, sizeof jobs) || !slash) return 0;
    jl = strlen(jobs);
    if (strncmp(path, jobs, jl) || (size_t)(slash - path) <= jl || memchr(path + jl, '/', (size_t)(slash - path) - jl))
        return 0;
    snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    store_job *j = NULL;
    int job_gone = store_job_get(r->cfg.st, dir + jl, &j, NULL, 0) == ENG_ENOTFOUND;
    store_job_free(j);
    ft_rundir_remove(dir, job_gone ? FT_RM_ALL : FT_RM_MODEL, e2, sizeof e2);
    return 0;
}

/* Models as clients see them: the registry's entries described (architecture, classes,
 * resolution, whether loaded), and deletion. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "labels.h"
#include "modelmeta.h"
#include "server/svc/svc_int.h"

void svc_model_clear(svc_model *m)
{
    json_decref(m->classes);
    memset(m, 0, sizeof *m);
}

void svc_models_free(svc_models *l)
{
    for (size_t i = 0; i < l->n; i++) svc_model_clear(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static json_t *labels_json(const char *path)
{
    eng_labels *l = NULL;
    if (access(path, R_OK) || eng_labels_load(path, &l, NULL, 0)) return NULL;
    json_t *arr = json_array();
    for (int i = 0; i < l->n; i++) json_array_append_new(arr, json_string(l->names[i]));
    eng_labels_free(l);
    return arr;
}

/* Fills out from a registry entry; ENG_EFORMAT when a base file's headers do not parse. */
int svc__describe(svc *s, const reg_model *m, svc_model *out, char *err, size_t errlen)
{
    struct stat sb;
    eng_arch ar;
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", m->id);
    snprintf(out->name, sizeof out->name, "%s", m->name);
    snprintf(out->file, sizeof out->file, "%s", m->path);
    out->kind = m->base ? "base" : "fine-tuned";
    out->resolution = m->resolution;
    out->num_classes = -1;
    if (!stat(m->path, &sb)) out->bytes = (int64_t)sb.st_size;
    out->loaded = inf_loaded(s->infer, m->path);
    if (m->row) {
        const store_model *r = m->row;
        out->classes = r->classes_json ? json_loads(r->classes_json, 0, NULL) : NULL;
        if (!json_is_array(out->classes)) json_decref(out->classes), out->classes = NULL;
        else out->num_classes = (int)json_array_size(out->classes);
        snprintf(out->architecture, sizeof out->architecture, "%s", r->architecture ? r->architecture : "");
        snprintf(out->job_id, sizeof out->job_id, "%s", r->job_id ? r->job_id : "");
        out->created_at = r->created_at;
        return 0;
    }
    out->created_at = (int64_t)sb.st_mtime * 1000;
    int rc = eng_arch_probe(m->path, &ar, err, errlen);
    if (rc) {
        snprintf(out->error, sizeof out->error, "%s", err);
        svc__scrub(s, out->error, sizeof out->error);
        return rc;
    }
    snprintf(out->architecture, sizeof out->architecture, "%s", eng_arch_name(&ar));
    out->num_classes = ar.head ? ar.head : -1;
    out->classes = labels_json(m->labels);
    eng_meta meta = {0};
    if (!out->classes && !eng_meta_read(m->path, &meta, NULL, 0) && meta.labels) {
        out->classes = json_array(); /* the names a fine-tuned model carries inside */
        for (int i = 0; i < meta.labels->n; i++) json_array_append_new(out->classes, json_string(meta.labels->names[i]));
    }
    eng_meta_clear(&meta);
    if (!out->classes && ar.head)
        snprintf(out->note, sizeof out->note, "no class names: predictions are labelled by index until "
                 "%s.labels.txt (one name per line, in head order) is put beside %s.npz", m->name, m->name);
    return 0;
}

int svc_model_list(svc *s, svc_models *out, svc_err *e)
{
    reg_model *v = NULL;
    size_t n = 0;
    char err[512];
    memset(out, 0, sizeof *out);
    int rc = reg_list(s->models, &v, &n, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    out->v = calloc(n + 1, sizeof *out->v);
    for (size_t i = 0; out->v && i < n; i++)
        if (svc__describe(s, &v[i], &out->v[out->n], err, sizeof err) == 0) out->n++;
        else svc_model_clear(&out->v[out->n]); /* a broken base file is not a model: /readyz names it */
    reg_models_free(v, n);
    return out->v ? 0 : svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
}

int svc_model_get(svc *s, const char *ref, svc_model *out, svc_err *e)
{
    reg_model m;
    char err[512];
    memset(out, 0, sizeof *out);
    int rc = reg_resolve(s->models, ref, &m, err, sizeof err);
    if (!rc) svc__describe(s, &m, out, err, sizeof err); /* a broken file is shown with its error */
    reg_model_clear(&m);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_model_delete(svc *s, const char *ref, svc_model *deleted, svc_err *e)
{
    reg_model m;
    char err[512];
    memset(deleted, 0, sizeof *deleted);
    int rc = reg_resolve(s->models, ref, &m, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    snprintf(deleted->id, sizeof deleted->id, "%s", m.id);
    snprintf(deleted->name, sizeof deleted->name, "%s", m.name);
    if (m.base) {
        rc = svc__fail(s, e, STORE_ECONFLICT, "base_model", "%s is a base model: remove its file "
                       "from the models directory instead", m.name);
    } else if ((rc = reg_delete(s->models, &m, err, sizeof err))) {
        svc__fail(s, e, rc, NULL, "%s", rc == STORE_EINUSE ? "a queued or running job uses this "
                  "model as its base: cancel it first" : err);
    } else {
        inf_forget(s->infer, m.path);
    }
    reg_model_clear(&m);
    return rc;
}

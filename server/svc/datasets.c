/* Datasets: an upload becomes datasets/<id>/ (unpacked and checked) and a row. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "server/svc/svc_int.h"

/* Moves the upload into dir and opens it as a dataset (unpacking an archive into data/). */
static int unpack_and_check(svc *s, const svc_upload *u, const char *dir, ds_dataset **d,
                            char *err, size_t errlen)
{
    char path[4200], data[4200];
    ds_opts o = {.arc = s->cfg.arc, .img = s->cfg.img};
    if (svc_path_dataset_upload(dir, u->npz, path, sizeof path) ||
        eng_path_join(data, sizeof data, dir, "data"))
        return eng_errf(err, errlen, ENG_EINVAL, "data directory path too long");
    if (rename(u->path, path))
        return eng_errf(err, errlen, eng_errno_code(errno), "cannot keep the upload: %s", strerror(errno));
    if (!u->npz) o.unpack_dir = data;
    int rc = ds_open(path, &o, d, err, errlen);
    if (!u->npz) unlink(path); /* the unpacked tree is what stays */
    return rc;
}

/* The summary the store keeps of an opened dataset (the caller frees it). */
static char *summary_of(ds_dataset *d)
{
    json_t *sum = ds_summary(d);
    char *sj = json_dumps(sum, JSON_COMPACT);
    json_decref(sum);
    return sj;
}

/* A tensor upload holds its arrays in memory while it is checked: their declared bytes are
 * reserved from the memory budget first (archives decode one small image at a time). */
static int reserve_tensors(svc *s, const svc_upload *u, uint64_t *held, svc_err *e)
{
    char err[512];
    eng_npz *h = NULL;
    uint64_t bytes = 0;
    *held = 0;
    if (!u->npz) return 0;
    int rc = eng_npz_load_headers(u->path, NULL, &h, err, sizeof err);
    for (int i = 0; !rc && i < h->n; i++) bytes += eng_tensor_bytes(h->tensors[i]);
    eng_npz_free(h);
    if (rc) return svc__fail(s, e, rc == ENG_ELIMIT ? rc : ENG_EFORMAT, rc == ENG_ELIMIT ? NULL : "invalid_dataset",
                             "%s", err);
    if ((rc = bud_reserve(s->mem, bytes, SVC_MEMORY_WAIT_MS)) == ENG_ELIMIT)
        return svc__fail(s, e, rc, NULL, "the arrays declare %llu MB, more than the server's memory "
                         "budget", (unsigned long long)(bytes >> 20));
    if (rc) {
        svc__fail(s, e, rc, "busy", "the server's memory budget is in use: try again");
        e->retry_after_s = 5;
        return rc;
    }
    *held = bytes;
    return 0;
}

/* Unpacks into datasets/.tmp-<id>, checks it, renames it to datasets/<id>, then records it:
 * a crash at any point leaves a staging directory or an unrecorded one, both swept at the
 * next start, never a row without its files. */
int svc_dataset_import(svc *s, const svc_upload *u, store_dataset **out, svc_err *e)
{
    char dir[4200], stage[4200], id[STORE_ID_MAX], err[1024];
    ds_dataset *d = NULL;
    char *sj = NULL;
    *out = NULL;
    int rc = store_id_new("ds", id, err, sizeof err);
    if (!rc && (svc_path_dataset_dir(s->data_dir, id, dir, sizeof dir) ||
                svc_path_dataset_stage(s->data_dir, id, stage, sizeof stage) || mkdir(stage, 0755)))
        rc = eng_errf(err, sizeof err, eng_errno_code(errno), "cannot make the dataset directory: %s",
                      strerror(errno));
    if (rc) {
        unlink(u->path);
        return svc__fail(s, e, rc, NULL, "%s", err);
    }
    uint64_t held = 0;
    if ((rc = reserve_tensors(s, u, &held, e))) goto fail;
    rc = unpack_and_check(s, u, stage, &d, err, sizeof err);
    if (!rc) sj = summary_of(d);
    ds_free(d), d = NULL;
    bud_release(s->mem, held);
    if (rc) {
        int code = rc == ENG_ELIMIT || rc == ENG_EIO || rc == ENG_ENOMEM || rc == ENG_ENOSPC ? rc : ENG_EFORMAT;
        svc__fail(s, e, code, code == ENG_EFORMAT ? "invalid_dataset" : NULL, "%s", err);
        goto fail;
    }
    if (rename(stage, dir)) {
        rc = svc__fail(s, e, eng_errno_code(errno), NULL, "cannot keep the dataset: %s", strerror(errno));
        goto fail;
    }
    store_dataset_new nd = {.id = id, .name = u->name && *u->name ? u->name : id, .status = "ready",
                            .path = dir, .summary_json = sj, .bytes = (int64_t)u->bytes};
    rc = store_dataset_create(s->st, &nd, id, err, sizeof err);
    if (!rc) rc = store_dataset_get(s->st, id, out, err, sizeof err);
    if (rc) {
        svc__fail(s, e, rc, NULL, "%s", err);
        goto fail;
    }
    free(sj);
    return 0;
fail:
    ds_free(d);
    free(sj);
    arc_remove_tree(stage, err, sizeof err);
    arc_remove_tree(dir, err, sizeof err);
    unlink(u->path);
    return e ? e->code : rc;
}

/* "ds_" + 16 hex digits, as store_id_new("ds") makes them. */
static int is_dataset_id(const char *ref)
{
    return ref && !strncmp(ref, "ds_", 3) && reg_is_id(ref);
}

int svc__dataset_resolve(svc *s, const char *ref, store_dataset **out, svc_err *e)
{
    char err[512];
    store_datasets l = {0};
    *out = NULL;
    if (!ref || !*ref) return svc__fail(s, e, ENG_EINVAL, "invalid_parameter", "no dataset given");
    if (is_dataset_id(ref)) {
        int rc = store_dataset_get(s->st, ref, out, err, sizeof err);
        return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
    }
    int rc = store_dataset_list_named(s->st, ref, &l, err, sizeof err);
    if (rc) return svc__fail(s, e, rc, NULL, "%s", err);
    if (l.n == 1 && (*out = malloc(sizeof **out))) {
        **out = l.v[0]; /* the row moves out of the list */
        memset(&l.v[0], 0, sizeof l.v[0]);
    } else if (l.n == 1) {
        rc = svc__fail(s, e, ENG_ENOMEM, NULL, "out of memory");
    } else if (l.n == 0) {
        rc = svc__fail(s, e, ENG_ENOTFOUND, NULL, "no dataset with the id or name '%s' (GET /v1/datasets lists them)", ref);
    } else {
        char ids[600] = "";
        for (size_t i = 0, o = 0; i < l.n && o < sizeof ids - 40; i++)
            o += (size_t)snprintf(ids + o, sizeof ids - o, "%s%s", i ? ", " : "", l.v[i].id);
        rc = svc__fail(s, e, STORE_ECONFLICT, "ambiguous", "%zu datasets are called '%s' (newest first: %s): "
                       "use an id", l.n, ref, ids);
    }
    store_datasets_free(&l);
    return rc;
}

int svc_dataset_get(svc *s, const char *ref, store_dataset **out, svc_err *e)
{
    return svc__dataset_resolve(s, ref, out, e);
}

int svc_dataset_list(svc *s, store_datasets *out, svc_err *e)
{
    char err[512];
    int rc = store_dataset_list(s->st, out, err, sizeof err);
    return rc ? svc__fail(s, e, rc, NULL, "%s", err) : 0;
}

int svc_dataset_delete(svc *s, const char *ref, char id[STORE_ID_MAX], svc_err *e)
{
    store_dataset *d = NULL;
    char err[512];
    int rc = svc__dataset_resolve(s, ref, &d, e);
    if (rc) return rc;
    snprintf(id, STORE_ID_MAX, "%s", d->id);
    if ((rc = store_dataset_delete(s->st, d->id, err, sizeof err))) {
        store_dataset_free(d);
        return svc__fail(s, e, rc, NULL, "%s",
                         rc == STORE_EINUSE ? "a queued or running job uses this dataset" : err);
    }
    arc_remove_tree(d->path, err, sizeof err); /* the row is gone: the files follow */
    store_dataset_free(d);
    return 0;
}

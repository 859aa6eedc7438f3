/* /v1/datasets: upload (raw archive or multipart), list, get, delete. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api_int.h"
#include "dataset.h"

json_t *api_dataset_json(const store_dataset *d)
{
    json_t *o = d->summary_json ? json_loads(d->summary_json, 0, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    json_object_set_new(o, "id", json_string(d->id));
    json_object_set_new(o, "name", json_string(d->name ? d->name : d->id));
    json_object_set_new(o, "status", json_string(d->status ? d->status : "ready"));
    json_object_set_new(o, "bytes", json_integer(d->bytes));
    json_object_set_new(o, "created_at", api_time(d->created_at));
    return o;
}

/* Unpacks (or moves, for tensors) the upload into dir and opens it as a dataset. */
static int unpack_and_check(api *a, srv_req *req, const char *tmp, int npz, const char *dir,
                            ds_dataset **d, char *err, size_t errlen)
{
    char path[4200], data[4200];
    ds_opts o = {.arc = a->cfg.arc, .img = a->cfg.img};
    if (eng_path_join(path, sizeof path, dir, npz ? "data.npz" : "upload") ||
        eng_path_join(data, sizeof data, dir, "data"))
        return eng_errf(err, errlen, ENG_EINVAL, "data directory path too long");
    int rc = srv_keep_file(req, tmp, path, err, errlen);
    if (rc) return rc;
    if (!npz) o.unpack_dir = data;
    rc = ds_open(path, &o, d, err, errlen);
    if (!npz) unlink(path); /* the unpacked tree is what stays */
    return rc;
}

int api_dataset_import(api *a, srv_req *req, const char *tmp_path, int npz, const char *name,
                       char id[STORE_ID_MAX], int *status, char *err, size_t errlen)
{
    char dir[4200], rel[64];
    ds_dataset *d = NULL;
    int rc = store_id_new("ds", id, err, errlen);
    *status = 500;
    if (rc) return rc;
    snprintf(rel, sizeof rel, "datasets/%s", id);
    if (eng_path_join(dir, sizeof dir, a->cfg.data_dir, rel) || mkdir(dir, 0755))
        return eng_errf(err, errlen, ENG_EIO, "%s: %s", dir, strerror(errno));
    rc = unpack_and_check(a, req, tmp_path, npz, dir, &d, err, errlen);
    if (rc) {
        *status = rc == ENG_ELIMIT ? 413 : rc == ENG_EIO || rc == ENG_ENOMEM ? 500 : 422;
        goto fail;
    }
    json_t *sum = ds_summary(d);
    char *sj = json_dumps(sum, JSON_COMPACT);
    json_decref(sum);
    store_dataset_new nd = {.id = id, .name = name && *name ? name : id, .status = "ready",
                            .path = dir, .summary_json = sj, .bytes = (int64_t)srv_body_size(req)};
    rc = store_dataset_create(a->cfg.st, &nd, id, err, errlen);
    free(sj);
    if (!rc) {
        ds_free(d);
        return 0;
    }
fail:
    ds_free(d);
    char e2[128];
    arc_remove_tree(dir, e2, sizeof e2);
    return rc ? rc : ENG_EIO;
}

static int is_npz(const char *ctype, const char *filename, const char *format)
{
    size_t n = filename ? strlen(filename) : 0;
    return (format && !strcmp(format, "npz")) || (ctype && !strncmp(ctype, "application/x-npz", 17)) ||
           (n > 4 && !strcasecmp(filename + n - 4, ".npz"));
}

static int archive_type(const char *ctype)
{
    static const char *ok[] = {"application/x-tar", "application/gzip", "application/x-gzip",
                               "application/zip", "application/x-xz", "application/x-npz",
                               "application/octet-stream", "application/x-compressed-tar",
                               /* what curl --data-binary sends unless told: sniffed below */
                               "application/x-www-form-urlencoded"};
    if (!ctype) return 1; /* no type: libarchive sniffs the format */
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strncasecmp(ctype, ok[i], strlen(ok[i]))) return 1;
    return 0;
}

static int post_dataset(srv_req *req, void *ud)
{
    api *a = ud;
    const char *ctype = srv_header(req, "Content-Type"), *name = srv_query(req, "name");
    const char *tmp = srv_body_path(req), *filename = NULL;
    if (srv_body_kind(req) == SRV_MULTIPART) {
        const srv_part *f = srv_part_get(req, "file"), *n = srv_part_get(req, "name");
        if (!f || !f->path)
            return srv_error(req, 400, "invalid_parameter", "multipart upload needs a 'file' field with a file");
        tmp = f->path, filename = f->filename, ctype = f->content_type;
        if (n && n->data && !name) name = n->data;
    } else if (!archive_type(ctype)) {
        return srv_error(req, 415, "unsupported_media_type",
                         "send a tar, tar.gz, tar.xz or zip archive (or multipart with 'file'), not %s", ctype);
    }
    if (!tmp || srv_body_size(req) == 0)
        return srv_error(req, 400, "invalid_parameter", "the request has no dataset archive");
    if (name && strlen(name) > 200) return srv_error(req, 400, "invalid_parameter", "name is too long");
    char id[STORE_ID_MAX], err[1024];
    int status;
    if (api_dataset_import(a, req, tmp, is_npz(ctype, filename, srv_query(req, "format")),
                           name ? name : filename, id, &status, err, sizeof err))
        return srv_error(req, status, status == 413 ? "too_large" : status == 422 ? "invalid_dataset" : "internal",
                         "%s", err);
    store_dataset *d = NULL;
    if (store_dataset_get(a->cfg.st, id, &d, err, sizeof err)) return api_fail(req, ENG_EIO, err);
    int rc = srv_json(req, 201, api_dataset_json(d));
    store_dataset_free(d);
    return rc;
}

static int list_datasets(srv_req *req, void *ud)
{
    api *a = ud;
    store_datasets l = {0};
    char err[512];
    if (store_dataset_list(a->cfg.st, &l, err, sizeof err)) return api_fail(req, ENG_EIO, err);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_dataset_json(&l.v[i]));
    store_datasets_free(&l);
    return srv_json(req, 200, json_pack("{s:o}", "datasets", arr));
}

static int get_dataset(srv_req *req, void *ud)
{
    api *a = ud;
    store_dataset *d = NULL;
    char err[512];
    int rc = store_dataset_get(a->cfg.st, srv_param(req, "id"), &d, err, sizeof err);
    if (rc) return api_fail(req, rc, err);
    rc = srv_json(req, 200, api_dataset_json(d));
    store_dataset_free(d);
    return rc;
}

static int delete_dataset(srv_req *req, void *ud)
{
    api *a = ud;
    store_dataset *d = NULL;
    char err[512];
    const char *id = srv_param(req, "id");
    int rc = store_dataset_get(a->cfg.st, id, &d, err, sizeof err);
    if (!rc) rc = store_dataset_delete(a->cfg.st, id, err, sizeof err);
    if (rc) {
        store_dataset_free(d);
        return api_fail(req, rc, rc == STORE_EINUSE ? "a queued or running job uses this dataset" : err);
    }
    arc_remove_tree(d->path, err, sizeof err); /* the row is gone: the files follow */
    store_dataset_free(d);
    return srv_json(req, 200, json_pack("{s:s, s:b}", "id", id, "deleted", 1));
}

int api_routes_datasets(api *a, srv *s)
{
    return srv_route(s, "POST", "/v1/datasets", post_dataset, a, SRV_BODY_FILE) ||
           srv_route(s, "GET", "/v1/datasets", list_datasets, a, SRV_BODY_NONE) ||
           srv_route(s, "GET", "/v1/datasets/{id}", get_dataset, a, SRV_BODY_NONE) ||
           srv_route(s, "DELETE", "/v1/datasets/{id}", delete_dataset, a, SRV_BODY_NONE);
}

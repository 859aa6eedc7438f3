/* /v1/datasets: upload (raw archive or multipart), list, get, delete. */
#include <string.h>
#include <strings.h>

#include "api/api_int.h"

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
        const srv_part *f = api_upload_part(req), *n = srv_part_get(req, "name");
        if (!f)
            return srv_error(req, 400, "invalid_parameter", "file: a multipart upload needs a file part "
                             "named 'file' (curl -F file=@pets.tgz)");
        tmp = f->path, filename = f->filename, ctype = f->content_type;
        if (n && n->data && !name) name = n->data;
    } else if (!archive_type(ctype)) {
        return srv_error(req, 415, "unsupported_media_type",
                         "send a tar, tar.gz, tar.xz or zip archive (or multipart with a 'file' part), not %s", ctype);
    }
    if (!tmp || srv_body_size(req) == 0)
        return srv_error(req, 400, "invalid_parameter", "the request has no dataset archive");
    if (name && strlen(name) > 200) return srv_error(req, 400, "invalid_parameter", "name is too long");
    svc_upload u = {.path = tmp, .name = name ? name : filename,
                    .npz = api_upload_is_npz(ctype, filename, srv_query(req, "format")),
                    .bytes = srv_body_size(req)};
    store_dataset *d = NULL;
    svc_err e;
    srv_take_file(req, tmp);
    if (svc_dataset_import(a->svc, &u, &d, &e)) return api_fail(req, &e);
    int rc = srv_json(req, 201, api_dataset_json(d));
    store_dataset_free(d);
    return rc;
}

static int list_datasets(srv_req *req, void *ud)
{
    api *a = ud;
    store_datasets l = {0};
    svc_err e;
    if (svc_dataset_list(a->svc, &l, &e)) return api_fail(req, &e);
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) json_array_append_new(arr, api_dataset_json(&l.v[i]));
    store_datasets_free(&l);
    return srv_json(req, 200, json_pack("{s:o}", "datasets", arr));
}

static int get_dataset(srv_req *req, void *ud)
{
    api *a = ud;
    store_dataset *d = NULL;
    svc_err e;
    if (svc_dataset_get(a->svc, srv_param(req, "id"), &d, &e)) return api_fail(req, &e);
    int rc = srv_json(req, 200, api_dataset_json(d));
    store_dataset_free(d);
    return rc;
}

static int delete_dataset(srv_req *req, void *ud)
{
    api *a = ud;
    svc_err e;
    char id[STORE_ID_MAX];
    if (svc_dataset_delete(a->svc, srv_param(req, "id"), id, &e)) return api_fail(req, &e);
    return srv_json(req, 200, json_pack("{s:s, s:b}", "id", id, "deleted", 1));
}

int api_routes_datasets(api *a, srv *s)
{
    static const char *const upload_q[] = {"name", "format", NULL};
    return api_route(a, s, "POST", "/v1/datasets", post_dataset, SRV_BODY_FILE, upload_q) ||
           api_route(a, s, "GET", "/v1/datasets", list_datasets, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "GET", "/v1/datasets/{id}", get_dataset, SRV_BODY_NONE, NULL) ||
           api_route(a, s, "DELETE", "/v1/datasets/{id}", delete_dataset, SRV_BODY_NONE, NULL);
}

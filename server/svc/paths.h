/* The data directory's layout, in one place (a job's own directory is a run directory, whose
 * inside engine/rundir.h owns):
 *   <data>/bit.db  <data>/tmp/  <data>/datasets/<id>/{data/ | data.npz}  <data>/jobs/<id>/
 *   <data>/datasets/.tmp-<id>/ (an import in progress)
 * and the base models' files: <models>/<name>.npz, <name>.labels.txt, <name>.json.
 * Paths go into the caller's buffers; ENG_EINVAL when one does not fit. */
#ifndef BIT_SVC_PATHS_H
#define BIT_SVC_PATHS_H

#include <stddef.h>

int svc_path_db(const char *data_dir, char *buf, size_t len);
int svc_path_tmp(const char *data_dir, char *buf, size_t len);
int svc_path_dataset_dir(const char *data_dir, const char *id, char *buf, size_t len);
/* Where an import unpacks before it is renamed into place: datasets/.tmp-<id>. A crash
 * mid-import leaves only such a name, which the start-up sweep removes. */
int svc_path_dataset_stage(const char *data_dir, const char *id, char *buf, size_t len);
#define SVC_STAGE_PREFIX ".tmp-"
/* What the engine opens: datasets/<id>/data.npz for tensors, else datasets/<id>/data. */
int svc_path_dataset_data(const char *data_dir, const char *id, char *buf, size_t len);
/* Where an upload goes inside the dataset directory before it is opened. */
int svc_path_dataset_upload(const char *dir, int npz, char *buf, size_t len);
int svc_path_job_dir(const char *data_dir, const char *id, char *buf, size_t len);
/* The data directory's folders by name (the start-up sweep walks them). */
typedef enum { SVC_DIR_TMP, SVC_DIR_DATASETS, SVC_DIR_JOBS, SVC_DIR_N } svc_dir;
const char *svc_dir_name(svc_dir d);
/* Creates the data directory and its folders (existing ones are fine). */
int svc_paths_make(const char *data_dir, char *err, size_t errlen);

typedef enum { SVC_BASE_NPZ, SVC_BASE_LABELS, SVC_BASE_JSON } svc_base_file;
/* <models>/<name><suffix>; the name must already satisfy the registry's rule. */
int svc_path_base(const char *models_dir, const char *name, svc_base_file f, char *buf,
                  size_t len);

/* Rewrites msg so it names files relative to the directories ("data/jobs/...",
 * "models/x.npz"): what clients see never shows the server's paths. */
void svc_path_scrub(char *msg, size_t len, const char *data_dir, const char *models_dir);

#endif

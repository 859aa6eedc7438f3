/* The model registry: one name space for base models (NAME.npz in the models directory, with
 * optional NAME.labels.txt and NAME.json) and fine-tuned models (store rows whose files live
 * in their job's run directory), one name rule, one way to resolve a reference. A reg
 * borrows its store and directory strings; reg_model values are the caller's. */
#ifndef BIT_SVC_REGISTRY_H
#define BIT_SVC_REGISTRY_H

#include <stddef.h>

#include "storage/store.h"

typedef struct reg_config {
    store *st;
    const char *models_dir, *data_dir;
    int base_resolution; /* eval size of base models without NAME.json (default 128) */
} reg_config;

typedef struct reg reg;

int reg_new(const reg_config *cfg, reg **out, char *err, size_t errlen);
void reg_free(reg *r);

/* The one name rule, for model names and job names alike (a job's name becomes its model's):
 * 1 to 200 of [A-Za-z0-9._-], not starting with '.' (a base model's name is a file name), and
 * never shaped like an id, so a name can never be taken for another model's id. */
int reg_name_ok(const char *name);
/* "<prefix>_" + 16 lowercase hex digits, as store_id_new makes them. */
int reg_is_id(const char *s);
#define REG_NAME_RULE "1 to 200 of A-Z a-z 0-9 . _ -, not starting with '.', not an id"

typedef struct reg_model {
    char id[256], name[256];
    int base;                      /* a file of the models directory */
    char path[4200], labels[4300]; /* the checkpoint; its labels file (may be missing) */
    int resolution;                /* its evaluation size */
    int pretrain_resolution;       /* a base file's NAME.json pretrain_resolution: fine-tunes
                                      scale the HyperRule's sizes by it / 224; 0: 224 */
    store_model *row;              /* fine-tuned: its row (owned) */
} reg_model;

/* ref is an id (fine-tuned models only) or a name: a registered model's, else a base file's.
 * ENG_ENOTFOUND ("no model 'x'") otherwise. */
int reg_resolve(reg *r, const char *ref, reg_model *m, char *err, size_t errlen);
void reg_model_clear(reg_model *m);

/* Every model: base files by name (those a registered name shadows are left out), then the
 * store's rows, newest first. *out is the caller's (reg_models_free). */
int reg_list(reg *r, reg_model **out, size_t *n, char *err, size_t errlen);
void reg_models_free(reg_model *v, size_t n);

/* STORE_EEXISTS when a base file already has this name (the store checks its own rows at
 * job creation); ENG_EINVAL when the name breaks the rule. */
int reg_name_free(reg *r, const char *name, char *err, size_t errlen);

/* Registers run_dir's model as job j's (name, classes, resolution, architecture from the
 * run's state) and marks j succeeded, in one transaction; id receives the model's id. */
int reg_register_run(reg *r, const store_job *j, const char *run_dir, char id[STORE_ID_MAX],
                     char *err, size_t errlen);

/* Deletes a fine-tuned model: its row (STORE_EINUSE while an unfinished job bases on it),
 * then its files (the whole run directory when its job is gone). */
int reg_delete(reg *r, const reg_model *m, char *err, size_t errlen);

#endif

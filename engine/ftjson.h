/* Fine-tune settings as JSON, both ways: the hyper-parameters a client asks for (strict: every
 * error names the field) and the resolved values a run uses, which a job stores at creation
 * and its worker runs exactly. The one vocabulary of HTTP and CLI lives here: the field
 * NAME_WITH_UNDERSCORES is bit finetune's option --NAME-WITH-DASHES. Pure: nothing kept;
 * returned JSON is the caller's. */
#ifndef BIT_FTJSON_H
#define BIT_FTJSON_H

#include <jansson.h>

#include "finetune.h"

/* A request field of "hyperparameters": its name, its alias (NULL or e.g. "res" for
 * "resolution"), the bit finetune option that sets it and a line of help. */
typedef struct ft_field_doc {
    const char *name, *alias, *cli, *help;
} ft_field_doc;
/* Field i in documentation order, NULL past the last (help texts and tests list them all). */
const ft_field_doc *ft_param_field(size_t i);

/* hp may be NULL or a JSON object whose fields are each optional; absent or "auto" leaves
 * the HyperRule's value. Unknown fields (the message names the nearest and lists them all)
 * and wrong types or ranges are ENG_EINVAL with err starting "hyperparameters.FIELD: ". */
int ft_params_from_json(const json_t *hp, ft_params *p, char *err, size_t errlen);

/* The resolved values as bit finetune options ("--batch 512 --batch-split 1 ..."): what a
 * run prints at its start. ENG_EINVAL when buf is too small. */
int ft_resolved_flags(const ft_resolved *r, char *buf, size_t len);

/* The resolved values as stored in state.json and in a job's row, and back (ENG_EFORMAT when
 * a field is missing or inconsistent). */
json_t *ft_resolved_json(const ft_resolved *r);
int ft_resolved_from_json(const json_t *j, ft_resolved *r);

#endif

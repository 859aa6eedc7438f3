/* Job hyper-parameters as JSON (POST /v1/jobs "hyperparameters"): strict parsing into the
 * engine's ft_params, naming the field in every error. Pure: no allocation kept. */
#ifndef BIT_API_PARAMS_H
#define BIT_API_PARAMS_H

#include <jansson.h>

#include "finetune.h"

/* hp may be NULL or a JSON object whose fields are each optional; absent or "auto" leaves
 * the HyperRule's value. Unknown fields and wrong types or ranges are ENG_EINVAL with err
 * starting "hyperparameters.FIELD: ". */
int api_params_parse(const json_t *hp, ft_params *p, char *err, size_t errlen);

#endif

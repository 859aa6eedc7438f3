/* Lookup in the generated asset table (api/web/embed writes it sorted by path). */
#include <stdlib.h>
#include <string.h>

#include "api/web/web.h"

static int cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const web_asset *)elem)->path);
}

const web_asset *web_asset_find(const char *path)
{
    return path ? bsearch(path, web_assets, web_assets_count, sizeof web_assets[0], cmp) : NULL;
}

/* The web page's files (api/web/ and Chart.js), compiled into the binary at build time by
 * api/web/embed. Everything here is static, read-only data: nobody frees it. */
#ifndef BIT_WEB_H
#define BIT_WEB_H

#include <stddef.h>

typedef struct web_asset {
    const char *path; /* the URL path: "/" for the page, "/ui/<file>" for the rest */
    const char *type; /* Content-Type */
    const char *etag; /* a strong ETag, quotes included */
    const unsigned char *data; /* len bytes, then a NUL not counted */
    size_t len;
} web_asset;

extern const web_asset web_assets[]; /* sorted by path */
extern const size_t web_assets_count;

/* The asset served at this exact URL path (no query), or NULL. */
const web_asset *web_asset_find(const char *path);

#endif

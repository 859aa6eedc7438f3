/* The HTTP API under /v1 (datasets, jobs, models and classification), the operational
 * endpoints and the web page, as handlers registered on an srv. Each handler parses its
 * request, calls one service function and writes the answer; an api borrows its service and
 * server. */
#ifndef BIT_API_H
#define BIT_API_H

#include <stddef.h>

#include "server/http/srv.h"
#include "server/svc/svc.h"

typedef struct api_config {
    svc *service;
    int ui; /* 1: also the web page, at / and /ui/{file} (bit serve --ui on) */
} api_config;

typedef struct api api;

int api_new(const api_config *cfg, api **out, char *err, size_t errlen);
void api_free(api *a);
/* Registers every route on s (before srv_start). */
int api_register(api *a, srv *s, char *err, size_t errlen);

#endif

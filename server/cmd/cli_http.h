/* A small HTTP/1.1 client for the commands that talk to a running `bit serve` (bit jobs, bit
 * job): plain sockets, one request per connection, JSON answers. The server's URL comes from
 * --url, else BIT_URL, else http://127.0.0.1:8080; the token from BIT_API_TOKEN. */
#ifndef BIT_CLI_HTTP_H
#define BIT_CLI_HTTP_H

#include <jansson.h>
#include <stddef.h>

typedef struct cli_server {
    char host[256], port[8], url[300];
    const char *token; /* NULL: none */
} cli_server;

/* url NULL: BIT_URL or the default. Only http:// (bit serve speaks no TLS; put a proxy in front
 * for that). 0, or -1 after printing why. */
int cli_server_init(cli_server *s, const char *sub, const char *url);

/* METHOD path (with its query): the answer's status and JSON body (*out is the caller's; NULL
 * when the body is not JSON). 0, or -1 after printing why no answer came (sub names the
 * command in messages). */
int cli_http(const cli_server *s, const char *sub, const char *method, const char *path,
             int *status, json_t **out);

/* Prints "bit SUB: MESSAGE" for an error answer ({"error": {"message"}} or the status). */
void cli_http_fail(const char *sub, int status, const json_t *body);

#endif

/* loadgen: a closed-loop HTTP load client for POST /v1/models/{id}/classify (plain sockets, one
 * request per connection), reporting requests/s and p50/p99 latency per client count as JSON
 * lines. Helper modes write what a benchmark needs: a random-weight checkpoint of a released
 * architecture, a tensor dataset, and a JPEG. Built by `make bench/loadgen`; never a test. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h> /* after stdio.h, which it needs */

#include "arch.h"
#include "npz.h"
#include "rng.h"

static const char usage[] =
    "usage: loadgen --port P --model NAME --image FILE [--clients 1,8,32] [--seconds S]\n"
    "               [--host 127.0.0.1] [--token T] [--type image/jpeg]\n"
    "       loadgen --make-checkpoint OUT.npz --arch R50x1 [--head 10] [--seed 0]\n"
    "       loadgen --make-dataset OUT.npz [--n 64] [--res 64] [--classes 4]\n"
    "       loadgen --make-image OUT.jpg [--width 640] [--height 480]\n";

typedef struct cfg {
    const char *host, *model, *image, *token, *ctype, *clients;
    const char *make_ckpt, *make_data, *make_image, *arch;
    long port, head, seed, n, res, classes, width, height;
    double seconds;
} cfg;

typedef struct load {
    const cfg *c;
    const char *req; /* the whole request, headers and image */
    size_t req_len;
    double until;
    /* per client */
    double *lat;
    size_t nlat, cap;
    long errors;
} load;

/* One request on a fresh connection; the HTTP status, or -1. */
static int one(const cfg *c, const char *req, size_t len)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), status = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, c->host, &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) goto done;
    for (size_t off = 0; off < len;) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w <= 0) goto done;
        off += (size_t)w;
    }
    char buf[4096], junk[16384];
    size_t got = 0;
    ssize_t k;
    while (got < sizeof buf - 1 && (k = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0) got += (size_t)k;
    while (recv(fd, junk, sizeof junk, 0) > 0) {} /* the server closes after the answer */
    buf[got] = 0;
    if (got >= 12) sscanf(buf, "HTTP/1.%*d %d", &status);
done:
    if (fd >= 0) close(fd);
    return status;
}

static void *client(void *ud)
{
    load *l = ud;
    while (eng_now_ms() < l->until) {
        double t0 = eng_now_ms();
        int st = one(l->c, l->req, l->req_len);
        if (st != 200) {
            l->errors++;
            continue;
        }
        if (l->nlat == l->cap) {
            l->cap = l->cap ? 2 * l->cap : 1024;
            l->lat = realloc(l->lat, l->cap * sizeof *l->lat);
        }
        l->lat[l->nlat++] = eng_now_ms() - t0;
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* n clients for c->seconds; one JSON line. */
static void run_level(const cfg *c, const char *req, size_t len, int n)
{
    load *l = calloc((size_t)n, sizeof *l);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    double t0 = eng_now_ms();
    for (int i = 0; i < n; i++) {
        l[i] = (load){.c = c, .req = req, .req_len = len, .until = t0 + c->seconds * 1e3};
        pthread_create(&th[i], NULL, client, &l[i]);
    }
    size_t total = 0;
    long errors = 0;
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL), total += l[i].nlat, errors += l[i].errors;
    double secs = (eng_now_ms() - t0) / 1e3, *all = malloc((total ? total : 1) * sizeof *all);
    for (int i = 0, o = 0; i < n; i++) {
        memcpy(all + o, l[i].lat, l[i].nlat * sizeof *all);
        o += (int)l[i].nlat;
        free(l[i].lat);
    }
    qsort(all, total, sizeof *all, cmp);
    printf("{\"model\":\"%s\",\"clients\":%d,\"requests\":%zu,\"errors\":%ld,\"seconds\":%.2f,"
           "\"rps\":%.2f,\"p50_ms\":%.1f,\"p99_ms\":%.1f}\n", c->model, n, total, errors, secs,
           total / secs, total ? all[total / 2] : 0.0, total ? all[(size_t)(total * 0.99)] : 0.0);
    fflush(stdout);
    free(all), free(l), free(th);
}

static int load_test(const cfg *c)
{
    FILE *f = fopen(c->image, "rb");
    if (!f) return fprintf(stderr, "loadgen: cannot read %s\n", c->image), 1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char head[1024];
    int h = snprintf(head, sizeof head,
                     "POST /v1/models/%s/classify HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                     "Content-Type: %s\r\n%s%s%sContent-Length: %ld\r\n\r\n", c->model, c->host,
                     c->ctype, c->token ? "Authorization: Bearer " : "", c->token ? c->token : "",
                     c->token ? "\r\n" : "", n);
    char *req = malloc((size_t)h + (size_t)n);
    memcpy(req, head, (size_t)h);
    size_t got = fread(req + h, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n) return free(req), fprintf(stderr, "loadgen: short read\n"), 1;
    int st = one(c, req, (size_t)h + got); /* loads the model before timing */
    if (st != 200) return free(req), fprintf(stderr, "loadgen: warm-up answered %d\n", st), 1;
    char list[256];
    snprintf(list, sizeof list, "%s", c->clients);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) run_level(c, req, (size_t)h + got, atoi(tok));
    free(req);
    return 0;
}

/* ---------------------------------------------------------------- helper modes */

static int make_ckpt(const cfg *c)
{
    char err[512];
    eng_arch a;
    eng_npz *z = NULL;
    int rc = eng_arch_by_name(c->arch, (int)c->head, &a, err, sizeof err);
    if (!rc) rc = eng_arch_init(&a, (uint64_t)c->seed, 1, &z, err, sizeof err);
    if (!rc) rc = eng_npz_save(c->make_ckpt, z, 0, err, sizeof err);
    eng_npz_free(z);
    if (rc) fprintf(stderr, "loadgen: %s\n", err);
    return rc ? 1 : 0;
}

static int make_data(const cfg *c)
{
    char err[512];
    int64_t xs[] = {c->n, 3, c->res, c->res}, ys[] = {c->n};
    eng_tensor *x = eng_tensor_new(ENG_F32, 0, 4, xs), *y = eng_tensor_new(ENG_I64, 0, 1, ys);
    eng_npz *z = eng_npz_new();
    eng_rng r;
    eng_rng_seed(&r, (uint64_t)c->seed);
    for (int64_t i = 0; i < eng_tensor_numel(x); i++) ((float *)x->data)[i] = (float)(2 * eng_rng_uniform(&r) - 1);
    for (int64_t i = 0; i < c->n; i++) ((int64_t *)y->data)[i] = i % c->classes;
    eng_npz_put(z, "x", x), eng_npz_put(z, "y", y);
    int rc = eng_npz_save(c->make_data, z, 0, err, sizeof err);
    eng_npz_free(z);
    if (rc) fprintf(stderr, "loadgen: %s\n", err);
    return rc ? 1 : 0;
}

/* A photo-sized JPEG: smooth gradients with some noise, as a camera would give. */
static int make_image(const cfg *c)
{
    FILE *f = fopen(c->make_image, "wb");
    if (!f) return fprintf(stderr, "loadgen: cannot write %s\n", c->make_image), 1;
    struct jpeg_compress_struct j;
    struct jpeg_error_mgr e;
    j.err = jpeg_std_error(&e);
    jpeg_create_compress(&j);
    jpeg_stdio_dest(&j, f);
    j.image_width = (JDIMENSION)c->width, j.image_height = (JDIMENSION)c->height;
    j.input_components = 3, j.in_color_space = JCS_RGB;
    jpeg_set_defaults(&j);
    jpeg_set_quality(&j, 90, TRUE);
    jpeg_start_compress(&j, TRUE);
    unsigned char *row = malloc((size_t)c->width * 3);
    eng_rng r;
    eng_rng_seed(&r, 7);
    for (long y = 0; y < c->height; y++) {
        for (long x = 0; x < c->width; x++)
            for (int k = 0; k < 3; k++)
                row[x * 3 + k] = (unsigned char)((x * 200 / c->width + y * 55 / c->height + k * 40 +
                                                  (long)eng_rng_below(&r, 16)) % 256);
        jpeg_write_scanlines(&j, &row, 1);
    }
    jpeg_finish_compress(&j);
    jpeg_destroy_compress(&j);
    free(row);
    return fclose(f) ? 1 : 0;
}

static int parse(int argc, char **argv, cfg *c)
{
    static const struct option o[] = {
        {"port", 1, 0, 'p'}, {"host", 1, 0, 'H'}, {"model", 1, 0, 'm'}, {"image", 1, 0, 'i'},
        {"clients", 1, 0, 'c'}, {"seconds", 1, 0, 's'}, {"token", 1, 0, 't'}, {"type", 1, 0, 'T'},
        {"make-checkpoint", 1, 0, 'K'}, {"make-dataset", 1, 0, 'D'}, {"make-image", 1, 0, 'I'},
        {"arch", 1, 0, 'a'}, {"head", 1, 0, 'k'}, {"seed", 1, 0, 'S'}, {"n", 1, 0, 'n'},
        {"res", 1, 0, 'r'}, {"classes", 1, 0, 'C'}, {"width", 1, 0, 'w'}, {"height", 1, 0, 'h'},
        {0, 0, 0, 0}};
    *c = (cfg){.host = "127.0.0.1", .ctype = "image/jpeg", .clients = "1,8,32", .seconds = 10,
               .head = 10, .n = 64, .res = 64, .classes = 4, .width = 640, .height = 480};
    int k;
    while ((k = getopt_long(argc, argv, "", o, NULL)) != -1) {
        switch (k) {
        case 'p': c->port = atol(optarg); break;
        case 'H': c->host = optarg; break;
        case 'm': c->model = optarg; break;
        case 'i': c->image = optarg; break;
        case 'c': c->clients = optarg; break;
        case 's': c->seconds = atof(optarg); break;
        case 't': c->token = optarg; break;
        case 'T': c->ctype = optarg; break;
        case 'K': c->make_ckpt = optarg; break;
        case 'D': c->make_data = optarg; break;
        case 'I': c->make_image = optarg; break;
        case 'a': c->arch = optarg; break;
        case 'k': c->head = atol(optarg); break;
        case 'S': c->seed = atol(optarg); break;
        case 'n': c->n = atol(optarg); break;
        case 'r': c->res = atol(optarg); break;
        case 'C': c->classes = atol(optarg); break;
        case 'w': c->width = atol(optarg); break;
        case 'h': c->height = atol(optarg); break;
        default: return -1;
        }
    }
    if (c->make_ckpt) return c->arch ? 0 : -1;
    if (c->make_data) return c->n > 0 && c->res >= 32 && c->classes > 1 ? 0 : -1;
    if (c->make_image) return c->width > 0 && c->height > 0 ? 0 : -1;
    return c->port > 0 && c->model && c->image && c->seconds > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    cfg c;
    if (parse(argc, argv, &c)) return fputs(usage, stderr), 2;
    if (c.make_ckpt) return make_ckpt(&c);
    if (c.make_data) return make_data(&c);
    if (c.make_image) return make_image(&c);
    return load_test(&c);
}

/* bit help: a command's own --help (the command prints it, so the two never differ) or a
 * short text on a topic that no single command owns. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "ftjson.h"
#include "server/cmd/cmd_help.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
} commands[] = {
    {"serve", cmd_serve},       {"inspect", cmd_inspect}, {"predict", cmd_predict},
    {"finetune", cmd_finetune}, {"pretrain", cmd_pretrain}, {"eval", cmd_eval},
    {"dataset", cmd_dataset},   {"bench", cmd_bench},       {"jobs", cmd_jobs},
    {"job", cmd_job},
};

static const char hyperrule[] =
    "BiT-HyperRule: the fine-tuning recipe of the BiT paper, chosen from the dataset alone.\n"
    "`bit finetune` and POST /v1/jobs apply it; every value can be overridden.\n"
    "\n"
    "  optimizer     SGD, momentum 0.9, no weight decay; the head starts at zero with one\n"
    "                output per class\n"
    "  batch         512 images per step (--batch; --batch-split N divides memory by N)\n"
    "  learning rate 0.003 (--base-lr), linear warm-up from 0, divided by 10 at each\n"
    "                decay step\n"
    "  schedule      (warm-up end, decay steps..., total) by training-set size:\n"
    "                  under 20 000 images      100, 200, 300, 400, 500\n"
    "                  under 500 000 images     500, 3000, 6000, 9000, 10000\n"
    "                  500 000 and more         500, 6000, 12000, 18000, 20000\n"
    "                (--schedule a,b,...; --steps N rescales the rule's schedule to N)\n"
    "  resolution    median image area under 96 x 96: resize to 160, random crop 128;\n"
    "                otherwise resize to 512, random crop 480 (--res PRECROP,CROP);\n"
    "                random horizontal flips; evaluation resizes to the crop size\n"
    "  MixUp         alpha 0.1 from 20 000 training images, none below (--mixup)\n"
    "  few-shot      --examples-per-class K keeps K training images per class\n"
    "\n"
    "Over HTTP the same names go in \"hyperparameters\", with underscores for dashes\n"
    "(--batch-split is batch_split; `bit help api` lists every field). A job's\n"
    "\"hyperparameters\" field shows the resolved values; bit finetune prints them at start.\n";

static const char api[] =
    "The HTTP API of `bit serve` (JSON in and out; errors are\n"
    "{\"error\": {\"code\": ..., \"message\": ...}} with a 4xx or 5xx status).\n"
    "\n"
    "Authentication: with a token (BIT_API_TOKEN or --api-token-file) every route except\n"
    "/healthz and the web page needs the header `Authorization: Bearer TOKEN`.\n"
    "\n"
    "  GET    /                           the web page for a browser (no authentication;\n"
    "                                     --ui off: none); else 404 pointing to /v1\n"
    "  GET    /ui/{file}                  its scripts, style and icon (no authentication)\n"
    "  GET    /healthz                    alive (no authentication)\n"
    "  GET    /readyz                     database, worker and models directory ready\n"
    "  GET    /metrics                    Prometheus metrics\n"
    "  GET    /v1                         the routes\n"
    "  POST   /v1/datasets                upload a tar, tar.gz, tar.xz or zip of class\n"
    "                                     folders (or an .npz of tensors): the raw body,\n"
    "                                     or multipart with a 'file' part; ?name=NAME\n"
    "  GET    /v1/datasets[/ID]           list datasets, or one with its summary (ID: an\n"
    "                                     id, or a name no other dataset has)\n"
    "  DELETE /v1/datasets/ID             delete a dataset no job uses\n"
    "  POST   /v1/jobs                    fine-tune: JSON with the fields below; or\n"
    "                                     multipart: a 'file' part (the dataset) + 'params'\n"
    "                                     (the JSON without \"dataset\");\n"
    "                                     ?dry_run=true: the resolved values, no job\n"
    "  GET    /v1/jobs[/ID]               list jobs (?status=, ?after=, ?limit=), or one\n"
    "                                     with progress, metrics and its model\n"
    "  POST   /v1/jobs/ID/cancel          cancel a queued or running job\n"
    "  GET    /v1/jobs/ID/events          the job's event log (?after=SEQ, ?limit=);\n"
    "                                     ?follow=true: live (Server-Sent Events) to its end\n"
    "  GET    /v1/jobs/ID/metrics         a finished job's per-class accuracy, confusion\n"
    "  GET    /v1/jobs/ID/checkpoints     the job's checkpoints\n"
    "  DELETE /v1/jobs/ID                 delete a finished job\n"
    "  GET    /v1/models[/ID]             base and fine-tuned models\n"
    "  GET    /v1/models/ID/download      a model's weights (.npz, official schema)\n"
    "  POST   /v1/models/ID/classify      classify a JPEG or PNG body (or multipart\n"
    "                                     'image' parts); ?top_k=K\n"
    "  DELETE /v1/models/ID               delete a model no job uses\n"
    "\n"
    "Unknown query parameters and fields are refused (400, naming the valid ones).\n"
    "api/openapi.yaml in the source tree describes every request and answer.\n"
    "\n"
    "Example:\n"
    "  curl -H \"Authorization: Bearer $TOKEN\" --data-binary @flowers.tar.gz \\\n"
    "       -H 'Content-Type: application/gzip' 'http://127.0.0.1:8080/v1/datasets?name=flowers'\n"
    "  curl -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n"
    "       -d '{\"dataset\": \"ds_...\", \"base_model\": \"BiT-M-R50x1\"}' http://127.0.0.1:8080/v1/jobs\n";

static const char env[] =
    "Environment variables. `bit serve` reads each of its options from a variable (a flag\n"
    "on the command line wins):\n"
    "\n"
    "  BIT_LISTEN            --listen            address:port (default 127.0.0.1:8080)\n"
    "  BIT_DATA_DIR          --data-dir          datasets, jobs, database (default ./var)\n"
    "  BIT_MODELS_DIR        --models-dir        base models NAME.npz (default ./models)\n"
    "  BIT_API_TOKEN_FILE    --api-token-file    file whose first line is the bearer token\n"
    "  BIT_API_TOKEN                             the bearer token itself (wins over the file)\n"
    "  BIT_UI                --ui                the web page at / (on or off; default on)\n"
    "  BIT_HTTP_THREADS      --http-threads      HTTP thread pool (default 8)\n"
    "  BIT_CORES             --cores             compute threads inference and training share\n"
    "  BIT_TRAIN_THREADS     --train-threads     a job's threads (0 = cores - infer-share)\n"
    "  BIT_INFER_THREADS     --infer-threads     most inference threads (0 = every free core)\n"
    "  BIT_INFER_SHARE       --infer-share       cores inference keeps while a job trains\n"
    "  BIT_TRAIN_YIELD_MS    --train-yield-ms    training yields when classify waited this long\n"
    "  BIT_DECODE_THREADS    --decode-threads    classify image decoding threads\n"
    "  BIT_PRECISION         --precision         inference: auto (default), f32 or bf16\n"
    "  BIT_MAX_BATCH         --max-batch         images per forward pass (default 8)\n"
    "  BIT_BATCH_DELAY_MS    --batch-delay-ms    wait for a fuller batch if few wait (default 5)\n"
    "  BIT_INFER_QUEUE       --infer-queue       waiting images before 503 (default 64)\n"
    "  BIT_MODEL_CACHE_MB    --model-cache-mb    weights kept loaded (default 2048)\n"
    "  BIT_BASE_RESOLUTION   --base-resolution   eval size of base models (default 128)\n"
    "  BIT_LOADER_THREADS    --loader-threads    image decoding threads per job (default 1)\n"
    "  BIT_MAX_UPLOAD_MB     --max-upload-mb     largest request body (default 2048)\n"
    "  BIT_MAX_DATASET_MB    --max-dataset-mb    largest unpacked dataset (default 8192)\n"
    "  BIT_MAX_IMAGE_MP      --max-image-mp      largest image in megapixels (default 40)\n"
    "  BIT_MEMORY_BUDGET_MB  --memory-budget-mb  what client requests may hold (0: half of RAM)\n"
    "  BIT_MAX_PER_IP        --max-per-ip        connections per client address, 429 beyond\n"
    "  BIT_HEAD_TIMEOUT_MS   --head-timeout-ms   time to send a whole request head, from the \n"
    "  BIT_MIN_BODY_RATE     --min-body-rate     slowest body upload, bytes/s averaged over 1\n"
    "  BIT_HEALTH_RESERVE    --health-reserve    connections kept for /healthz beyond --max-c\n"
    "  BIT_MAX_HEAD_KB       --max-head-kb       largest request line and headers, 431 beyond\n"
    "  BIT_PARK_TIMEOUT_MS   --park-timeout-ms   longest a request may wait without a thread\n"
    "  BIT_MAX_STREAMS       --max-streams       open event streams\n"
    "  BIT_STREAM_BUFFER_KB  --stream-buffer-kb  what a slow stream reader may leave unread b\n"
    "  BIT_MAX_QUEUED        --max-queued        queued jobs before 503 (default 100)\n"
    "  BIT_MAX_CONNECTIONS   --max-connections   open connections (default 256)\n"
    "  BIT_TIMEOUT_S         --timeout-s         idle connection timeout (default 30)\n"
    "  BIT_SHUTDOWN_S        --shutdown-s        grace period at stop (default 10)\n"
    "\n"

    "bit jobs and bit job (clients of a running server):\n"
    "  BIT_URL               the server (default http://127.0.0.1:8080)\n"
    "  BIT_API_TOKEN         its bearer token, if it has one\n"
    "\n"
    "bit-fetch-weights (deploy/fetch-weights.sh):\n"
    "  BIT_MODELS_DIR        where checkpoints go (default ./models)\n"
    "  BIT_WEIGHTS_BASE_URL  mirror of https://storage.googleapis.com/bit_models\n"
    "  BIT_BIN               the bit binary that inspects each download\n"
    "\n"
    "In a container (deploy/Dockerfile) the defaults are BIT_LISTEN=0.0.0.0:8080,\n"
    "BIT_DATA_DIR=/var/lib/bit and BIT_MODELS_DIR=/models. Set BIT_CORES (and --threads of\n"
    "the other commands) to the container's CPU limit: 0 counts every core the host has.\n";

/* The fields of POST /v1/jobs, hyper-parameters from the table that parses them. */
static void job_fields(FILE *f)
{
    fprintf(f, "\nPOST /v1/jobs fields (JSON):\n"
               "  dataset          a dataset's id, or its name when no other dataset has it\n"
               "  base_model       a model's name or id (NAME for MODELS_DIR/NAME.npz)\n"
               "  name             the job's name, which its model gets (default: the job's id)\n"
               "  hyperparameters  an object; each field optional (absent, null or \"auto\": the\n"
               "                   HyperRule decides); bit finetune's option in the middle:\n");
    for (size_t i = 0; ft_param_field(i); i++) {
        const ft_field_doc *d = ft_param_field(i);
        char name[48];
        snprintf(name, sizeof name, "%s%s%s%s", d->name, d->alias ? " (" : "", d->alias ? d->alias : "",
                 d->alias ? ")" : "");
        fprintf(f, "    %-19s %-23s %s\n", name, d->cli, d->help);
    }
}

static const struct {
    const char *name, *text, *help;
    void (*more)(FILE *f);
} topics[] = {
    {"hyperrule", hyperrule, "the BiT-HyperRule: schedule, resolution, MixUp, overrides", NULL},
    {"api", api, "the HTTP API of bit serve: routes, job fields, authentication, errors", job_fields},
    {"env", env, "environment variables of bit serve and the tools", NULL},
};

#define N_OF(a) (sizeof a / sizeof a[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: bit help COMMAND|TOPIC\n\ncommands (the same as `bit COMMAND --help`):\n ");
    for (size_t i = 0; i < N_OF(commands); i++) fprintf(f, " %s", commands[i].name);
    fprintf(f, "\n\ntopics:\n");
    for (size_t i = 0; i < N_OF(topics); i++) fprintf(f, "  %-10s %s\n", topics[i].name, topics[i].help);
    fprintf(f, "\nThe manual page bit(1) has all of it in one place: man bit\n");
}

int cmd_help(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 2) {
        usage(stderr);
        return 2;
    }
    for (size_t i = 0; i < N_OF(commands); i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        char name[32], flag[] = "--help";
        snprintf(name, sizeof name, "%s", commands[i].name);
        char *av[] = {name, flag, NULL};
        return commands[i].fn(2, av);
    }
    for (size_t i = 0; i < N_OF(topics); i++) {
        if (strcmp(argv[1], topics[i].name)) continue;
        fputs(topics[i].text, stdout);
        if (topics[i].more) topics[i].more(stdout);
        return 0;
    }
    fprintf(stderr, "bit help: no command or topic '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

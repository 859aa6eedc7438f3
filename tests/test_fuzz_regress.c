/* The fuzz targets' own code (tests/fuzz/targets.c) in every build: replays the crash
 * reproducers kept in tests/fuzz/regress/TARGET/ and a freshly written seed corpus. A target
 * aborts on a broken promise and the sanitizer builds catch memory errors, so reaching the
 * tally means every saved input is handled; seeds named valid-* must also be accepted and
 * seeds named bad-* refused, so that the corpus means what its names say. */
#include <dirent.h>
#include <sys/stat.h>

#include "arc.h"
#include "common.h"
#include "t.h"
#include "tests/fuzz/targets.h"

static char seeds[600];

typedef struct replayed {
    int files, valid;
} replayed;

static void replay_file(const fz_target *t, const char *dir, const char *name, replayed *r)
{
    char path[1400], err[512];
    void *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    T_CHECKF(eng_file_read(path, (size_t)64 << 20, &buf, &len, err, sizeof err) == 0, "%s", err);
    unsigned long before = fz_accepted;
    T_CHECKF(t->fn(buf ? buf : "", len) == 0, "%s", path);
    if (!strncmp(name, "valid-", 6)) {
        T_CHECKF(fz_accepted == before + 1, "%s: a valid seed was refused", path);
        r->valid++;
    } else if (!strncmp(name, "bad-", 4)) {
        T_CHECKF(fz_accepted == before, "%s: a bad seed was accepted", path);
    }
    r->files++;
    free(buf);
}

/* Every regular file of dir/name; a missing dir replays nothing. */
static replayed replay_dir(const fz_target *t, const char *dir)
{
    char sub[1000];
    replayed r = {0, 0};
    snprintf(sub, sizeof sub, "%s/%s", dir, t->name);
    DIR *d = opendir(sub);
    for (struct dirent *e; d && (e = readdir(d));)
        if (e->d_name[0] != '.') replay_file(t, sub, e->d_name, &r);
    if (d) closedir(d);
    return r;
}

static void replay(const char *name)
{
    const char *src = getenv("srcdir");
    char regress[900];
    snprintf(regress, sizeof regress, "%s/tests/fuzz/regress", src ? src : ".");
    for (size_t i = 0; i < fz_ntargets; i++) {
        if (strcmp(fz_targets[i].name, name)) continue;
        replayed reg = replay_dir(&fz_targets[i], regress);
        replayed sd = replay_dir(&fz_targets[i], seeds);
        printf("     %s: %d regression inputs, %d seeds (%d valid)\n", name, reg.files, sd.files,
               sd.valid);
        T_CHECK(sd.files >= 3 && sd.valid >= 2);
        return;
    }
    T_CHECKF(0, "no target %s", name);
}

#define TARGET_CASE(t) static void t(void) { replay(#t); }
TARGET_CASE(npy)
TARGET_CASE(npz)
TARGET_CASE(arch)
TARGET_CASE(image)
TARGET_CASE(archive)
TARGET_CASE(params)
TARGET_CASE(http)
TARGET_CASE(multipart)

/* The inputs a mutator starts from: nothing, one byte, a run of 0xff. */
static void degenerate_inputs(void)
{
    static uint8_t ff[4096];
    memset(ff, 0xff, sizeof ff);
    for (size_t i = 0; i < fz_ntargets; i++) {
        unsigned long before = fz_accepted;
        T_EQ(fz_targets[i].fn(ff, 0), 0);
        T_CHECK(fz_targets[i].fn((const uint8_t *)"", 1) == 0);
        T_EQ(fz_targets[i].fn(ff, sizeof ff), 0);
        T_CHECKF(fz_accepted == before, "%s accepted junk", fz_targets[i].name);
    }
}

int main(void)
{
    char err[512];
    snprintf(seeds, sizeof seeds, "%s/seeds", t_tmpdir());
    if (fz_write_seeds(seeds, t_fixture("")) != 0) {
        fprintf(stderr, "cannot write the seed corpus into %s\n", seeds);
        return 2;
    }
    T_RUN(npy);
    T_RUN(npz);
    T_RUN(arch);
    T_RUN(image);
    T_RUN(archive);
    T_RUN(params);
    T_RUN(http);
    T_RUN(multipart);
    T_RUN(degenerate_inputs);
    if (!t_failed) arc_remove_tree(t_tmpdir(), err, sizeof err);
    return t_done();
}

/* Dataset archives (tar, tar.gz, tar.xz, zip) unpacked into a fresh directory without trusting
 * them, plus helpers to walk and remove such trees. The module owns nothing it hands out:
 * reports and limits are the caller's structs, paths given to callbacks live for the call. */

#ifndef BIT_ARC_H
#define BIT_ARC_H

#include <stdint.h>

#include "common.h"

/* What an archive may unpack to; 0 fields take the defaults (64 MiB per entry, 8 GiB in all,
 * 1 000 000 entries, 1024-byte paths, 16 components). Byte limits count the bytes actually
 * decompressed, skipped entries included, not what the headers claim. */
typedef struct arc_limits {
    uint64_t max_entry_bytes;
    uint64_t max_total_bytes;
    uint64_t max_entries; /* every header counts: directories and skipped entries too */
    uint32_t max_path;    /* bytes of the cleaned path (at most 4096) */
    uint32_t max_depth;   /* components of the cleaned path (at most 128) */
} arc_limits;

/* Fills every field with its default. */
void arc_limits_default(arc_limits *lim);

/* What an extraction did; on failure, what it had done before stopping (then undone). */
typedef struct arc_report {
    uint64_t entries;        /* headers read */
    uint64_t files;          /* regular files written */
    uint64_t dirs;           /* directory entries (parents are also created implicitly) */
    uint64_t skipped_junk;   /* __MACOSX/..., AppleDouble ._*, .DS_Store */
    uint64_t skipped_hidden; /* other dot-files, and anything under a dot-directory */
    uint64_t bytes;          /* bytes in the files written */
    uint64_t unpacked;       /* bytes decompressed: also skipped and partial entries */
} arc_report;

/* Unpacks the archive at path into dest, which must be absent (it is created, 0755, its parent
 * must exist) or an empty directory, and not a symlink. Formats: tar (ustar, pax, GNU), zip,
 * optionally inside gzip or xz; nothing else, and never through an external program.
 * Every entry is checked before anything is written. Refused, failing the whole extraction:
 * absolute paths, '..', '.' or empty components, control characters, backslashes, invalid
 * UTF-8, symlinks, hard links, devices, FIFOs, sockets, a file name seen twice (a directory
 * entry seen twice is harmless and allowed), a file where a directory is needed, an archive
 * with no regular file. A leading "./" is stripped; junk and hidden entries are skipped and
 * counted. Files are created 0644, directories 0755 (less the umask); owners, modes and
 * times in the archive are ignored. A size a header admits to is refused before decoding;
 * otherwise a block that would pass a limit is refused before it is written, so at most
 * max_entry_bytes reach the disk for a lying entry. Safe to call from several threads (the
 * C.UTF-8 locale it reads names in is switched for the calling thread only).
 * On success returns 0. On failure returns ENG_ELIMIT (a limit), ENG_EFORMAT (corrupt,
 * hostile or unsupported archive; err names the entry), ENG_EIO (disk), ENG_EINVAL (dest
 * unusable), ENG_EUNSUPPORTED (libarchive lacks built-in gzip/xz), and dest is left as found:
 * removed if this call created it, emptied otherwise. lim and rep may be NULL. */
int arc_extract_path(const char *path, const char *dest, const arc_limits *lim,
                     arc_report *rep, char *err, size_t errlen);

/* The same from an open descriptor, read from offset 0 when it is a regular file (zip needs
 * to seek; a pipe works for tar and for zip written in streaming form). The fd is borrowed:
 * its offset moves, the caller closes it. */
int arc_extract_fd(int fd, const char *dest, const arc_limits *lim, arc_report *rep,
                   char *err, size_t errlen);

/* Removes dir and everything under it without following any symlink (a symlink inside is
 * removed as a link; dir itself being a symlink is ENG_EINVAL). A missing dir is success. */
int arc_remove_tree(const char *dir, char *err, size_t errlen);

/* Called with a regular file's path relative to the walked directory ('/'-separated) and its
 * size. Return 0 to go on; any other value stops the walk and arc_walk returns it, so a
 * negative ENG_E* code passes through. */
typedef int (*arc_walk_fn)(const char *relpath, uint64_t size, void *ud);

/* Visits the regular files under dir depth-first, each directory's entries in strcmp order,
 * so the order does not depend on the filesystem. Symlinks are neither followed nor
 * reported; dot-files and dot-directories are skipped like extraction skips them. */
int arc_walk(const char *dir, arc_walk_fn fn, void *ud, char *err, size_t errlen);

#endif

/* The libFuzzer entry point of one target, chosen at compile time with -DFZ_TARGET=fz_NAME:
 * the body lives in targets.c so that the regression test runs the very same code. */
#include "tests/fuzz/targets.h"

#ifndef FZ_TARGET
#error "compile with -DFZ_TARGET=fz_<target>"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return FZ_TARGET(data, size); }

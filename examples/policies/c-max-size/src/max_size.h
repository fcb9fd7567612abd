/* The logic of `c-max-size`, free of any WIT bindings, so that it can be
 * unit-tested natively (test/unit_test.c) as well as built for wasm32. */
#ifndef MAX_SIZE_H
#define MAX_SIZE_H

#include <stddef.h>
#include <stdint.h>

/* Parses the settings JSON, which must be an object with exactly one key,
 * `max_bytes`, whose value is a whole number from 1 to 2^64-1.
 *
 * On success stores the limit in *max_bytes and returns 0. On failure
 * writes a NUL-terminated message (truncated to fit) into err and returns -1. */
int max_size_parse_settings(const char *json, size_t len, uint64_t *max_bytes,
                            char *err, size_t err_cap);

/* Writes the reason for denying an image of `total_size` bytes (its config
 * and `layers` layers added up) pushed to `repository` (not NUL-terminated;
 * `repo_len` bytes) into buf, NUL-terminated and truncated to fit. Returns the
 * length written, without the NUL. */
size_t max_size_denial(char *buf, size_t cap, const char *repository,
                       size_t repo_len, uint64_t total_size, size_t layers,
                       uint64_t max_bytes);

#endif

/* Unit tests of the settings parser and the denial message, built natively:
 *
 *   cc -std=c11 -Wall -Wextra -Werror -Isrc -o build/unit_test test/unit_test.c src/max_size.c
 *   build/unit_test
 *
 * build.sh runs them before building the component. */
#include <stdio.h>
#include <string.h>

#include "max_size.h"

static int passed, failed;

static void check(int ok, const char *what) {
    if (ok) {
        passed++;
        printf("ok - %s\n", what);
    } else {
        failed++;
        printf("not ok - %s\n", what);
    }
}

static void accepts(const char *json, uint64_t want, const char *label) {
    uint64_t got = 0;
    char err[256];
    int rc = max_size_parse_settings(json, strlen(json), &got, err, sizeof err);
    char what[512];
    snprintf(what, sizeof what, "accepts %s", label ? label : json);
    if (rc != 0) {
        printf("# error: %s\n", err);
    }
    check(rc == 0 && got == want, what);
}

static void refuses(const char *json, const char *needle) {
    uint64_t got = 0;
    char err[256];
    int rc = max_size_parse_settings(json, strlen(json), &got, err, sizeof err);
    char what[512];
    snprintf(what, sizeof what, "refuses %s", json);
    if (rc == 0 || strstr(err, needle) == NULL) {
        printf("# rc=%d, message: %s (wanted: %s)\n", rc, err, needle);
    }
    check(rc != 0 && strstr(err, needle) != NULL, what);
}

int main(void) {
    accepts("{\"max_bytes\": 65536}", 65536, NULL);
    accepts(" \n\t{ \"max_bytes\" :1 } \r\n", 1, "JSON whitespace around tokens");
    accepts("{\"max_bytes\":18446744073709551615}", UINT64_MAX, NULL);

    refuses("", "expected a JSON object");
    refuses("[]", "expected a JSON object");
    refuses("{}", "max_bytes: missing");
    refuses("{\"max_bytes\": 0}", "at least 1");
    refuses("{\"max_bytes\": -1}", "whole number");
    refuses("{\"max_bytes\": 1.5}", "whole number");
    refuses("{\"max_bytes\": 1e6}", "whole number");
    refuses("{\"max_bytes\": 012}", "whole number");
    refuses("{\"max_bytes\": \"64KiB\"}", "whole number");
    refuses("{\"max_bytes\": 18446744073709551616}", "too large");
    refuses("{\"max_bytes\": 1, \"max_bytes\": 2}", "given twice");
    refuses("{\"maxbytes\": 1}", "unknown key `maxbytes`");
    refuses("{\"max_bytes\": 1,}", "expected a quoted key");
    refuses("{\"max_bytes\" 1}", "expected `:`");
    refuses("{\"max_bytes\": 1 2}", "expected `,` or `}`");
    refuses("{\"max_bytes\": 1}x", "trailing characters");
    refuses("{\"max_bytes\": 1", "expected `,` or `}`");
    refuses("{\"max_b", "expected a quoted key");

    /* The parser must stop at `len`, not at a NUL. */
    {
        const char text[] = "{\"max_bytes\": 99}";
        uint64_t got = 0;
        char err[64];
        int rc = max_size_parse_settings(text, sizeof text - 3, &got, err, sizeof err);
        check(rc != 0, "stops at len");
    }
    /* A message that does not fit is truncated and NUL-terminated. */
    {
        char err[8];
        uint64_t got = 0;
        int rc = max_size_parse_settings("[]", 2, &got, err, sizeof err);
        check(rc != 0 && strlen(err) == 7, "truncates the error message");
    }

    char buf[256];
    size_t n = max_size_denial(buf, sizeof buf, "team-a/api", 10, 70000, 3, 65536);
    check(n == strlen(buf) &&
              strcmp(buf, "image pushed to team-a/api is 70000 bytes (config and 3 layers), "
                          "over the limit of 65536 bytes") == 0,
          "denial message");
    max_size_denial(buf, sizeof buf, "team-a/api", 10, 2, 1, 1);
    check(strstr(buf, "(config and 1 layer),") != NULL, "one layer, singular");
    max_size_denial(buf, sizeof buf, "r", 1, UINT64_MAX, 0, 1);
    check(strstr(buf, "18446744073709551615 bytes") != NULL, "formats the largest size");
    n = max_size_denial(buf, 16, "team-a/api", 10, 70000, 3, 65536);
    check(n == 15 && strlen(buf) == 15, "truncates the denial message");

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

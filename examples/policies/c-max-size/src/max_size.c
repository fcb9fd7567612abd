/* `c-max-size`: settings parsing and the denial message.
 *
 * The settings are tiny, so this is a small hand-written JSON reader that
 * accepts exactly `{"max_bytes": <whole number>}` (with any JSON whitespace)
 * and refuses everything else with a message for the operator. It walks the
 * input by length, never past `len`, and needs no allocation. */
#include "max_size.h"

#include <stdbool.h>

/* A bounded string builder: appends what fits and always NUL-terminates. */
struct out {
    char *buf;
    size_t cap;
    size_t len;
};

static void out_bytes(struct out *o, const char *s, size_t n) {
    for (size_t i = 0; i < n && o->len + 1 < o->cap; i++) {
        o->buf[o->len++] = s[i];
    }
    if (o->cap > 0) {
        o->buf[o->len] = '\0';
    }
}

static void out_str(struct out *o, const char *s) {
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    out_bytes(o, s, n);
}

static void out_u64(struct out *o, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        out_bytes(o, &digits[--n], 1);
    }
}

struct reader {
    const char *s;
    size_t len;
    size_t pos;
};

static bool at_end(const struct reader *r) { return r->pos >= r->len; }

static char peek(const struct reader *r) { return at_end(r) ? '\0' : r->s[r->pos]; }

static void skip_ws(struct reader *r) {
    while (!at_end(r)) {
        char c = r->s[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        r->pos++;
    }
}

/* Reads a JSON string starting at its opening quote. Sets *start and *n to its raw
 * contents (escapes left as they are). Returns false if it is unterminated or
 * contains a control character. */
static bool read_string(struct reader *r, const char **start, size_t *n) {
    r->pos++; /* the opening quote */
    size_t begin = r->pos;
    while (!at_end(r)) {
        char c = r->s[r->pos];
        if (c == '"') {
            *start = r->s + begin;
            *n = r->pos - begin;
            r->pos++;
            return true;
        }
        if ((unsigned char)c < 0x20) {
            return false;
        }
        r->pos += (c == '\\') ? 2 : 1;
    }
    return false;
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* Whether the next bytes could start a JSON number (or a negative one). */
static bool starts_number(char c) { return c == '-' || is_digit(c); }

/* Reads a whole number: digits only, no sign, fraction or exponent, no
 * leading zero. Returns 0 on success, 1 if it is not a whole non-negative
 * number, 2 if it does not fit in 64 bits. */
static int read_whole(struct reader *r, uint64_t *value) {
    if (!is_digit(peek(r))) {
        return 1;
    }
    if (peek(r) == '0' && r->pos + 1 < r->len && is_digit(r->s[r->pos + 1])) {
        return 1;
    }
    uint64_t v = 0;
    bool overflow = false;
    while (is_digit(peek(r))) {
        unsigned d = (unsigned)(r->s[r->pos] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            overflow = true;
        } else {
            v = v * 10 + d;
        }
        r->pos++;
    }
    char c = peek(r);
    if (c == '.' || c == 'e' || c == 'E') {
        return 1;
    }
    if (overflow) {
        return 2;
    }
    *value = v;
    return 0;
}

static int fail(struct out *o, const char *msg) {
    out_str(o, msg);
    return -1;
}

int max_size_parse_settings(const char *json, size_t len, uint64_t *max_bytes,
                            char *err, size_t err_cap) {
    struct out o = {err, err_cap, 0};
    struct reader r = {json, len, 0};
    bool seen = false;
    uint64_t limit = 0;

    if (err_cap > 0) {
        err[0] = '\0';
    }
    skip_ws(&r);
    if (peek(&r) != '{') {
        return fail(&o, "settings: expected a JSON object such as {\"max_bytes\": 65536}");
    }
    r.pos++;
    skip_ws(&r);
    if (peek(&r) != '}') {
        for (;;) {
            const char *key;
            size_t key_len;
            if (peek(&r) != '"' || !read_string(&r, &key, &key_len)) {
                return fail(&o, "settings: invalid JSON (expected a quoted key)");
            }
            static const char want[] = "max_bytes";
            bool is_max = key_len == sizeof want - 1;
            for (size_t i = 0; is_max && i < key_len; i++) {
                is_max = key[i] == want[i];
            }
            if (!is_max) {
                out_str(&o, "settings: unknown key `");
                out_bytes(&o, key, key_len > 64 ? 64 : key_len);
                return fail(&o, "` (expected `max_bytes`)");
            }
            if (seen) {
                return fail(&o, "settings: `max_bytes` is given twice");
            }
            seen = true;
            skip_ws(&r);
            if (peek(&r) != ':') {
                return fail(&o, "settings: invalid JSON (expected `:` after a key)");
            }
            r.pos++;
            skip_ws(&r);
            if (!starts_number(peek(&r))) {
                return fail(&o, "settings.max_bytes: expected a whole number of bytes");
            }
            switch (read_whole(&r, &limit)) {
            case 0:
                break;
            case 2:
                return fail(&o, "settings.max_bytes: too large (at most 18446744073709551615)");
            default:
                return fail(&o, "settings.max_bytes: expected a whole number of bytes");
            }
            if (limit == 0) {
                return fail(&o, "settings.max_bytes: must be at least 1");
            }
            skip_ws(&r);
            if (peek(&r) == ',') {
                r.pos++;
                skip_ws(&r);
                continue;
            }
            if (peek(&r) == '}') {
                break;
            }
            return fail(&o, "settings: invalid JSON (expected `,` or `}`)");
        }
    }
    r.pos++; /* the closing brace */
    skip_ws(&r);
    if (!at_end(&r)) {
        return fail(&o, "settings: invalid JSON (trailing characters after the object)");
    }
    if (!seen) {
        return fail(&o, "settings.max_bytes: missing (the largest image to accept, in bytes)");
    }
    *max_bytes = limit;
    return 0;
}

size_t max_size_denial(char *buf, size_t cap, const char *repository,
                       size_t repo_len, uint64_t total_size, size_t layers,
                       uint64_t max_bytes) {
    struct out o = {buf, cap, 0};
    if (cap > 0) {
        buf[0] = '\0';
    }
    out_str(&o, "image pushed to ");
    out_bytes(&o, repository, repo_len);
    out_str(&o, " is ");
    out_u64(&o, total_size);
    out_str(&o, " bytes (config and ");
    out_u64(&o, layers);
    out_str(&o, layers == 1 ? " layer)" : " layers)");
    out_str(&o, ", over the limit of ");
    out_u64(&o, max_bytes);
    out_str(&o, " bytes");
    return o.len;
}

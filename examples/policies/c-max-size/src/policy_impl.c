/* `c-max-size`: refuse images over a configured size.
 *
 * Settings:
 *   {"max_bytes": 1073741824}
 *
 * On a manifest push (manifest PUT) of an image manifest, the image's size
 * as the registry adds it up from the manifest's descriptors
 * (`manifest.image.total-size`: the config and every layer, which is what a
 * pull fetches) must be at most `max_bytes`; a larger one is denied with a
 * message giving both sizes. Indexes (`manifest.image` is none) are allowed:
 * their images are pushed, and checked, one by one before them. Every other
 * request is allowed.
 *
 * This file implements the functions declared by the wit-bindgen generated
 * bindings in ../bindings (from wit/policy.wit, portcullis:policy@0.2.0). Ownership follows the
 * canonical ABI: arguments passed to an export belong to it and must be freed,
 * and returned strings must be heap-allocated (the generated `cabi_post_*`
 * functions free them after the host has copied them). */
#include <stdlib.h>

#include "max_size.h"
#include "policy.h"

/* The parsed settings, set once by `init`. Instances are reused across
 * requests, so parsing happens there and not in `evaluate`. */
static uint64_t g_max_bytes;
static bool g_initialised;

static bool check_settings(policy_string_t *settings, uint64_t *max_bytes,
                           policy_string_t *err) {
    char msg[256];
    int rc = max_size_parse_settings((const char *)settings->ptr, settings->len,
                                     max_bytes, msg, sizeof msg);
    policy_string_free(settings);
    if (rc != 0) {
        policy_string_dup(err, msg);
        return false;
    }
    return true;
}

bool exports_policy_validate_settings(policy_string_t *settings, policy_string_t *err) {
    uint64_t ignored;
    return check_settings(settings, &ignored, err);
}

bool exports_policy_init(policy_string_t *settings, policy_string_t *err) {
    if (!check_settings(settings, &g_max_bytes, err)) {
        return false;
    }
    g_initialised = true;
    return true;
}

static void deny(policy_decision_t *ret, const char *reason, size_t len) {
    ret->tag = PORTCULLIS_POLICY_TYPES_DECISION_DENY;
    policy_string_dup_n(&ret->val.deny, reason, len);
}

void exports_policy_evaluate(policy_request_t *request, policy_decision_t *ret) {
    ret->tag = PORTCULLIS_POLICY_TYPES_DECISION_ALLOW;
    if (!g_initialised) {
        static const char msg[] = "c-max-size was not initialised";
        deny(ret, msg, sizeof msg - 1);
    } else if (request->action == PORTCULLIS_POLICY_TYPES_ACTION_PUSH &&
               request->resource == PORTCULLIS_POLICY_TYPES_RESOURCE_KIND_MANIFEST &&
               request->manifest.is_some && request->manifest.val.image.is_some) {
        const portcullis_policy_types_image_t *image = &request->manifest.val.image.val;
        if (image->total_size > g_max_bytes) {
            char msg[512];
            size_t len = max_size_denial(msg, sizeof msg, (const char *)request->repository.ptr,
                                         request->repository.len, image->total_size,
                                         image->layers.len, g_max_bytes);
            deny(ret, msg, len);
        }
    }
    policy_request_free(request);
}

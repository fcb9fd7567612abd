// `js-deny-latest`: refuse pushes of moving tags such as `latest`.
//
// Settings (all optional):
//   { "forbidden_tags": ["latest"] }
// `forbidden_tags` defaults to ["latest"]. Unknown keys are refused, so that a
// typo in the registry configuration is caught when the chain is loaded.
//
// This module implements the exports of the `policy` world in
// wit/policy.wit (package portcullis:policy@0.1.0). The componentizer maps the
// WIT names to JavaScript: `validate-settings` -> `validateSettings`, enums to
// their case names as strings ("push", "manifest"), variants to
// `{ tag, val }` objects, records to objects with camelCase keys, and
// `option<T>` to the value or null/undefined. A function returning
// `result<_, string>` returns normally for `ok` and throws a string for `err`.
//
// It imports nothing, so it is also an ordinary ES module that `node --test`
// can load directly (see test/policy.test.js).

const DEFAULT_FORBIDDEN = ["latest"];

// The parsed settings, set once by `init`. Instances are reused across
// requests, so parsing happens here and not in `evaluate`.
let forbidden = null;

/** Parses and checks the settings JSON; returns the forbidden tags or throws a string. */
export function parseSettings(json) {
  let raw;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw `settings: not valid JSON: ${e.message}`;
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw "settings: expected a JSON object";
  }
  for (const key of Object.keys(raw)) {
    if (key !== "forbidden_tags") {
      throw `settings: unknown key \`${key}\` (expected \`forbidden_tags\`)`;
    }
  }
  if (!("forbidden_tags" in raw)) {
    return DEFAULT_FORBIDDEN.slice();
  }
  const tags = raw.forbidden_tags;
  if (!Array.isArray(tags)) {
    throw "settings.forbidden_tags: expected a list of tags";
  }
  for (const [i, tag] of tags.entries()) {
    if (typeof tag !== "string" || tag.length === 0) {
      throw `settings.forbidden_tags[${i}]: expected a non-empty string`;
    }
  }
  return tags.slice();
}

/** Decides one request against a list of forbidden tags. */
export function decide(tags, request) {
  if (request.action !== "push" || request.resource !== "manifest") {
    return { tag: "allow" };
  }
  const ref = request.reference;
  if (ref == null || ref.tag !== "tag") {
    // Pushing by digest creates no tag.
    return { tag: "allow" };
  }
  const tag = ref.val;
  if (tags.includes(tag)) {
    return {
      tag: "deny",
      val:
        `pushing the tag \`${tag}\` is not allowed (to ${request.repository}): ` +
        `push an immutable version tag instead`,
    };
  }
  return { tag: "allow" };
}

// ---- the `policy` world's exports ----

export function validateSettings(settings) {
  parseSettings(settings);
}

export function init(settings) {
  forbidden = parseSettings(settings);
}

export function evaluate(request) {
  if (forbidden === null) {
    return { tag: "deny", val: "js-deny-latest was not initialised" };
  }
  return decide(forbidden, request);
}

// `js-require-source`: pushed images must name an allowed source.
//
// Settings:
//   { "prefixes": ["https://github.com/acme/"] }
//
// On a manifest push of an image, its `org.opencontainers.image.source` config
// label or manifest annotation must be there and start with one of
// `prefixes`; see require_source.js for the details (indexes, artifacts).
//
// This is the component's entry module: it implements the exports of the
// `policy` world in wit/policy.wit (portcullis:policy@0.2.0) and imports the
// host's `log` interface. componentize-js maps `validate-settings` to
// `validateSettings`; a function returning `result<_, string>` returns
// normally for `ok` and throws a string for `err`. An imported interface is
// an ES module named after it, with its functions as named exports.

import { log } from "portcullis:policy/log@0.2.0";

import { decide, guarded, parseSettings } from "./require_source.js";

// The parsed settings, set once by `init`. Instances are reused across
// requests, so parsing happens here and not in `evaluate`.
let settings = null;

export function validateSettings(json) {
  parseSettings(json);
}

export function init(json) {
  settings = parseSettings(json);
}

export function evaluate(request) {
  return guarded(log, () => {
    if (settings === null) {
      return { tag: "deny", val: "js-require-source was not initialised" };
    }
    return decide(settings, request, log);
  });
}

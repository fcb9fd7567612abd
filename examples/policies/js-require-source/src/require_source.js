// The logic of `js-require-source`, free of the component's imports.
//
// Images pushed must say where they are built from: the
// `org.opencontainers.image.source` config label (Dockerfile
// `LABEL org.opencontainers.image.source=...`) or manifest annotation, whose
// value must start with one of the settings' `prefixes`.
//
// This module imports nothing, so `node --test` loads it as it is
// (test/require_source.test.js). The component's entry module, policy.js,
// imports the host's `log` and passes it in; here `log` is a parameter.
//
// WIT values as componentize-js gives them: enums are strings ("push",
// "manifest"), variants `{ tag, val }`, records objects with camelCase keys
// (`manifest.image.config.labels`, `image.configMediaType`), `option<T>` the
// value or null/undefined, `list<tuple<string, string>>` an array of
// two-element arrays.

export const SOURCE = "org.opencontainers.image.source";

// Config media types whose content is an image config. An image manifest
// with another config type is an artifact (a cosign signature, an SBOM, a
// Helm chart): it has `image` but never `image.config`.
const IMAGE_CONFIG_TYPES = [
  "application/vnd.oci.image.config.v1+json",
  "application/vnd.docker.container.image.v1+json",
];

const ALLOW = Object.freeze({ tag: "allow" });
const noLog = () => {};

/** Parses and checks the settings JSON: returns `{ prefixes }` or throws a string. */
export function parseSettings(json) {
  let raw;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw `settings: not valid JSON: ${e.message}`;
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw 'settings: expected a JSON object such as {"prefixes": ["https://github.com/acme/"]}';
  }
  for (const key of Object.keys(raw)) {
    if (key !== "prefixes") {
      throw `settings: unknown key \`${key}\` (expected \`prefixes\`)`;
    }
  }
  const prefixes = raw.prefixes;
  if (prefixes === undefined) {
    throw "settings.prefixes: missing (the allowed beginnings of the source URL)";
  }
  if (!Array.isArray(prefixes) || prefixes.length === 0) {
    throw "settings.prefixes: expected a non-empty list of prefixes";
  }
  for (const [i, prefix] of prefixes.entries()) {
    if (typeof prefix !== "string" || prefix.length === 0) {
      throw `settings.prefixes[${i}]: expected a non-empty string`;
    }
  }
  return { prefixes: prefixes.slice() };
}

/** The value of `key` in a list of [key, value] pairs, or undefined; an empty value counts as none. */
function valueOf(pairs, key) {
  for (const [k, v] of pairs) {
    if (k === key && v !== "") {
      return v;
    }
  }
  return undefined;
}

const quoteList = (items) => items.map((p) => `\`${p}\``).join(", ");

/**
 * Decides one request. `log(level, message)` is the host's log (level
 * "debug", "info" or "warn"). Returns the decision: `{ tag: "allow" }` or
 * `{ tag: "deny", val: reason }`.
 */
export function decide(settings, request, log = noLog) {
  const manifest = request.manifest;
  if (request.action !== "push" || request.resource !== "manifest" || manifest == null) {
    return ALLOW;
  }
  const { prefixes } = settings;
  const allowed = (value) => prefixes.some((p) => value.startsWith(p));
  const annotation = valueOf(manifest.annotations, SOURCE);
  const badPrefix = (value, where) => ({
    tag: "deny",
    val:
      `${where} pushed to ${request.repository} has \`${SOURCE}\` ${value}, ` +
      `which does not start with an allowed prefix (${quoteList(prefixes)})`,
  });

  const image = manifest.image;
  if (image == null) {
    // An index or manifest list (`docker buildx` pushes one over its
    // per-platform images; they carry the labels and are pushed first, each
    // checked on its own push). Allowed; an annotation it has anyway must
    // still name an allowed source.
    if (annotation !== undefined && !allowed(annotation)) {
      return badPrefix(annotation, "index");
    }
    return ALLOW;
  }
  if (!IMAGE_CONFIG_TYPES.includes(image.configMediaType)) {
    // An artifact (signature, SBOM, attestation...): it builds nothing.
    return ALLOW;
  }

  // The label, when the config was readable (on a push it is in the store,
  // but a config over 1 MiB is not read), and the annotation.
  const config = image.config;
  const label = config == null ? undefined : valueOf(config.labels, SOURCE);
  const found = [];
  if (label !== undefined) found.push(["label", label]);
  if (annotation !== undefined) found.push(["annotation", annotation]);

  if (found.length === 0) {
    const unread = config == null ? " (its config was not readable, so only annotations were checked)" : "";
    return {
      tag: "deny",
      val:
        `image pushed to ${request.repository} has no \`${SOURCE}\` label or annotation${unread}: ` +
        `set it to the URL of its source, starting with ${quoteList(prefixes)}`,
    };
  }
  // Every place that names a source must name an allowed one.
  for (const [where, value] of found) {
    if (!allowed(value)) {
      return badPrefix(value, `image (${where})`);
    }
  }
  log("debug", `${request.repository} ${manifest.digest}: source ${found[0][1]} (${found.map(([w]) => w).join(" and ")})`);
  return ALLOW;
}

/**
 * Runs `decide()` so that an exception becomes a visible denial. Without it an
 * exception escapes `evaluate`, the component traps (this build has no stdio
 * to print it), and the registry only says the policy failed. With it, the
 * message is written to the operator's log at `warn` and given as the reason.
 */
export function guarded(log, decideFn) {
  try {
    return decideFn();
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    log("warn", message);
    return { tag: "deny", val: `js-require-source failed: ${message}` };
  }
}

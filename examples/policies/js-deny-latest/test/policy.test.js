// Unit tests of the policy logic, run with plain Node (`npm test`): the
// module imports nothing from the component world, so Node can load it as is.
// The built component itself is tested by ../build-all.sh through
// `portcullis policy test`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { decide, evaluate, init, parseSettings, validateSettings } from "../src/policy.js";

const push = (reference, extra = {}) => ({
  action: "push",
  resource: "manifest",
  repository: "team-a/api",
  reference,
  identity: { subject: "alice", groups: ["devs"] },
  clientIp: "192.0.2.7",
  manifest: undefined,
  currentDigest: undefined,
  digestTags: [],
  mountFrom: undefined,
  ...extra,
});

test("pushing a forbidden tag is denied, naming the tag", () => {
  const d = decide(["latest"], push({ tag: "tag", val: "latest" }));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /`latest`/);
  assert.match(d.val, /team-a\/api/);
});

test("other tags, digests and other actions are allowed", () => {
  assert.deepEqual(decide(["latest"], push({ tag: "tag", val: "v1" })), { tag: "allow" });
  assert.deepEqual(decide(["latest"], push({ tag: "digest", val: "sha256:00" })), { tag: "allow" });
  assert.deepEqual(decide(["latest"], push(null)), { tag: "allow" });
  assert.deepEqual(
    decide(["latest"], push({ tag: "tag", val: "latest" }, { action: "pull" })),
    { tag: "allow" },
  );
  assert.deepEqual(
    decide(["latest"], push({ tag: "tag", val: "latest" }, { resource: "blob" })),
    { tag: "allow" },
  );
});

test("settings: default, custom list, and refusals", () => {
  assert.deepEqual(parseSettings("{}"), ["latest"]);
  assert.deepEqual(parseSettings('{"forbidden_tags": ["latest", "stable"]}'), ["latest", "stable"]);
  assert.deepEqual(parseSettings('{"forbidden_tags": []}'), []);
  assert.throws(() => validateSettings('{"forbidden": ["latest"]}'), /unknown key `forbidden`/);
  assert.throws(() => validateSettings('{"forbidden_tags": "latest"}'), /expected a list/);
  assert.throws(() => validateSettings('{"forbidden_tags": [""]}'), /forbidden_tags\[0\]/);
  assert.throws(() => validateSettings("[]"), /expected a JSON object/);
  assert.throws(() => validateSettings("{"), /not valid JSON/);
});

test("the exports: evaluate before init denies, after init decides", () => {
  assert.equal(evaluate(push({ tag: "tag", val: "v1" })).tag, "deny");
  init('{"forbidden_tags": ["edge"]}');
  assert.equal(evaluate(push({ tag: "tag", val: "edge" })).tag, "deny");
  assert.equal(evaluate(push({ tag: "tag", val: "latest" })).tag, "allow");
});

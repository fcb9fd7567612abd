// Unit tests of the policy with Node's test runner (`./test.sh`): the logic in
// src/require_source.js imports nothing; the entry module src/policy.js is
// loaded with its `portcullis:policy/log` import resolved to test/stubs/log.js
// (test.sh passes `--import ./test/stubs/register.js`). The built component
// itself is tested by ../build-all.sh through `portcullis policy test`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { SOURCE, decide, guarded, parseSettings } from "../src/require_source.js";
import { evaluate, init, validateSettings } from "../src/policy.js";
import { logged } from "./stubs/log.js";

const OCI_IMAGE = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const SETTINGS = { prefixes: ["https://github.com/acme/", "https://git.example.com/"] };
const ACME = "https://github.com/acme/api";

const config = (labels = []) => ({
  os: "linux",
  architecture: "amd64",
  variant: undefined,
  user: "app",
  labels,
  created: "2025-01-02T03:04:05Z",
  entrypoint: ["/app"],
  cmd: [],
  env: ["PATH=/usr/bin"],
  exposedPorts: ["8080/tcp"],
  historyLength: 3,
});

const image = ({ labels = [], configMediaType = OCI_CONFIG, readable = true } = {}) => ({
  configDigest: "sha256:" + "c".repeat(64),
  configMediaType,
  configSize: 500,
  config: readable && configMediaType === OCI_CONFIG ? config(labels) : undefined,
  layers: [{ digest: "sha256:" + "1".repeat(64), mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", size: 1000 }],
  totalSize: 1500,
});

const manifest = ({ mediaType = OCI_IMAGE, annotations = [], img = image(), children = [] } = {}) => ({
  mediaType,
  digest: "sha256:" + "4".repeat(64),
  size: 800,
  artifactType: undefined,
  subject: undefined,
  annotations,
  image: img,
  children,
});

const push = (m, extra = {}) => ({
  action: "push",
  resource: "manifest",
  repository: "team-a/api",
  reference: { tag: "tag", val: "v1" },
  identity: { subject: "alice", groups: ["devs"] },
  clientIp: "192.0.2.7",
  manifest: m,
  currentDigest: undefined,
  digestTags: [],
  mountFrom: undefined,
  now: 1735787045,
  ...extra,
});

const allow = { tag: "allow" };

test("an image whose config label names an allowed source is allowed", () => {
  const logs = [];
  const d = decide(SETTINGS, push(manifest({ img: image({ labels: [[SOURCE, ACME]] }) })), (l, m) => logs.push([l, m]));
  assert.deepEqual(d, allow);
  assert.equal(logs.length, 1);
  assert.equal(logs[0][0], "debug");
  assert.match(logs[0][1], /source https:\/\/github.com\/acme\/api \(label\)/);
});

test("an annotation is enough, and any prefix of the list will do", () => {
  const m = manifest({ annotations: [[SOURCE, "https://git.example.com/x/y"]] });
  assert.deepEqual(decide(SETTINGS, push(m)), allow);
});

test("an image without the label or the annotation is denied, saying what is missing", () => {
  const d = decide(SETTINGS, push(manifest({ img: image({ labels: [["maintainer", "x"]] }) })));
  assert.equal(d.tag, "deny");
  assert.equal(
    d.val,
    "image pushed to team-a/api has no `org.opencontainers.image.source` label or annotation: " +
      "set it to the URL of its source, starting with `https://github.com/acme/`, `https://git.example.com/`",
  );
});

test("an empty value counts as missing", () => {
  const d = decide(SETTINGS, push(manifest({ annotations: [[SOURCE, ""]] })));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /has no `org.opencontainers.image.source`/);
});

test("a source from another place is denied, naming it", () => {
  const d = decide(SETTINGS, push(manifest({ img: image({ labels: [[SOURCE, "https://github.com/evil/api"]] }) })));
  assert.equal(
    d.val,
    "image (label) pushed to team-a/api has `org.opencontainers.image.source` https://github.com/evil/api, " +
      "which does not start with an allowed prefix (`https://github.com/acme/`, `https://git.example.com/`)",
  );
});

test("a good label does not excuse a bad annotation", () => {
  const m = manifest({
    annotations: [[SOURCE, "https://github.com/evil/api"]],
    img: image({ labels: [[SOURCE, ACME]] }),
  });
  const d = decide(SETTINGS, push(m));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /^image \(annotation\)/);
});

test("an image whose config was not readable: the annotation decides, and the denial says so", () => {
  assert.deepEqual(
    decide(SETTINGS, push(manifest({ annotations: [[SOURCE, ACME]], img: image({ readable: false }) }))),
    allow,
  );
  const d = decide(SETTINGS, push(manifest({ img: image({ readable: false }) })));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /its config was not readable, so only annotations were checked/);
});

test("indexes are allowed unless they name a bad source; artifacts are allowed", () => {
  const index = (annotations) =>
    manifest({
      mediaType: OCI_INDEX,
      annotations,
      img: null, // (undefined would pick the default image)
      children: [{ digest: "sha256:" + "5".repeat(64), mediaType: OCI_IMAGE, size: 900, platform: { os: "linux", architecture: "arm64", variant: "v8", osVersion: undefined }, artifactType: undefined }],
    });
  assert.deepEqual(decide(SETTINGS, push(index([]))), allow);
  assert.deepEqual(decide(SETTINGS, push(index([[SOURCE, ACME]]))), allow);
  const d = decide(SETTINGS, push(index([[SOURCE, "https://elsewhere/"]])));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /^index pushed to team-a\/api has/);

  const signature = manifest({ img: image({ configMediaType: "application/vnd.dev.cosign.simplesigning.v1+json" }) });
  assert.deepEqual(decide(SETTINGS, push(signature)), allow);
});

test("pulls, other resources and requests without a manifest are allowed", () => {
  const bare = manifest();
  assert.deepEqual(decide(SETTINGS, push(bare, { action: "pull" })), allow);
  assert.deepEqual(decide(SETTINGS, push(bare, { resource: "blob" })), allow);
  assert.deepEqual(decide(SETTINGS, push(undefined)), allow);
});

test("settings: valid ones, and refusals", () => {
  assert.deepEqual(parseSettings('{"prefixes": ["https://github.com/acme/"]}'), { prefixes: ["https://github.com/acme/"] });
  assert.throws(() => parseSettings("{}"), /settings.prefixes: missing/);
  assert.throws(() => parseSettings('{"prefixes": []}'), /non-empty list/);
  assert.throws(() => parseSettings('{"prefixes": "https://x/"}'), /non-empty list/);
  assert.throws(() => parseSettings('{"prefixes": [""]}'), /prefixes\[0\]/);
  assert.throws(() => parseSettings('{"prefixes": ["a"], "prefix": 1}'), /unknown key `prefix`/);
  assert.throws(() => parseSettings("[]"), /expected a JSON object/);
  assert.throws(() => parseSettings("{"), /not valid JSON/);
});

test("guarded: an exception is logged at warn and becomes a denial with its message", () => {
  const logs = [];
  const d = guarded((l, m) => logs.push([l, m]), () => {
    throw new TypeError("boom");
  });
  assert.deepEqual(d, { tag: "deny", val: "js-require-source failed: boom" });
  assert.deepEqual(logs, [["warn", "boom"]]);
});

test("the exports: evaluate before init denies; after init it decides, logs, and survives bad input", () => {
  assert.deepEqual(evaluate(push(manifest())), { tag: "deny", val: "js-require-source was not initialised" });
  assert.throws(() => validateSettings('{"prefixes": []}'), /non-empty list/);
  init('{"prefixes": ["https://github.com/acme/"]}');
  logged.length = 0;
  assert.deepEqual(evaluate(push(manifest({ annotations: [[SOURCE, ACME]] }))), allow);
  assert.equal(logged.length, 1);
  assert.equal(logged[0][0], "debug");
  assert.equal(evaluate(push(manifest())).tag, "deny");
  // A manifest without its annotation list makes decide() throw a TypeError.
  logged.length = 0;
  const d = evaluate(push({ ...manifest(), annotations: undefined }));
  assert.equal(d.tag, "deny");
  assert.match(d.val, /^js-require-source failed: /);
  assert.equal(logged.length, 1);
  assert.equal(logged[0][0], "warn");
});

#!/usr/bin/env node
// A real OpenID provider for the integration tests: oauth2-mock-server 8 (npm,
// pinned in package.json) on a loopback port, plus a control port through
// which a test mints ID tokens with the claims it wants and rotates the
// signing key. Every token, minted or issued by the provider's own /token
// endpoint, is signed by the provider's key store, the one its JWKS publishes:
// a verifier under test sees exactly what it would see from a real provider.
//
//   node tests/oidc/provider.mjs
//
// prints one line of JSON on stdout once both ports listen,
//
//   {"issuer":"http://127.0.0.1:PORT","control":"http://127.0.0.1:CPORT"}
//
// then runs until SIGTERM/SIGINT, or until stdin reaches end of file when
// stdin is a pipe (so a test binary that dies, even by SIGKILL, takes its
// provider with it: tests/common/oidc.rs holds the write end). Diagnostics go
// to stderr.
//
// The provider (issuer port, plain HTTP) serves what oauth2-mock-server does:
//   GET  /.well-known/openid-configuration, GET /jwks,
//   GET  /authorize   answers at once with a 302 to redirect_uri?code=...&state=...
//                     (no login page; PKCE: code_challenge, method S256 or plain),
//   POST /token       client_credentials, authorization_code (code_verifier
//                     checked when given), password, refresh_token,
//   GET /userinfo, POST /revoke, GET /endsession, POST /introspect.
// The issuer is http://127.0.0.1:PORT (the library alone would say localhost).
// If OIDC_GROUPS is set (comma-separated), /token puts those groups in a
// `groups` claim of every token it issues (access and ID tokens).
//
// The control port (loopback, JSON):
//   POST /mint    {"sub", "aud", "groups", "exp_in", "nbf_in", "claims",
//                  "header", "alg", "kid"}, every field optional
//                 -> {"token": "<JWT>", "kid": "<kid>"}
//                 The header is {"alg", "typ":"JWT", "kid"}; the payload
//                 {"iss", "iat", "nbf", "exp"} plus sub, aud, groups when given.
//                 iat = now, exp = now + exp_in (default 3600; may be
//                 negative), nbf = now + nbf_in (default now - 10). `claims`
//                 is merged last and overrides anything (iss included); a null
//                 there removes the claim ({"exp": null}: no exp). `header`
//                 likewise ({"kid": null}: no kid); alg cannot be changed.
//                 alg "RS256" (default) or "ES256" picks that algorithm's
//                 current key; kid picks a key by kid instead (an older one).
//   POST /rotate  {"alg": "RS256"|"ES256", "retire": bool}, both optional
//                 -> {"kid": "<new kid>", "alg", "retired": [kids]}
//                 A new key becomes the current key of that algorithm (default
//                 RS256): /mint and /token sign with it from then on. The old
//                 key STAYS in the JWKS, as a real provider keeps publishing
//                 it while tokens it signed are alive, unless "retire": true,
//                 which drops every older key of that algorithm from the JWKS
//                 (and from use: minting with its kid is then a 400).
//   GET  /kids    -> {"kids": [every kid the JWKS lists; the order means nothing],
//                     "current": {"RS256": kid, "ES256": kid}}
//   GET  /jwks    -> the JWKS, as the provider's /jwks serves it.
//
// At start the key store holds two keys, one RS256 (RSA 2048) and one ES256
// (P-256), each with a random kid; the provider's own /token endpoint signs
// with the current RS256 key (its discovery document announces RS256 only).
//
// oauth2-mock-server is loaded from $PCTEST_OIDC_HOME/node_modules (default
// ~/.cache/portcullis-oidc), where `tests/oidc.sh install` runs `npm ci` from
// this directory's package-lock.json; nothing is installed next to this file.

import { createServer } from "node:http";
import { createRequire } from "node:module";
import { readFileSync, fstatSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { pathToFileURL, fileURLToPath } from "node:url";

const HOST = "127.0.0.1";
const ALGS = ["RS256", "ES256"];

async function loadOauth2MockServer() {
    const home = process.env.PCTEST_OIDC_HOME || join(homedir(), ".cache/portcullis-oidc");
    const pinned = JSON.parse(readFileSync(new URL("./package.json", import.meta.url), "utf8"))
        .dependencies["oauth2-mock-server"];
    const require = createRequire(join(home, "package.json"));
    let entry, installed;
    try {
        entry = require.resolve("oauth2-mock-server");
        installed = JSON.parse(
            readFileSync(join(home, "node_modules/oauth2-mock-server/package.json"), "utf8"),
        ).version;
    } catch (err) {
        fail(`oauth2-mock-server not found in ${home}/node_modules (run tests/oidc.sh install): ${err.message.split("\n")[0]}`);
    }
    if (installed !== pinned) {
        fail(`${home} holds oauth2-mock-server ${installed} but ${fileURLToPath(new URL("./package.json", import.meta.url))} pins ${pinned} (run tests/oidc.sh install)`);
    }
    // The package is ESM only: resolve it from the cache, then import it.
    return import(pathToFileURL(entry).href);
}

function fail(message) {
    process.stderr.write(`provider.mjs: ${message}\n`);
    process.exit(1);
}

const { OAuth2Server } = await loadOauth2MockServer();

const server = new OAuth2Server();
const issuer = server.issuer;
const keys = issuer.keys;

// The current key of each algorithm, and the retired kids.
const current = {};
const retired = new Set();
for (const alg of ALGS) {
    current[alg] = (await keys.generate(alg)).kid;
}

// JWKStore.get(undefined) hands out its keys round-robin, so the provider's
// own /token endpoint would alternate between every key it holds. Asked for no
// kid, it now gives the current RS256 key; retired keys are never given.
const storeGet = keys.get.bind(keys);
keys.get = (kid) => (retired.has(kid) ? undefined : storeGet(kid ?? current.RS256));
// The store has no way to remove a key: retired ones are left out of the JWKS.
const storeToJSON = keys.toJSON.bind(keys);
keys.toJSON = (includePrivate) => storeToJSON(includePrivate).filter((k) => !retired.has(k.kid));

const defaultGroups = (process.env.OIDC_GROUPS ?? "")
    .split(",")
    .map((g) => g.trim())
    .filter((g) => g !== "");
if (defaultGroups.length > 0) {
    server.service.on("beforeTokenSigning", (token) => {
        token.payload.groups = [...defaultGroups];
    });
}

await server.start(0, HOST);
const issuerUrl = `http://${HOST}:${server.address().port}`;
issuer.url = issuerUrl;

// ---- the control port ----

class BadRequest extends Error {}

function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
}

function mergeDeletingNulls(target, extra, what) {
    if (extra === undefined) return;
    if (!isObject(extra)) throw new BadRequest(`"${what}" must be an object`);
    for (const [name, value] of Object.entries(extra)) {
        if (value === null) delete target[name];
        else target[name] = value;
    }
}

function seconds(body, name) {
    const v = body[name];
    if (v !== undefined && !Number.isFinite(v)) throw new BadRequest(`"${name}" must be a number of seconds`);
    return v;
}

async function mint(body) {
    if (!isObject(body)) throw new BadRequest("the body must be a JSON object");
    const alg = body.alg ?? "RS256";
    if (!ALGS.includes(alg)) throw new BadRequest(`"alg" must be one of ${ALGS.join(", ")}`);
    const kid = body.kid ?? current[alg];
    if (typeof kid !== "string" || retired.has(kid) || keys.get(kid) === undefined) {
        throw new BadRequest(`no usable key with kid ${JSON.stringify(kid)}`);
    }
    const expIn = seconds(body, "exp_in") ?? 3600;
    const nbfIn = seconds(body, "nbf_in");
    if (body.groups !== undefined && !Array.isArray(body.groups)) throw new BadRequest(`"groups" must be an array`);
    const token = await issuer.buildToken({
        kid,
        expiresIn: expIn,
        scopesOrTransform: (header, payload) => {
            // payload holds iss, iat, exp (iat + exp_in) and nbf (iat - 10).
            if (nbfIn !== undefined) payload.nbf = payload.iat + nbfIn;
            if (body.sub !== undefined) payload.sub = body.sub;
            if (body.aud !== undefined) payload.aud = body.aud;
            if (body.groups !== undefined) payload.groups = body.groups;
            mergeDeletingNulls(payload, body.claims, "claims");
            mergeDeletingNulls(header, body.header, "header");
        },
    });
    return { token, kid };
}

async function rotate(body) {
    if (body !== undefined && !isObject(body)) throw new BadRequest("the body must be a JSON object");
    const alg = body?.alg ?? "RS256";
    if (!ALGS.includes(alg)) throw new BadRequest(`"alg" must be one of ${ALGS.join(", ")}`);
    const old = storeToJSON(false)
        .filter((k) => k.alg === alg && !retired.has(k.kid))
        .map((k) => k.kid);
    const { kid } = await keys.generate(alg);
    current[alg] = kid;
    const dropped = body?.retire === true ? old : [];
    for (const k of dropped) retired.add(k);
    return { kid, alg, retired: dropped };
}

function kids() {
    return { kids: keys.toJSON().map((k) => k.kid), current: { ...current } };
}

async function readJson(req) {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const text = Buffer.concat(chunks).toString("utf8").trim();
    if (text === "") return undefined;
    try {
        return JSON.parse(text);
    } catch {
        throw new BadRequest("the body is not JSON");
    }
}

const control = createServer(async (req, res) => {
    const reply = (status, value) => {
        const body = JSON.stringify(value);
        res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
        res.end(body);
    };
    try {
        const route = `${req.method} ${new URL(req.url, "http://x").pathname}`;
        switch (route) {
            case "POST /mint":
                return reply(200, await mint((await readJson(req)) ?? {}));
            case "POST /rotate":
                return reply(200, await rotate(await readJson(req)));
            case "GET /kids":
                return reply(200, kids());
            case "GET /jwks":
                return reply(200, { keys: keys.toJSON() });
            default:
                return reply(404, { error: `no route ${route}` });
        }
    } catch (err) {
        if (err instanceof BadRequest) return reply(400, { error: err.message });
        process.stderr.write(`provider.mjs: ${err.stack ?? err}\n`);
        return reply(500, { error: String(err) });
    }
});
await new Promise((resolve, reject) => control.listen(0, HOST).once("listening", resolve).once("error", reject));
const controlUrl = `http://${HOST}:${control.address().port}`;

// ---- running until told to stop ----

const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
// A pipe's end of file is the parent's death; a terminal or /dev/null on
// stdin (a shell running this by hand) is ignored.
if (fstatSync(0).isFIFO()) {
    process.stdin.on("end", stop);
    process.stdin.on("error", stop);
    process.stdin.resume();
}

process.stdout.write(`${JSON.stringify({ issuer: issuerUrl, control: controlUrl })}\n`);

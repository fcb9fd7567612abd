#!/usr/bin/env python3
"""Tests of bootstrap.py against a fake Garage (admin API v2 and the one S3
call), standard library only; run by deploy/check.sh:

    python3 deploy/kubernetes/components/garage/bootstrap_test.py

The signature vectors were checked against botocore's S3SigV4Auth.
"""

import datetime
import http.server
import importlib.util
import json
import os
import threading
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("bootstrap", os.path.join(HERE, "bootstrap.py"))
bootstrap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bootstrap)
bootstrap.log = lambda message: None  # quiet; failures say enough

TOKEN = "admin-token"
KEY_ID = "GK0123456789abcdef01234567"
SECRET = "ab" * 32


class FakeGarage:
    """Three nodes that come up one by one, a layout, buckets, keys."""

    def __init__(self, nodes_up_after=2):
        self.status_calls = 0
        self.nodes_up_after = nodes_up_after
        self.nodes = [
            {"id": f"{i:x}" * 64, "hostname": f"garage-{i}", "isUp": False, "draining": False}
            for i in range(1, 4)
        ]
        self.layout = {"version": 0, "roles": [], "stagedRoleChanges": []}
        self.buckets = {}  # alias -> info
        self.keys = {}  # id -> secret
        self.permissions = {}  # (bucket id, key id) -> dict
        self.lifecycle = {}  # bucket alias -> xml
        self.calls = []

    # -- admin API

    def admin(self, method, endpoint, query, body):
        self.calls.append(endpoint)
        if endpoint == "GetClusterStatus":
            self.status_calls += 1
            up = min(3, self.status_calls // self.nodes_up_after)
            for i, node in enumerate(self.nodes):
                node["isUp"] = i < max(up, 1)
            return 200, {"layoutVersion": self.layout["version"], "nodes": self.nodes}
        if endpoint == "GetClusterLayout":
            return 200, self.layout
        if endpoint == "UpdateClusterLayout":
            self.layout["stagedRoleChanges"] = body["roles"]
            return 200, self.layout
        if endpoint == "ApplyClusterLayout":
            if body["version"] != self.layout["version"] + 1:
                return 400, {"code": "InvalidRequest", "message": "wrong version"}
            self.layout = {
                "version": body["version"],
                "roles": self.layout["stagedRoleChanges"],
                "stagedRoleChanges": [],
            }
            return 200, {"message": ["ok"], "layout": self.layout}
        if endpoint == "GetClusterHealth":
            healthy = bool(self.layout["roles"])
            return 200, {"status": "healthy" if healthy else "unavailable"}
        if endpoint == "GetBucketInfo":
            info = self.buckets.get(query["globalAlias"])
            return (200, info) if info else (404, {"code": "NoSuchBucket"})
        if endpoint == "CreateBucket":
            alias = body["globalAlias"]
            self.buckets[alias] = {"id": f"bucket-{alias}", "globalAliases": [alias]}
            return 200, self.buckets[alias]
        if endpoint == "GetKeyInfo":
            if query["id"] not in self.keys:
                return 404, {"code": "NoSuchAccessKey"}
            info = {"accessKeyId": query["id"], "name": "x", "buckets": [], "permissions": {}}
            if query.get("showSecretKey") == "true":
                info["secretAccessKey"] = self.keys[query["id"]]
            return 200, info
        if endpoint == "ImportKey":
            self.keys[body["accessKeyId"]] = body["secretAccessKey"]
            return 200, {"accessKeyId": body["accessKeyId"]}
        if endpoint == "AllowBucketKey":
            self.permissions[(body["bucketId"], body["accessKeyId"])] = body["permissions"]
            return 200, {}
        return 404, {"code": "NoSuchEndpoint", "message": endpoint}

    # -- S3: PUT /<bucket>?lifecycle, signed by a key Garage knows

    def s3(self, method, path, query, headers, body, url):
        self.calls.append("PutBucketLifecycleConfiguration")
        alias = urllib.parse.unquote(path.lstrip("/"))
        if method != "PUT" or query != "lifecycle" or alias not in self.buckets:
            return 400, b"unexpected request"
        credential = headers["Authorization"].split("Credential=")[1].split("/")[0]
        secret = self.keys.get(credential)
        if secret is None:
            return 403, b"InvalidAccessKeyId"
        now = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
        expected = bootstrap.sigv4_headers("PUT", url, body, "garage", "s3", credential, secret, now)
        if headers["Authorization"] != expected["Authorization"]:
            return 403, b"SignatureDoesNotMatch"
        self.lifecycle[alias] = body.decode()
        return 200, b""


def serve(garage):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urllib.parse.urlsplit(self.path)
            if parts.path.startswith("/v2/"):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, answer = 403, {"code": "Forbidden"}
                else:
                    query = dict(urllib.parse.parse_qsl(parts.query))
                    status, answer = garage.admin(
                        self.command, parts.path[4:], query, json.loads(body) if body else None
                    )
                raw = json.dumps(answer).encode()
            else:
                url = f"http://{self.headers['Host']}{self.path}"
                status, raw = garage.s3(
                    self.command, parts.path, parts.query, self.headers, body, url
                )
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = handle_any

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class BootstrapTest(unittest.TestCase):
    def setUp(self):
        self.garage = FakeGarage()
        self.server = serve(self.garage)
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.env = {
            "GARAGE_ADMIN_URL": url,
            "GARAGE_ADMIN_TOKEN": TOKEN,
            "GARAGE_S3_URL": url,
            "GARAGE_NODES": "3",
            "GARAGE_CAPACITY": "50G",
            "GARAGE_BUCKET": "registry",
            "PORTCULLIS_STORAGE__ACCESS_KEY_ID": KEY_ID,
            "PORTCULLIS_STORAGE__SECRET_ACCESS_KEY": SECRET,
            "BOOTSTRAP_TIMEOUT": "60",
            "BOOTSTRAP_POLL": "5",
        }
        self.clock = FakeClock()

    def tearDown(self):
        self.server.shutdown()
        self.server.server_close()

    def run_bootstrap(self):
        bootstrap.Bootstrap(self.env, clock=self.clock, sleep=self.clock.sleep).run()

    def test_fresh_cluster_is_set_up_and_a_second_run_changes_nothing(self):
        self.run_bootstrap()
        g = self.garage
        self.assertEqual(g.layout["version"], 1)
        self.assertEqual(
            sorted((r["id"], r["zone"], r["capacity"]) for r in g.layout["roles"]),
            sorted((n["id"], "dc1", 50 * 10**9) for n in g.nodes),
        )
        self.assertEqual(g.keys, {KEY_ID: SECRET})
        self.assertEqual(
            g.permissions, {("bucket-registry", KEY_ID): {"read": True, "write": True, "owner": True}}
        )
        self.assertIn("<DaysAfterInitiation>1</DaysAfterInitiation>", g.lifecycle["registry"])

        g.calls.clear()
        self.run_bootstrap()
        for changing in ("UpdateClusterLayout", "ApplyClusterLayout", "CreateBucket", "ImportKey"):
            self.assertNotIn(changing, g.calls)
        self.assertEqual(g.layout["version"], 1)

    def test_an_existing_layout_is_left_alone(self):
        self.garage.layout = {"version": 4, "roles": [{"id": "f" * 64}], "stagedRoleChanges": []}
        self.run_bootstrap()
        self.assertEqual(self.garage.layout["version"], 4)
        self.assertNotIn("UpdateClusterLayout", self.garage.calls)

    def test_a_key_with_another_secret_is_refused(self):
        self.garage.keys[KEY_ID] = "cd" * 32
        with self.assertRaisesRegex(bootstrap.Failed, "another secret"):
            self.run_bootstrap()

    def test_gives_up_when_the_nodes_never_come_up(self):
        self.garage.nodes_up_after = 10**9
        with self.assertRaisesRegex(bootstrap.Failed, "waiting for the nodes: gave up"):
            self.run_bootstrap()
        self.assertGreaterEqual(self.clock.now, 60)

    def test_a_wrong_admin_token_fails_at_once(self):
        self.env["GARAGE_ADMIN_TOKEN"] = "wrong"
        with self.assertRaisesRegex(bootstrap.Failed, "HTTP 403"):
            self.run_bootstrap()
        self.assertEqual(self.clock.now, 0)

    def test_keys_not_in_garages_format_are_refused(self):
        self.env["PORTCULLIS_STORAGE__ACCESS_KEY_ID"] = "AKIAEXAMPLE"
        with self.assertRaisesRegex(bootstrap.Failed, "GK and 24 hex"):
            bootstrap.Bootstrap(self.env)


class UnitTest(unittest.TestCase):
    def test_parse_size(self):
        self.assertEqual(bootstrap.parse_size("50G"), 50 * 10**9)
        self.assertEqual(bootstrap.parse_size("50GiB"), 50 * 2**30)
        self.assertEqual(bootstrap.parse_size("50Gi"), 50 * 2**30)
        self.assertEqual(bootstrap.parse_size("1T"), 10**12)
        self.assertEqual(bootstrap.parse_size("4096"), 4096)
        with self.assertRaises(bootstrap.Failed):
            bootstrap.parse_size("lots")

    def test_sigv4_matches_botocore(self):
        now = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.timezone.utc)
        cases = [
            (
                "PUT",
                "http://garage-0.garage-headless:3900/registry?lifecycle",
                bootstrap.lifecycle_xml(1),
                "garage",
                "5cc16aee5c13e2e49ec92666f7d866d0cd55d5bfa6b9089da8404aa61cc6fe77",
            ),
            (
                "GET",
                "http://example.amazonaws.com/a%20b/c?b=2&a=1&z=",
                b"",
                "us-east-1",
                "7752890a88aa5e3c756eb6a618719b8f61ae7b757a5e5691e153db9901bfbfae",
            ),
        ]
        for method, url, body, region, signature in cases:
            headers = bootstrap.sigv4_headers(method, url, body, region, "s3", KEY_ID, SECRET, now)
            self.assertTrue(headers["Authorization"].endswith(f"Signature={signature}"), url)


if __name__ == "__main__":
    unittest.main(verbosity=1)

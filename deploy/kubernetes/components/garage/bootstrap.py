#!/usr/bin/env python3
"""Sets up the Garage cluster of components/garage for Portcullis.

Run once by the Job "garage-bootstrap" (bootstrap-job.yaml); running it again
changes nothing, every step looks before it acts:

  1. waits until GARAGE_NODES nodes are up (they find each other through
     GarageNode objects, garage.toml's [kubernetes_discovery]);
  2. if the cluster has no layout yet, gives each node a storage role (zone
     GARAGE_ZONE, capacity GARAGE_CAPACITY) and applies it; an existing
     layout is left alone (adding or replacing nodes is yours: deploy/README.md);
  3. waits until the cluster is healthy;
  4. creates the bucket GARAGE_BUCKET unless it exists;
  5. imports the registry's key (PORTCULLIS_STORAGE__ACCESS_KEY_ID and
     PORTCULLIS_STORAGE__SECRET_ACCESS_KEY, from the Secret "portcullis-s3")
     unless Garage has it, and allows it read, write and owner on the bucket;
  6. gives the bucket a lifecycle rule that aborts multipart uploads left
     incomplete for ABORT_INCOMPLETE_UPLOADS_DAYS days: an upload cut off by a
     crash leaves parts that no listing shows and nothing else removes.

Only the Python standard library: the admin API (v2) is JSON over HTTP with a
bearer token, and the one S3 request (PutBucketLifecycleConfiguration) is
signed here with AWS Signature Version 4.

Environment: GARAGE_ADMIN_URL, GARAGE_ADMIN_TOKEN, GARAGE_S3_URL,
GARAGE_REGION, GARAGE_NODES, GARAGE_ZONE, GARAGE_CAPACITY, GARAGE_BUCKET,
GARAGE_KEY_NAME, PORTCULLIS_STORAGE__ACCESS_KEY_ID,
PORTCULLIS_STORAGE__SECRET_ACCESS_KEY, ABORT_INCOMPLETE_UPLOADS_DAYS,
BOOTSTRAP_TIMEOUT (seconds), BOOTSTRAP_POLL (seconds).
"""

import datetime
import hashlib
import hmac
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


class Failed(Exception):
    """A step that cannot succeed by waiting longer."""


def log(message):
    print(f"garage-bootstrap: {message}", flush=True)


def parse_size(text):
    """'50G' (10^9), '50GiB' or '50Gi' (2^30), or a number of bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGTP]?)(i?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise Failed(f"GARAGE_CAPACITY={text!r}: expected a size such as 50G or 50GiB")
    number, unit, binary = match.groups()
    power = " KMGTP".index(unit.upper() or " ")
    return int(number) * (1024 if binary else 1000) ** power


# ---------------------------------------------------------------- HTTP


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


def request(method, url, headers=None, body=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        raise HttpError(e.code, e.read().decode("utf-8", "replace")) from None


class Admin:
    """Garage's admin API v2: GET with query parameters, POST with a JSON body."""

    def __init__(self, url, token):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, endpoint, query=None, body=None):
        url = f"{self.url}/v2/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        _, raw = request(method, url, headers, data)
        return json.loads(raw) if raw.strip() else None

    def get(self, endpoint, **query):
        return self.call("GET", endpoint, query=query)

    def post(self, endpoint, body, **query):
        return self.call("POST", endpoint, query=query, body=body)

    def lookup(self, endpoint, **query):
        """GET, or None when Garage answers 404 (no such bucket or key)."""
        try:
            return self.get(endpoint, **query)
        except HttpError as e:
            if e.status == 404:
                return None
            raise


# ---------------------------------------------------------------- SigV4


def sigv4_headers(method, url, body, region, service, access_key, secret_key, now):
    """The headers that sign a request with AWS Signature Version 4 (S3's
    variant: the path, already percent-encoded in url, is not encoded again)."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {
        "host": parts.netloc,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
    }
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in query
    )
    signed = ";".join(sorted(headers))
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",  # already percent-encoded, and S3 encodes it once
            canonical_query,
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def lifecycle_xml(days):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Rule>"
        "<ID>abort-incomplete-multipart-uploads</ID>"
        "<Status>Enabled</Status>"
        "<AbortIncompleteMultipartUpload>"
        f"<DaysAfterInitiation>{days}</DaysAfterInitiation>"
        "</AbortIncompleteMultipartUpload>"
        "</Rule>"
        "</LifecycleConfiguration>"
    ).encode()


# ---------------------------------------------------------------- steps


class Bootstrap:
    def __init__(self, env, clock=time.monotonic, sleep=time.sleep):
        def need(name):
            value = env.get(name, "")
            if not value:
                raise Failed(f"{name} is not set")
            return value

        self.admin = Admin(need("GARAGE_ADMIN_URL"), need("GARAGE_ADMIN_TOKEN"))
        self.s3_url = need("GARAGE_S3_URL").rstrip("/")
        self.region = env.get("GARAGE_REGION", "garage")
        self.nodes = int(env.get("GARAGE_NODES", "3"))
        self.zone = env.get("GARAGE_ZONE", "dc1")
        self.capacity = parse_size(need("GARAGE_CAPACITY"))
        self.bucket = need("GARAGE_BUCKET")
        self.key_name = env.get("GARAGE_KEY_NAME", "portcullis")
        self.key_id = need("PORTCULLIS_STORAGE__ACCESS_KEY_ID")
        self.secret = need("PORTCULLIS_STORAGE__SECRET_ACCESS_KEY")
        self.abort_days = int(env.get("ABORT_INCOMPLETE_UPLOADS_DAYS", "1"))
        self.timeout = float(env.get("BOOTSTRAP_TIMEOUT", "900"))
        self.poll = float(env.get("BOOTSTRAP_POLL", "5"))
        self.clock = clock
        self.sleep = sleep
        # Garage's own format (what `garage key create` makes): GK + 24 hex, 64 hex.
        if not re.fullmatch(r"GK[0-9a-f]{24}", self.key_id):
            raise Failed(
                "PORTCULLIS_STORAGE__ACCESS_KEY_ID must look like Garage's own keys: "
                "GK and 24 hex digits (GK$(openssl rand -hex 12))"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.secret):
            raise Failed(
                "PORTCULLIS_STORAGE__SECRET_ACCESS_KEY must be 64 hex digits (openssl rand -hex 32)"
            )

    def until(self, what, attempt):
        """Calls attempt() until it returns something true; connection errors
        and 5xx answers are retried too, until BOOTSTRAP_TIMEOUT."""
        deadline = self.clock() + self.timeout
        last = None
        while True:
            try:
                result = attempt()
                if result:
                    return result
            except HttpError as e:
                if e.status < 500 and e.status != 429:
                    raise Failed(f"{what}: {e}") from None
                last = e
            except (urllib.error.URLError, OSError) as e:
                last = e
            if self.clock() >= deadline:
                raise Failed(f"{what}: gave up after {self.timeout:.0f}s (last: {last})")
            self.sleep(self.poll)

    def wait_for_nodes(self):
        def attempt():
            status = self.admin.get("GetClusterStatus")
            up = [n for n in status["nodes"] if n.get("isUp")]
            if len(up) >= self.nodes:
                return status
            log(f"{len(up)} of {self.nodes} nodes up")
            return None

        status = self.until("waiting for the nodes", attempt)
        return [n for n in status["nodes"] if n.get("isUp")]

    def ensure_layout(self, up):
        layout = self.until("reading the layout", lambda: self.admin.get("GetClusterLayout"))
        if layout["roles"]:
            log(
                f"layout version {layout['version']} has {len(layout['roles'])} nodes: left as it is"
            )
            return
        roles = [
            {
                "id": n["id"],
                "zone": self.zone,
                "capacity": self.capacity,
                "tags": [n["hostname"]] if n.get("hostname") else [],
            }
            for n in up
        ]
        self.until(
            "staging the layout",
            lambda: self.admin.post("UpdateClusterLayout", {"roles": roles}) or True,
        )
        version = layout["version"] + 1
        self.until(
            "applying the layout",
            lambda: self.admin.post("ApplyClusterLayout", {"version": version}) or True,
        )
        log(
            f"layout version {version} applied: {len(roles)} nodes in zone {self.zone}, "
            f"{self.capacity} bytes each"
        )

    def wait_until_healthy(self):
        def attempt():
            health = self.admin.get("GetClusterHealth")
            if health["status"] == "healthy":
                return health
            log(f"cluster {health['status']}")
            return None

        self.until("waiting for a healthy cluster", attempt)
        log("cluster healthy")

    def ensure_bucket(self):
        def attempt():
            info = self.admin.lookup("GetBucketInfo", globalAlias=self.bucket)
            if info is None:
                info = self.admin.post("CreateBucket", {"globalAlias": self.bucket})
                log(f"bucket {self.bucket} created")
            else:
                log(f"bucket {self.bucket} exists")
            return info

        return self.until("creating the bucket", attempt)["id"]

    def ensure_key(self, bucket_id):
        def attempt():
            info = self.admin.lookup("GetKeyInfo", id=self.key_id, showSecretKey="true")
            if info is None:
                self.admin.post(
                    "ImportKey",
                    {
                        "accessKeyId": self.key_id,
                        "secretAccessKey": self.secret,
                        "name": self.key_name,
                    },
                )
                log(f"key {self.key_id} ({self.key_name}) imported")
            elif info.get("secretAccessKey") not in (None, self.secret):
                raise Failed(
                    f"key {self.key_id} exists in Garage with another secret than the "
                    "Secret portcullis-s3 holds: the registry would be refused"
                )
            else:
                log(f"key {self.key_id} exists")
            return True

        self.until("importing the key", attempt)
        permissions = {"read": True, "write": True, "owner": True}
        self.until(
            "allowing the key on the bucket",
            lambda: self.admin.post(
                "AllowBucketKey",
                {"bucketId": bucket_id, "accessKeyId": self.key_id, "permissions": permissions},
            )
            or True,
        )
        log(f"key {self.key_id} may read, write and own bucket {self.bucket}")

    def ensure_lifecycle(self):
        body = lifecycle_xml(self.abort_days)
        url = f"{self.s3_url}/{urllib.parse.quote(self.bucket)}?lifecycle"

        def attempt():
            now = datetime.datetime.now(datetime.timezone.utc)
            headers = sigv4_headers(
                "PUT", url, body, self.region, "s3", self.key_id, self.secret, now
            )
            headers["Content-Type"] = "application/xml"
            request("PUT", url, headers, body)
            return True

        self.until("setting the bucket's lifecycle", attempt)
        log(
            f"bucket {self.bucket}: incomplete multipart uploads are aborted after "
            f"{self.abort_days} day(s)"
        )

    def run(self):
        up = self.wait_for_nodes()
        log(f"{len(up)} nodes up: " + ", ".join(n.get("hostname") or n["id"][:16] for n in up))
        self.ensure_layout(up)
        self.wait_until_healthy()
        bucket_id = self.ensure_bucket()
        self.ensure_key(bucket_id)
        self.ensure_lifecycle()
        log("done")


def main():
    try:
        Bootstrap(os.environ).run()
    except Failed as e:
        log(f"failed: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

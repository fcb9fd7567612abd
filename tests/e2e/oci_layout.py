#!/usr/bin/env python3
"""Builds and reads OCI image layouts for the end-to-end tests (stdlib only).

    oci_layout.py build DIR SEED   write a layout with three references:
                                   "single" (2 layers), "other" (1 layer) and
                                   "multi" (an image index: linux/amd64 + linux/arm64)
    oci_layout.py digest DIR REF   print the digest index.json gives REF
    oci_layout.py children DIR REF print the manifest digests of the index REF, one a line
    oci_layout.py verify DIR REF   check every blob REF reaches is present and
                                   hashes to its digest; print how many were checked

SEED makes the content (and so the digests) distinct between tests yet
reproducible. Nothing here talks to a registry; the tests push with real tools.
"""

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


class Layout:
    def __init__(self, root):
        self.root = root

    def blob_path(self, digest):
        algorithm, hex_ = digest.split(":", 1)
        return os.path.join(self.root, "blobs", algorithm, hex_)

    def write_blob(self, data, media_type):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def read_blob(self, digest):
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def index(self):
        with open(os.path.join(self.root, "index.json")) as f:
            return json.load(f)

    def descriptor(self, ref):
        for d in self.index()["manifests"]:
            if d.get("annotations", {}).get(REF_NAME) == ref:
                return d
        sys.exit(f"{self.root}: no reference {ref!r} in index.json")


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def layer(files):
    """A reproducible gzipped tar of {path: bytes}, and its uncompressed digest."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    raw = raw.getvalue()
    zipped = io.BytesIO()
    with gzip.GzipFile(fileobj=zipped, mode="wb", mtime=0) as gz:
        gz.write(raw)
    return zipped.getvalue(), "sha256:" + hashlib.sha256(raw).hexdigest()


def content(seed, name, size):
    """Deterministic bytes that differ per seed and name."""
    out, block = bytearray(), f"{seed}/{name}".encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def image(layout, seed, name, arch, layer_files):
    layers, diff_ids = [], []
    for files in layer_files:
        data, diff_id = layer({p: content(seed, f"{name}{p}", n) for p, n in files.items()})
        layers.append(layout.write_blob(data, OCI_LAYER))
        diff_ids.append(diff_id)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Labels": {"e2e.seed": seed, "e2e.image": name}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"e2e layer {i}"} for i in range(len(layers))],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": layout.write_blob(canonical(config), OCI_CONFIG),
        "layers": layers,
    }
    descriptor = layout.write_blob(canonical(manifest), OCI_MANIFEST)
    descriptor["platform"] = {"architecture": arch, "os": "linux"}
    return descriptor


def build(root, seed):
    layout = Layout(root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    single = image(layout, seed, "single", "amd64",
                   [{"app/data.bin": 300_000}, {"etc/app.conf": 200, "app/more.bin": 50_000}])
    other = image(layout, seed, "other", "amd64", [{"other/data.bin": 80_000}])
    platforms = [image(layout, seed, f"multi-{arch}", arch, [{f"{arch}/data.bin": 60_000}])
                 for arch in ("amd64", "arm64")]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": platforms}
    multi = layout.write_blob(canonical(index), OCI_INDEX)
    entries = []
    for ref, d in (("single", single), ("other", other), ("multi", multi)):
        d = {k: v for k, v in d.items() if k != "platform"}
        d["annotations"] = {REF_NAME: ref}
        entries.append(d)
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, f)


def verify(layout, descriptor):
    """Checks the blob and everything it references; returns how many blobs."""
    data = layout.read_blob(descriptor["digest"])
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor["digest"] or len(data) != descriptor["size"]:
        sys.exit(f"blob {descriptor['digest']} hashes to {actual}, size {len(data)}")
    if descriptor["mediaType"] not in (OCI_MANIFEST, OCI_INDEX,
                                       "application/vnd.docker.distribution.manifest.v2+json",
                                       "application/vnd.docker.distribution.manifest.list.v2+json"):
        return 1
    doc = json.loads(data)
    children = doc.get("manifests", []) + ([doc["config"]] if "config" in doc else []) + doc.get("layers", [])
    return 1 + sum(verify(layout, child) for child in children)


def main(argv):
    if len(argv) != 4 or argv[1] not in ("build", "digest", "children", "verify"):
        sys.exit(__doc__)
    command, root, arg = argv[1], argv[2], argv[3]
    layout = Layout(root)
    if command == "build":
        build(root, arg)
    elif command == "digest":
        print(layout.descriptor(arg)["digest"])
    elif command == "children":
        index = json.loads(layout.read_blob(layout.descriptor(arg)["digest"]))
        for d in index["manifests"]:
            print(d["digest"])
    else:
        print(verify(layout, layout.descriptor(arg)))


if __name__ == "__main__":
    main(sys.argv)

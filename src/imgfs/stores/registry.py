"""An image in a registry (OCI distribution API) as a blob store, presented as an OCI layout.

`index.json` is made from the reference (one descriptor: the manifest or index the tag or digest names),
and `blobs/sha256/<hex>` is served from /v2/<repo>/manifests/<digest> for the digests that descriptors
seen so far name as manifests, else from /v2/<repo>/blobs/<digest>; the OCI parser reads it as it reads
a layout. Manifests and configs are fetched whole and checked against their digests; layers only when
and where a command reads them (see registry_blob.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from ..errors import FormatError, TruncatedError
from ..tarindex import Source
from ..tarindex.store import Store
from . import reference
from .auth import Authenticator, parse_creds
from .base import MAX_JSON
from .http import Client, HttpError, Response
from .registry_blob import BlockCache, RegistryBlob

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_V2))
SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
           "application/vnd.docker.distribution.manifest.v1+prettyjws")
MAX_MANIFEST = 4 << 20  # registries refuse larger manifests; so does imgfs
REF_NAME = "org.opencontainers.image.ref.name"


def _compression(media_type: str | None) -> str | None:
    mt = (media_type or "").lower()
    if "gzip" in mt:
        return "gzip"
    if "zstd" in mt:
        return "zstd"
    return None


class _Bytes:
    """A document already in memory, as a Source."""

    def __init__(self, data: bytes) -> None:
        self.data, self.size = data, len(data)

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes of the document; past its end is a truncation."""
        if offset < 0 or offset + length > self.size:
            raise TruncatedError(f"read of {length} bytes at {offset} past the end of a {self.size}-byte document")
        return self.data[offset:offset + length]


class RegistryStore:
    """One image reference in one registry; documents by digest, layers by range or one verified pass."""

    kind_suffix = ""
    damage: str | None = None

    def __init__(self, name: str, ref: reference.Reference, *, cache: Store | None = None,
                 creds: str | None = None, tls_verify: bool = True, cert_dir: str | None = None,
                 timeout: float | None = None, log: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.ref: str | None = None  # the reference picked one manifest or index: every image of it is shown
        self.reference = ref
        self.client = Client(tls_verify=tls_verify, cert_dir=cert_dir, timeout=timeout, log=log)
        self.auth = Authenticator(self.client, ref.host, ref.repo, parse_creds(creds) if creds else None,
                                  tls_verify)
        self.scope = f"repository:{ref.repo}:pull"
        self.tls_verify = tls_verify
        self.cache = cache  # documents by digest (a tag is asked again on every open: tags move)
        self.blocks = BlockCache(cache)
        self._lock = threading.Lock()
        self._docs: dict[str, bytes] = {}  # digest -> a verified manifest or config
        self._manifests: set[str] = set()  # digests that descriptors name as manifests or indexes
        self._descs: dict[str, dict[str, Any]] = {}  # digest -> the descriptor that named it
        self._blobs: dict[str, RegistryBlob] = {}
        try:
            self.base = self._ping()
            body, media_type, digest = self._manifest(ref.selector)
        except BaseException:
            self.client.close()
            raise
        self._docs[digest] = body
        self._manifests.add(digest)
        self._note_children(body)
        top = {"mediaType": media_type, "digest": digest, "size": len(body),
               "annotations": {REF_NAME: str(ref)}}
        self._layout = {
            "index.json": json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}).encode(),
            "oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
        }

    # -- talking to the registry ---------------------------------------------------------------
    def _ping(self) -> str:
        """The base URL: https, or plain http where skopeo allows it (loopback, --tls-verify=false).

        On loopback plain http is tried first: it costs no TLS set-up (loading the system CAs), and a TLS
        registry answers it with 400, after which https is tried.
        """
        host = self.reference.api_host
        schemes = ["http", "https"] if self.reference.loopback else \
            ["https"] if self.tls_verify else ["https", "http"]
        last: HttpError | None = None
        for scheme in schemes:
            try:
                resp = self.client.get(f"{scheme}://{host}/v2/", limit=1 << 16)
            except HttpError as e:
                if "not trusted" in str(e):
                    raise
                last = e
                continue
            if resp.status in (200, 401):
                return f"{scheme}://{host}"
            if resp.status == 400 and scheme == "http" and scheme != schemes[-1]:
                continue  # a TLS server answering plain HTTP
            raise FormatError(f"{host}: not a registry (GET /v2/ answered HTTP {resp.status})")
        assert last is not None
        raise last

    def _get(self, path: str, headers: dict[str, str], limit: int,
             sink: Callable[[bytes], None] | None = None) -> Response:
        """An authenticated GET: a 401 is answered once (token or Basic); a second 401 is a refusal."""
        url = self.base + path
        auth_host = self.base.split("://", 1)[1]
        resp = self.client.get(url, {**headers, **self.auth.header(self.scope)}, limit=limit, sink=sink,
                               auth_host=auth_host)
        if resp.status == 401:
            challenges = resp.headers.get_all("WWW-Authenticate") or []
            retry = self.auth.answer(challenges, self.scope)
            resp = self.client.get(url, {**headers, **retry}, limit=limit, sink=sink, auth_host=auth_host)
            if resp.status == 401:
                raise HttpError(f"{self.reference.host}: access denied (HTTP 401 with fresh credentials)")
        if resp.status == 403:
            raise HttpError(f"{self.reference.host}: access to {self.reference.repo} denied (HTTP 403)")
        return resp

    def blob_get(self, digest: str, headers: dict[str, str], limit: int,
                 sink: Callable[[bytes], None] | None = None) -> Response:
        """GET a blob (with Range in `headers`, or whole into `sink`)."""
        resp = self._get(f"/v2/{self.reference.repo}/blobs/{digest}", headers, limit, sink)
        if resp.status == 404:
            raise FormatError(f"{self.name}: blob {digest} is not in the registry")
        return resp

    def _manifest(self, selector: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, checked against the digest asked for."""
        try:
            resp = self._get(f"/v2/{self.reference.repo}/manifests/{selector}", {"Accept": ACCEPT}, MAX_MANIFEST)
        except FormatError as e:
            if "larger than expected" in str(e):
                raise FormatError(f"{self.name}: the manifest is larger than {MAX_MANIFEST} bytes") from None
            raise
        if resp.status == 404:
            raise FormatError(f"{self.name}: no such image (manifest {selector} unknown)")
        if resp.status != 200:
            raise FormatError(f"{self.name}: HTTP {resp.status} for manifest {selector}")
        body = resp.body
        try:
            doc = json.loads(body)
        except ValueError:
            raise FormatError(f"{self.name}: manifest {selector} is not JSON") from None
        media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
        if not isinstance(doc, dict):
            raise FormatError(f"{self.name}: manifest {selector} is not a JSON object")
        if media_type in SCHEMA1 or doc.get("schemaVersion") == 1:
            raise FormatError(f"{self.name}: a schema 1 manifest (deprecated, unsupported): push the image "
                              "again with a current docker, podman or skopeo")
        if isinstance(doc.get("mediaType"), str):
            media_type = doc["mediaType"]
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if selector.startswith("sha256:") and digest != selector:
            raise FormatError(f"{self.name}: manifest {selector} does not match its digest")
        return body, media_type, digest

    def _note_children(self, body: bytes) -> None:
        """Remember what a manifest's descriptors say: which digests are manifests, sizes, media types."""
        try:
            doc = json.loads(body)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        children = doc.get("manifests")
        if isinstance(children, list):
            for d in children:
                if isinstance(d, dict) and isinstance(d.get("digest"), str):
                    self._manifests.add(d["digest"])
                    self._descs.setdefault(d["digest"], d)
        for d in [doc.get("config"), *(doc.get("layers") or [])]:
            if isinstance(d, dict) and isinstance(d.get("digest"), str):
                self._descs.setdefault(d["digest"], d)

    # -- the BlobStore protocol ----------------------------------------------------------------
    @staticmethod
    def _digest(path: str) -> str | None:
        alg, _, hexpart = path.removeprefix("blobs/").partition("/")
        if not path.startswith("blobs/") or alg != "sha256" or len(hexpart) != 64:
            return None
        return f"{alg}:{hexpart}"

    def exists(self, path: str) -> bool:
        """The layout files, every digest a descriptor named, and any other blob the registry has."""
        if path in self._layout:
            return True
        digest = self._digest(path)
        if digest is None:
            return False
        if digest in self._docs or digest in self._descs:
            return True
        try:
            return self.blob_get(digest, {"Range": "bytes=0-0"}, limit=MAX_JSON).status in (200, 206)
        except FormatError as e:
            if "is not in the registry" in str(e):
                return False
            raise

    def read(self, path: str) -> bytes:
        """A layout file, a manifest (by digest) or a config blob, whole and checked against its digest."""
        if path in self._layout:
            return self._layout[path]
        digest = self._digest(path)
        if digest is None:
            raise FormatError(f"{path} is not in a registry image")
        with self._lock:
            hit = self._docs.get(digest)
        if hit is not None:
            return hit
        body = self._cached_doc(digest)
        if body is not None:
            self._note_children(body)
        elif digest in self._manifests:
            body = self._manifest(digest)[0]
            self._note_children(body)
        else:
            size = self._descs.get(digest, {}).get("size")
            if isinstance(size, int) and size > MAX_JSON:
                raise FormatError(f"{path} is {size} bytes, larger than any manifest or config ({MAX_JSON})")
            try:
                resp = self.blob_get(digest, {}, MAX_JSON)
            except FormatError as e:
                if "larger than expected" in str(e):
                    raise FormatError(f"{path} is larger than any manifest or config ({MAX_JSON})") from None
                raise
            if resp.status != 200:
                raise FormatError(f"{self.name}: HTTP {resp.status} for blob {digest}")
            body = resp.body
            if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                raise FormatError(f"{self.name}: blob {digest} does not match its digest")
        with self._lock:
            self._docs[digest] = body
        if self.cache is not None:
            self.cache.write("doc", digest, ".json", body)
        return body

    def _cached_doc(self, digest: str) -> bytes | None:
        """A manifest or config kept by an earlier open (checked against its digest again), or None."""
        body = self.cache.read("doc", digest, ".json") if self.cache is not None else None
        if body is None or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            return None
        return body

    def open(self, path: str) -> Source:
        """A blob by range requests (its size from its descriptor); a manifest from memory."""
        digest = self._digest(path)
        if digest is None:
            return _Bytes(self.read(path))
        if digest in self._manifests or digest in self._docs:
            return _Bytes(self.read(path))
        with self._lock:
            blob = self._blobs.get(digest)
        if blob is not None:
            return blob
        desc = self._descs.get(digest, {})
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            size = self._size_of(digest)
        compression = _compression(desc.get("mediaType"))
        blob = RegistryBlob(self, digest, size, compression, self.blocks, f"{self.reference.api_host}/{digest}",
                            f"{self.name}: blob {digest[:19]}")
        with self._lock:
            return self._blobs.setdefault(digest, blob)

    def _size_of(self, digest: str) -> int:
        resp = self.blob_get(digest, {"Range": "bytes=0-0"}, limit=MAX_JSON)
        total = (resp.header("Content-Range") or "").rpartition("/")[2]
        if resp.status == 206 and total.isdigit():
            return int(total)
        if resp.status == 200:
            return len(resp.body)
        raise FormatError(f"{self.name}: HTTP {resp.status} for blob {digest}")

    def origin(self, path: str) -> str:
        """The cache key of a blob's derived data.

        A compressed blob's index and seek points are made only from bytes checked against its digest
        (one verified pass), so they are shared by digest across registries; an uncompressed layer is read
        by ranges that no digest checks, so its key names the registry too.
        """
        digest = self._digest(path) or path
        if _compression(self._descs.get(digest, {}).get("mediaType")):
            return f"blob:{digest}"
        return f"registry:{self.reference.api_host}/{digest}"

    def downloaded(self) -> int:
        """Layer bytes fetched so far (for tests and the benchmark)."""
        return sum(b.downloaded for b in self._blobs.values())

    def close(self) -> None:
        """Drop downloaded copies and close the connections."""
        with self._lock:
            blobs = list(self._blobs.values())
        for b in blobs:
            b.close()
        self.client.close()


def open_registry(name: str, rest: str, ref: str | None, options: dict[str, object]) -> RegistryStore:
    """The TRANSPORTS opener of `docker://`."""
    cert_dir = options.get("cert_dir")
    timeout = options.get("timeout")
    return RegistryStore(
        name, reference.parse(rest), cache=options.get("cache"),  # type: ignore[arg-type]
        creds=options.get("creds") or None,  # type: ignore[arg-type]
        tls_verify=options.get("tls_verify", True) is not False,
        cert_dir=str(cert_dir) if cert_dir else None,
        timeout=float(timeout) if isinstance(timeout, (int, float)) else None)

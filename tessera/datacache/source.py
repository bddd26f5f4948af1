"""A dataset's source through fsspec: which files it has, and reading them.

Credentials come from the dataset's secret (keys ``aws_access_key_id`` and
``aws_secret_access_key`` for S3, ``token`` or ``authorization`` for HTTP, a
service-account JSON under ``token`` for GCS); they are handed to the filesystem
and never logged. Errors are turned into one-line reasons a user can act on
(``SourceError``): not found, access denied, unreachable.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlparse

import fsspec

from tessera.api.datasets import DatasetSpec

LIST_TIMEOUT_S = 30.0


class SourceError(Exception):
    """The source cannot be read; the message says why (never a secret)."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a dataset: its path below the source root, size and version tag."""

    path: str
    size: int
    etag: str

    def row(self) -> list[Any]:
        return [self.path, self.size, self.etag]

    @classmethod
    def of(cls, row: list[Any]) -> FileEntry:
        return cls(str(row[0]), int(row[1]), str(row[2]))


def open_fs(spec: DatasetSpec, secrets: dict[str, str]) -> tuple[Any, str]:
    """(fsspec filesystem, root path in its terms) for the dataset's source."""
    url = urlparse(spec.source)
    scheme = url.scheme
    try:
        if scheme == "s3":
            options: dict[str, Any] = {"anon": not secrets}
            if secrets:
                options["key"] = secrets.get("aws_access_key_id") or secrets.get("access_key")
                options["secret"] = secrets.get("aws_secret_access_key") or secrets.get("secret_key")
                if secrets.get("aws_session_token"):
                    options["token"] = secrets["aws_session_token"]
            if spec.endpoint_url:
                options["client_kwargs"] = {"endpoint_url": spec.endpoint_url}
            options["config_kwargs"] = {
                "connect_timeout": 10,
                "read_timeout": 60,
                "retries": {"max_attempts": 2},
            }
            return fsspec.filesystem("s3", **options), f"{url.netloc}{url.path}".rstrip("/")
        if scheme in ("http", "https"):
            headers = {}
            if secrets.get("authorization"):
                headers["Authorization"] = secrets["authorization"]
            elif secrets.get("token"):
                headers["Authorization"] = f"Bearer {secrets['token']}"
            fs = fsspec.filesystem(scheme, headers=headers, client_kwargs={"timeout": _aiohttp_timeout()})
            return fs, spec.source
        if scheme in ("gs", "gcs"):
            token: Any = json.loads(secrets["token"]) if secrets.get("token") else "anon"
            return fsspec.filesystem("gcs", token=token), f"{url.netloc}{url.path}".rstrip("/")
        return fsspec.filesystem("file"), url.path.rstrip("/") or "/"
    except ImportError as exc:
        raise SourceError(
            f"reading {scheme}:// sources needs a package not installed here ({exc.name}): "
            f"pip install 'tessera[{'s3' if scheme == 's3' else 'gcs'}]'"
        ) from None


def _aiohttp_timeout() -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


def describe(exc: BaseException, source: str) -> str:
    """A one-line reason for a failed read (no secrets: only the source URI and the error's kind)."""
    text = f"{type(exc).__name__}: {exc}"
    lowered = text.lower()
    if isinstance(exc, FileNotFoundError) or "nosuchbucket" in lowered or "404" in lowered:
        return f"{source} does not exist (or is not visible with these credentials)"
    denied = ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "403", "401", "forbidden")
    if isinstance(exc, PermissionError) or any(word in lowered for word in denied):
        return f"access to {source} was denied: check the dataset's credentials"
    unreachable = ("connect", "timeout", "timed out", "name or service", "unreachable", "refused")
    if any(word in lowered for word in unreachable):
        return f"{source} is unreachable: {type(exc).__name__}"
    return f"cannot read {source}: {text[:300]}"


class Source:
    """A dataset's source, opened with its credentials."""

    def __init__(self, spec: DatasetSpec, secrets: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.secrets = secrets or {}
        self.fs, self.root = open_fs(spec, self.secrets)
        self.http = spec.source.startswith(("http://", "https://"))

    def _single(self) -> bool:
        """Whether the source is one file (an HTTP URL not ending in '/' is one file)."""
        if self.http:
            return not self.root.endswith("/")
        return bool(self.fs.isfile(self.root))

    def _probe_http(self) -> None:
        """fsspec's HTTP filesystem reads failures as 'no files': ask the server first."""
        import httpx

        headers = {}
        if self.secrets.get("authorization"):
            headers["Authorization"] = self.secrets["authorization"]
        elif self.secrets.get("token"):
            headers["Authorization"] = f"Bearer {self.secrets['token']}"
        try:
            r = httpx.get(self.root, headers=headers, timeout=10, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise SourceError(f"{self.spec.source} is unreachable: {type(exc).__name__}") from None
        if r.status_code in (401, 403):
            raise SourceError(f"access to {self.spec.source} was denied: check the dataset's credentials")
        if r.status_code == 404:
            raise SourceError(f"{self.spec.source} does not exist")
        if r.status_code >= 400:
            raise SourceError(f"cannot read {self.spec.source}: HTTP {r.status_code}")

    def _relative(self, name: str) -> str:
        root = self.root.rstrip("/")
        if self.http:
            if name.rstrip("/") == root:
                return posixpath.basename(root)
            return name[len(root) :].lstrip("/")
        name = name.split("://", 1)[-1]
        root = root.split("://", 1)[-1]
        return posixpath.relpath(name, root) if name != root else posixpath.basename(name)

    def list(self) -> list[FileEntry]:
        """Every selected file (include/exclude), sorted by path; SourceError if unreadable."""
        if self.http:
            self._probe_http()
        try:
            if self._single():
                infos = {self.root: self.fs.info(self.root)}
            else:
                infos = self.fs.find(self.root, detail=True)
                if not infos and not self.fs.exists(self.root):
                    raise FileNotFoundError(self.root)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(describe(exc, self.spec.source)) from None
        files = []
        for name, info in infos.items():
            if info.get("type") == "directory":
                continue
            path = self._relative(name)
            if not path or path.startswith("..") or not self.spec.selects(path):
                continue
            size = info.get("size")
            if size is None:
                size = self._size(name)
            files.append(FileEntry(path, int(size), _etag(info)))
        return sorted(files, key=lambda f: f.path)

    def _size(self, name: str) -> int:
        try:
            return int(self.fs.size(name) or 0)
        except Exception as exc:
            raise SourceError(describe(exc, self.spec.source)) from None

    def url(self, path: str) -> str:
        """The file's name in the filesystem's terms."""
        return self.root if self._single() else f"{self.root.rstrip('/')}/{path}"

    def open(self, path: str, offset: int = 0) -> IO[bytes]:
        """The file, positioned at ``offset`` (a range read where the source supports it)."""
        try:
            handle: IO[bytes] = self.fs.open(self.url(path), "rb", block_size=0 if offset == 0 else None)
            if offset:
                handle.seek(offset)
            return handle
        except Exception as exc:
            raise SourceError(describe(exc, self.spec.source)) from None


def _etag(info: dict[str, Any]) -> str:
    """A tag that changes when the file does: the store's ETag, else mtime and size."""
    for key in ("ETag", "etag", "e_tag", "md5Hash", "generation"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    return f"{mtime}-{info.get('size')}"

"""A small blocking HTTP client over ``wasi:http/outgoing-handler``.

Every request goes through warden's egress: the operator's ``grants.http`` decide,
per request, whether it may leave (a refused one raises ``ToolError("upstream", ..)``),
and secret placeholders (``warden_sdk.secret_placeholder``) are swapped for their values
there, only toward the grant's hosts. Redirects are never followed implicitly.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from . import ToolError

# Imported now, not when first used: componentize-py snapshots the interpreter after
# the app's imports, and a module not loaded by then cannot be loaded later.
from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as t


@dataclass
class Response:
    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.body)


def _method(name: str):
    known = {
        "GET": t.Method_Get,
        "HEAD": t.Method_Head,
        "POST": t.Method_Post,
        "PUT": t.Method_Put,
        "DELETE": t.Method_Delete,
        "OPTIONS": t.Method_Options,
        "PATCH": t.Method_Patch,
    }
    upper = name.upper()
    return known[upper]() if upper in known else t.Method_Other(upper)


def request(
    method: str,
    url: str,
    headers: Optional[Dict[str, str]] = None,
    body: Optional[bytes] = None,
    max_body: int = 1 << 20,
) -> Response:
    """Send one request; read at most ``max_body`` bytes of the response body."""
    if url.startswith("https://"):
        scheme, rest = t.Scheme_Https(), url[len("https://") :]
    elif url.startswith("http://"):
        scheme, rest = t.Scheme_Http(), url[len("http://") :]
    else:
        raise ToolError("invalid-input", f"unsupported URL {url!r}: only http:// and https://")
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])

    try:
        fields = t.Fields.from_list([(k, v.encode()) for k, v in (headers or {}).items()])
        req = t.OutgoingRequest(fields)
        req.set_method(_method(method))
        req.set_scheme(scheme)
        req.set_authority(authority)
        req.set_path_with_query(path)
        outgoing = req.body() if body is not None else None
        # Send first, then write: the host may read the body while the request is in flight.
        pending = outgoing_handler.handle(req, None)
        if outgoing is not None:
            with outgoing.write() as stream:
                for i in range(0, len(body), 4096):
                    stream.blocking_write_and_flush(body[i : i + 4096])
            t.OutgoingBody.finish(outgoing, None)
        pending.subscribe().block()
        result = pending.get()
    except Err as e:
        raise ToolError("upstream", f"{method} {url}: {_describe(e.value)}")
    if result is None or isinstance(result, Err):
        raise ToolError("upstream", f"{method} {url}: no response")
    response = result.value
    if isinstance(response, Err):
        raise ToolError("upstream", f"{method} {url}: {_describe(response.value)}")
    response = response.value if hasattr(response, "value") else response

    status = response.status()
    got = [(k, v.decode("latin-1")) for k, v in response.headers().entries()]
    chunks: List[bytes] = []
    size, truncated = 0, False
    incoming = response.consume()
    stream = incoming.stream()
    while True:
        try:
            chunk = stream.blocking_read(64 * 1024)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise ToolError("upstream", f"{method} {url}: reading the body failed")
        if size + len(chunk) > max_body:
            chunks.append(chunk[: max_body - size])
            truncated = True
            break
        chunks.append(chunk)
        size += len(chunk)
    return Response(status=status, headers=got, body=b"".join(chunks), truncated=truncated)


def get(url: str, headers: Optional[Dict[str, str]] = None, max_body: int = 1 << 20) -> Response:
    return request("GET", url, headers, None, max_body)


def post_json(url: str, data: Any, headers: Optional[Dict[str, str]] = None, max_body: int = 1 << 20) -> Response:
    merged = {"content-type": "application/json", **(headers or {})}
    return request("POST", url, merged, _json.dumps(data).encode(), max_body)


def _describe(error: Any) -> str:
    """An ErrorCode (or other WIT error) as words, without its Python class path."""
    name = type(error).__name__
    name = name.split("_", 1)[-1] if "_" in name else name
    value = getattr(error, "value", None)
    return f"{name}" + (f" ({value})" if value not in (None, "") else "")

"""Write warden tools and policies in Python (built into components by componentize-py).

A tool is an ordinary function with type hints::

    from dataclasses import dataclass
    from warden_sdk import tool, ToolError, WitWorld  # WitWorld: the export componentize-py wants

    @dataclass
    class Count:
        words: int

    @tool(read_only=True, idempotent=True)
    def word_count(text: str, ignore_case: bool = True) -> Count:
        \"\"\"Count the words of a text.

        Args:
            text: The text to count.
            ignore_case: Fold case first.
        \"\"\"
        return Count(words=len(text.split()))

Its parameters become the input schema (a parameter with a default is optional;
``str``, ``int``, ``float``, ``bool``, ``list[T]``, ``dict[str, T]``, ``Optional[T]``,
``Literal[...]``, dataclasses and TypedDicts), its docstring the description (the
``Args:`` section describes the parameters) and its return annotation the output
schema when that is an object. Input is validated by warden against the schema
before any policy or the tool runs. ``raise ToolError(code, message)`` fails the call
on purpose; any other exception fails it with code ``exception``. Nothing here grants
a capability: files, hosts and secrets come only from the operator's grants.

A policy is one function ``@policy def evaluate(action: Action) -> Decision``.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from . import schema as _schema

# componentize-py snapshots the interpreter after importing the app: a module not
# imported by then does not exist at run time (there is no file system to load it
# from). So every binding this SDK uses is imported here, once, at the top. Outside a
# component (plain Python, to test the schema code) they are absent.
try:
    from componentize_py_types import Err
    from wit_world.imports import log as _wit_log

    try:  # the tool world names it after its package: it shares a name with wasi:http's
        from wit_world.imports import warden_plugin_types as _wit_types
    except ImportError:
        from wit_world.imports import types as _wit_types
    try:
        from wit_world.imports import host as _wit_host
    except ImportError:  # a policy has no host interface
        _wit_host = None
except ImportError:
    Err = _wit_log = _wit_types = _wit_host = None

__all__ = [
    "tool",
    "policy",
    "ToolError",
    "WitWorld",
    "Action",
    "allow",
    "deny",
    "hold",
    "log",
    "secret_placeholder",
    "reveal_secret",
    "progress",
]


class ToolError(Exception):
    """A failure the tool reports on purpose: a short code and a message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class _Tool:
    name: str
    title: Optional[str]
    description: str
    annotations: Dict[str, bool]
    input_schema: Dict[str, Any]
    output_schema: Optional[Dict[str, Any]]
    params: Dict[str, Any]
    func: Callable[..., Any]


_TOOLS: Dict[str, _Tool] = {}
_POLICY: List[Callable[..., Any]] = []


def tool(
    func: Optional[Callable[..., Any]] = None,
    *,
    name: Optional[str] = None,
    title: Optional[str] = None,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
):
    """Register a function as one of this component's tools (see the module docs)."""

    def register(f: Callable[..., Any]) -> Callable[..., Any]:
        if read_only and destructive:
            raise TypeError(f"{f.__name__}: a tool cannot be both read_only and destructive")
        description, params_doc = _schema.parse_docstring(f.__doc__ or "")
        if not description:
            raise TypeError(f"{f.__name__}: a tool needs a docstring: it is the description agents read")
        input_schema, params = _schema.input_schema(f, params_doc)
        spec = _Tool(
            name=name or f.__name__,
            title=title,
            description=description,
            annotations={
                "read_only": read_only,
                "destructive": destructive,
                "idempotent": idempotent,
                "open_world": open_world,
            },
            input_schema=input_schema,
            output_schema=_schema.output_schema(f),
            params=params,
            func=f,
        )
        if spec.name in _TOOLS:
            raise TypeError(f"two tools named {spec.name}")
        _TOOLS[spec.name] = spec
        return f

    return register(func) if func is not None else register


def _describe() -> list:
    types = _wit_types

    return [
        types.ToolSpec(
            name=t.name,
            title=t.title,
            description=t.description,
            input_schema=json.dumps(t.input_schema),
            output_schema=json.dumps(t.output_schema) if t.output_schema is not None else None,
            annotations=types.Annotations(**t.annotations),
        )
        for t in _TOOLS.values()
    ]


def _invoke(name: str, raw: str) -> str:
    types = _wit_types

    def fail(code: str, message: str):
        return Err(types.ToolError(code=code, message=message))

    spec = _TOOLS.get(name)
    if spec is None:
        raise fail("unknown-tool", f"no tool named {name}")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("the input is not a JSON object")
        kwargs = {k: _schema.convert(spec.params[k], v) for k, v in data.items() if k in spec.params}
    except (ValueError, TypeError) as e:
        raise fail("invalid-input", str(e))
    try:
        result = spec.func(**kwargs)
    except ToolError as e:
        raise fail(e.code, e.message)
    except MemoryError:
        # Out of memory is the host's limit, not the tool's error: let it trap, so the
        # call fails as `memory-limit` whatever language the tool is written in.
        raise
    except Exception as e:  # a bug in the tool: say what and where, never trap
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise fail("exception", f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})")
    return json.dumps(_schema.to_json(result))


@dataclass
class Action:
    """What a policy decides on (the WIT `action` record, with JSON fields parsed)."""

    principal: str
    tool: str
    plugin: str
    plugin_digest: str
    input: Any
    annotations: Dict[str, bool]
    time_ms: int
    config: Any
    usage: Any


def allow():
    """Run the call."""
    types = _wit_types

    return types.Decision_Allow()


def deny(reason: str):
    """Refuse the call; the reason is shown to the caller."""
    types = _wit_types

    return types.Decision_Deny(reason)


def hold(
    tier: str,
    reason: str,
    approvers: Optional[List[str]] = None,
    timeout_secs: Optional[int] = None,
    approvals_required: Optional[int] = None,
):
    """Hold the call for a person: tier ``"soft"`` or ``"hard"``."""
    types = _wit_types

    tiers = {"soft": types.Tier.SOFT, "hard": types.Tier.HARD}
    if tier not in tiers:
        raise ValueError(f"tier must be 'soft' or 'hard', not {tier!r}")
    return types.Decision_RequireApproval(
        types.ApprovalSpec(
            tier=tiers[tier],
            reason=reason,
            approvers=list(approvers or []),
            timeout_secs=timeout_secs,
            approvals_required=approvals_required,
        )
    )


def policy(func: Callable[[Action], Any]) -> Callable[[Action], Any]:
    """Register the component's one `evaluate` function."""
    if _POLICY:
        raise TypeError("a component has one policy function")
    _POLICY.append(func)
    return func


def _evaluate(action) -> Any:
    a = action.annotations
    parsed = Action(
        principal=action.principal,
        tool=action.tool,
        plugin=action.plugin,
        plugin_digest=action.plugin_digest,
        input=json.loads(action.input),
        annotations={
            "read_only": a.read_only,
            "destructive": a.destructive,
            "idempotent": a.idempotent,
            "open_world": a.open_world,
        },
        time_ms=action.time_ms,
        config=json.loads(action.config),
        usage=json.loads(action.usage),
    )
    try:
        return _POLICY[0](parsed)
    except Exception as e:  # a policy bug denies, with the reason, rather than trap
        return deny(f"the policy failed: {type(e).__name__}: {e}")


def log(level: str, message: str, **fields: Any) -> None:
    """One line in the run's log (never the host's stdout): trace, debug, info, warn, error."""
    wit_log = _wit_log
    levels = {
        "trace": wit_log.Level.TRACE,
        "debug": wit_log.Level.DEBUG,
        "info": wit_log.Level.INFO,
        "warn": wit_log.Level.WARN,
        "error": wit_log.Level.ERROR,
    }
    wit_log.log(levels.get(level, wit_log.Level.INFO), message, [(k, str(v)) for k, v in fields.items()])


def _secret_error(e: Exception, name: str) -> ToolError:
    return ToolError("secret", f"secret {name!r} is not granted to this plugin for this use")


def secret_placeholder(name: str) -> str:
    """An opaque stand-in for granted secret `name`; warden swaps in the value at the
    egress, only in requests to the grant's hosts. The plugin never holds the value."""
    host = _wit_host
    try:
        return host.secret_placeholder(name)
    except Exception as e:
        raise _secret_error(e, name)


def reveal_secret(name: str) -> str:
    """The value of `name`, only where its grant says `reveal = true` (audited)."""
    host = _wit_host
    try:
        return host.reveal_secret(name)
    except Exception as e:
        raise _secret_error(e, name)


def progress(done: int, total: Optional[int] = None, message: Optional[str] = None) -> None:
    """Report progress of a long call."""
    host = _wit_host
    host.progress(done, total, message)


class WitWorld:
    """The exports componentize-py looks for in the app module: import it there."""

    def describe(self) -> list:
        return _describe()

    def invoke(self, tool: str, input: str) -> str:
        return _invoke(tool, input)

    def evaluate(self, action) -> Any:
        return _evaluate(action)

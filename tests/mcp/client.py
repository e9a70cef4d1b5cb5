"""Drive `warden serve` with the official MCP Python SDK, for warden's test suite.

usage: client.py (--stdio WARDEN_ARGS... | --http URL --token TOKEN) SCENARIO [ARGS]

Scenarios print one JSON object on stdout:
  basic         list tools; call an allowed, a denied and an invalid call
  call TOOL ARGS_JSON
                one call, with progress notifications counted
  load N TOOL ARGS_JSON
                N calls one after another
  listen        wait for notifications/tools/list_changed (up to 20 s)
  logged LEVEL TOOL ARGS_JSON
                one call with log messages asked for at LEVEL
  unknown N     N calls of tools that do not exist
  hammer K TOOL ARGS_JSON
                K concurrent callers until the server goes away; a line per
                success ({"ok": RUN_ID}) as it comes
"""
import json
import sys

import anyio
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def result_json(r):
    text = " ".join(getattr(c, "text", "") for c in r.content)
    meta = getattr(r, "meta", None)
    return {"is_error": bool(r.is_error), "text": text, "structured": r.structured_content, "meta": meta}


async def scenario(client, name, args):
    if name == "basic":
        tools = (await client.list_tools()).tools
        listed = {
            t.name: {
                "title": t.title,
                "description": t.description,
                "input_schema": t.input_schema,
                "read_only": t.annotations.read_only_hint if t.annotations else None,
                "destructive": t.annotations.destructive_hint if t.annotations else None,
            }
            for t in tools
        }
        allowed = await client.call_tool("text_stats", {"text": "the agent asked and the policy allowed"})
        denied = await client.call_tool("notes_read", {"name": "x"})
        invalid = await client.call_tool("text_stats", {"text": 42})
        try:
            await client.call_tool("no_such_tool", {})
            unknown = "no error"
        except Exception as e:  # a protocol error, not a tool result
            unknown = f"{type(e).__name__}: {e}"
        return {
            "protocol": client.protocol_version,
            "tools": listed,
            "allowed": result_json(allowed),
            "denied": result_json(denied),
            "invalid": result_json(invalid),
            "unknown": unknown,
        }
    if name == "tools":
        tools = (await client.list_tools()).tools
        return {
            t.name: {"input_schema": t.input_schema, "output_schema": t.output_schema, "description": t.description}
            for t in tools
        }
    if name == "call":
        progress = []

        async def on_progress(p, total, message):
            progress.append(message)

        try:
            r = await client.call_tool(args[0], json.loads(args[1]), progress_callback=on_progress)
        except MCPError as e:
            return {"protocol_error": str(e), "code": e.code, "data": e.data, "progress": progress}
        out = result_json(r)
        out["progress"] = progress
        return out
    if name == "load":
        n, tool, arguments = int(args[0]), args[1], json.loads(args[2])
        ok = errors = 0
        for _ in range(n):
            r = await client.call_tool(tool, arguments)
            if r.is_error:
                errors += 1
            else:
                ok += 1
        return {"ok": ok, "errors": errors}
    if name == "logged":
        # One call with log messages asked for at LEVEL; the messages received.
        level, tool, arguments = args[0], args[1], json.loads(args[2])
        try:
            await client.set_logging_level(level)
        except Exception:
            pass  # a 2026-07-28 session asks per request (`log_level` on the client)
        r = await client.call_tool(tool, arguments)
        await anyio.sleep(0.2)
        out = result_json(r)
        out["messages"] = [
            {"level": m.level, "logger": m.logger, "data": m.data} for m in LOGGED
        ]
        return out
    if name == "unknown":
        # N calls of tools that do not exist, each a protocol error.
        errors = 0
        for i in range(int(args[0])):
            try:
                await client.call_tool(f"no_such_tool_{i}", {})
            except Exception:
                errors += 1
        return {"errors": errors}
    if name == "hammer":
        # K tasks calling TOOL until the server goes away; one line per success, at once.
        k, tool, arguments = int(args[0]), args[1], json.loads(args[2])

        async def worker():
            while True:
                try:
                    r = await client.call_tool(tool, arguments)
                except Exception:
                    return
                if not r.is_error:
                    print(json.dumps({"ok": (r.meta or {}).get("warden/run_id")}), flush=True)

        async with anyio.create_task_group() as tg:
            for _ in range(k):
                tg.start_soon(worker)
        return {"done": True}
    if name == "listen":
        with anyio.fail_after(20):
            async with client.listen(tools_list_changed=True) as sub:
                print(json.dumps({"listening": True}), flush=True)
                async for _event in sub:
                    names = [t.name for t in (await client.list_tools(cache_mode="refresh")).tools]
                    return {"changed": True, "tools": names}
    raise SystemExit(f"unknown scenario {name}")


LOGGED = []


async def on_log(params):
    LOGGED.append(params)


def options(rest):
    """Client options a scenario needs."""
    if rest and rest[0] == "logged":
        return {"logging_callback": on_log, "log_level": rest[1]}
    return {}


async def main(argv):
    if argv[0] == "--stdio":
        split = argv.index("--")
        command, rest = argv[1:split], argv[split + 1:]
        server = StdioServerParameters(command=command[0], args=command[1:])
        async with Client(server, **options(rest)) as client:
            out = await scenario(client, rest[0], rest[1:])
            # Printed before the session closes: a server shutting down may cut the close.
            print(json.dumps(out), flush=True)
    else:
        url, token, rest = argv[1], argv[3], argv[4:]
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            async with Client(streamable_http_client(url, http_client=http), **options(rest)) as client:
                out = await scenario(client, rest[0], rest[1:])
                print(json.dumps(out), flush=True)


anyio.run(main, sys.argv[1:])

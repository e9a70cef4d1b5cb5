# A minimal MCP server (stdio, one tool `echo`): the floor a fresh process shows on this
# machine for start-up and a first call, for `warden-bench mcp --server "python3 examples/mcp-echo.py" --tool echo --input {}` (BENCHMARKS.md, #19).
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m:
        continue
    meth = m.get("method")
    if meth == "initialize":
        r = {"protocolVersion": m["params"].get("protocolVersion", "2025-06-18"), "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "0"}}
    elif meth == "tools/list":
        r = {"tools": [{"name": "echo", "description": "echo", "inputSchema": {"type": "object"}}]}
    elif meth == "tools/call":
        r = {"content": [{"type": "text", "text": json.dumps(m["params"].get("arguments"))}], "isError": False}
    else:
        r = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}) + "\n")
    sys.stdout.flush()

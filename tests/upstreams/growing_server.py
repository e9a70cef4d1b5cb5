"""A test fixture: an MCP server (the official Python SDK's MCPServer) whose tool list
changes while it runs. `grow` adds a tool named `grown` and sends
`notifications/tools/list_changed`, as a server that loads plugins at run time would."""

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("growing")


def grown() -> str:
    """A tool that was not there at first."""
    return "here now"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the tool `grown` and tell the client the tool list changed."""
    server.add_tool(grown)
    await ctx.session.send_tool_list_changed()
    return "grown"


server.run()

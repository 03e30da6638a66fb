"""An MCP client as agents run it: the official Python SDK over Streamable
HTTP with a bearer token. Prints one JSON document on stdout.

    client.py URL CA_FILE list
    client.py URL CA_FILE call TOOL ARGUMENTS_JSON

The access token is read from the MCP_TOKEN environment variable. With
MCP_MODE=auto the client negotiates as the SDK's `Client` does by default
(it probes `server/discover` and speaks 2026-07-28 without a session when
the server does); otherwise it starts a session with `initialize`. With
URL `stdio`, the client starts the server named by BRIDGE_COMMAND (a JSON
list: program and arguments) and speaks to it over stdio instead, as a
desktop assistant does, with the token in its TOLLGATE_MCP_TOKEN.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx2
from mcp import Client, ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


async def main() -> None:
    url, ca_file, action = sys.argv[1], sys.argv[2], sys.argv[3]
    if url == "stdio":
        command = json.loads(os.environ["BRIDGE_COMMAND"])
        server = StdioServerParameters(
            command=command[0], args=command[1:], env={"TOLLGATE_MCP_TOKEN": os.environ["MCP_TOKEN"]}
        )
        async with stdio_client(server) as (read, write, *_):
            await session_main(read, write, action)
        return
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['MCP_TOKEN']}"},
        verify=ssl.create_default_context(cafile=ca_file),
        timeout=httpx2.Timeout(30, read=300),
    )
    if os.environ.get("MCP_MODE") == "auto":
        async with http, Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            info = client.server_info
            out: dict = {"server": info.name if info else None, "version": client.protocol_version}
            await act(client, action, out)
        return
    async with http, streamable_http_client(url, http_client=http) as (read, write, *_):
        await session_main(read, write, action)


async def act(client, action: str, out: dict) -> None:
    if action == "list":
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
    elif action == "call":
        result = await client.call_tool(sys.argv[4], json.loads(sys.argv[5]))
        out["is_error"] = bool(result.is_error)
        out["text"] = [c.text for c in result.content if c.type == "text"]
    print(json.dumps(out), flush=True)


async def session_main(read, write, action: str) -> None:
    async with ClientSession(read, write) as session:
        init = await session.initialize()
        out: dict = {"server": init.server_info.name, "version": init.protocol_version}
        await act(session, action, out)


try:
    asyncio.run(main())
except Exception as e:  # the test reads what went wrong from stdout
    def flatten(e):
        if isinstance(e, BaseExceptionGroup):
            return [m for x in e.exceptions for m in flatten(x)]
        return [f"{type(e).__name__}: {e}"]
    print(json.dumps({"error": flatten(e)}), flush=True)
    sys.exit(1)

"""An MCP server over Streamable HTTP (the official Python SDK) that, like a
hosted MCP server, admits only callers with its own bearer token, for the
test of the gateway's HTTP upstreams: the gateway must authenticate with
the credential it holds for the server, never with its client's token.

Environment: PORT (to listen on, 127.0.0.1) and UPSTREAM_TOKEN (the one
token it accepts; its client id is "tollgate-gateway").
"""

import os

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations


class OneToken:
    async def verify_token(self, token: str) -> AccessToken | None:
        if token != os.environ["UPSTREAM_TOKEN"]:
            return None
        return AccessToken(token=token, client_id="tollgate-gateway", scopes=["cards"])


port = int(os.environ["PORT"])
server = MCPServer(
    "hosted-cards",
    token_verifier=OneToken(),
    auth=AuthSettings(
        issuer_url="https://issuer.invalid",
        resource_server_url=f"http://127.0.0.1:{port}/mcp",
        required_scopes=["cards"],
    ),
)


@server.tool(
    description="The card on file for a customer, and who asked (the caller's client id).",
    annotations=ToolAnnotations(readOnlyHint=True, destructiveHint=False),
)
def card_on_file(customer_id: int) -> str:
    token = get_access_token()
    who = token.client_id if token else "nobody"
    return f"customer {customer_id} pays with 5555555555554444 (asked by {who})"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=port)

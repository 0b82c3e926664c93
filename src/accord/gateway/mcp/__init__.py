"""The MCP gateway: agents (and people) reach an upstream MCP server through Accord."""

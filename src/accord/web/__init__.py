"""The server-rendered web dashboard: login (OIDC, token, demo), pages, live updates."""

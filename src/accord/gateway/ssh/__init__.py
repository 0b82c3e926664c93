"""The SSH protocol's front on the gateway's core (asyncssh): users log in as USER+RESOURCE
with a connection token, the gateway logs in upstream with the resource's key as the login
of the granted role, and records every channel in asciicast v2 chunks."""

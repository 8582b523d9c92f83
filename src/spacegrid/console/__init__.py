"""The web console: a live view of one grid (cluster map, charts, events timeline), an ASGI app on Starlette."""

"""The HTTP gateway: a space's maps, handlers and queries over HTTP/JSON, described by a generated OpenAPI 3 document."""

"""Remote procedure calls: the wire protocol, the dispatcher, the client and the server."""

"""aiortc: the server's own end of a call (media-relay issue)."""

"""Socket.IO signaling: waiting room, visit rooms, live dashboard feed (video-visits issue)."""

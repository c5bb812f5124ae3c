"""WebRTC transport (aiortc): a browser's or a client's microphone track in, synthesised speech out."""

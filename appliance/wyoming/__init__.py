"""Wyoming servers (the protocol Home Assistant speaks): speech-to-text and text-to-speech."""

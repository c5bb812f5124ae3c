"""Voice: streaming stages — VAD and endpointing, ASR, MT, TTS — over AudioFrames, model-agnostic of transports."""

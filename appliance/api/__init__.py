"""The HTTP API: one FastAPI app — health, metrics, and the OpenAI-compatible audio endpoints."""

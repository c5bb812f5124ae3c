"""The upstream datacenter tier: an OpenAI-compatible gateway in front of the models a site hosts."""

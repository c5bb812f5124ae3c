"""Bots: applications that answer a speaker (the echo bot here; call-center flows later)."""

"""Interpretation: speech in one language becomes speech in another, phrase by phrase."""

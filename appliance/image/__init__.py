"""Image and slot tooling: what goes into a device image (the offline wheelhouse today)."""

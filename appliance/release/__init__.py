"""Release tooling: what is published about a build (today the SBOM), used by the CLI and console, never by the device.

Modules here may import anything below the entry points (models, config) and are imported only by ``cli`` and
``console``; they load lazily there, so a device's start-up never pays for them.
"""

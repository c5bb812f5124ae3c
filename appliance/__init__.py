"""Edge voice appliance: hardware-aware offline voice service for all-in-one devices."""

__version__ = "0.1.0"

"""The base of every error the appliance reports to a person: the message says what is wrong and the fix."""


class ApplianceError(Exception):
    """Shown to the user as one clear message, never as a traceback."""

"""Hardware: probe what the machine exposes, and match it to a board-family profile."""

from appliance.hw.probe import probe
from appliance.hw.profiles import Candidate, Profile, ProfileMatch, load_profiles, match_profile
from appliance.hw.report import Accelerator, HardwareReport

__all__ = [
    "Accelerator",
    "Candidate",
    "HardwareReport",
    "Profile",
    "ProfileMatch",
    "load_profiles",
    "match_profile",
    "probe",
]

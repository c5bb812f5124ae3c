"""Standalone conversion scripts, run by `appliance models pull` in the converter venv (.venv-convert).

Each script takes ``SRC DST`` on the command line, imports only its conversion tools (never
``appliance``), writes nothing but DST, and verifies its output against the source before writing it.
"""

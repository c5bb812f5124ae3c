"""Test helpers shared by several test modules: real peers (SIPp, baresip, Kamailio), the supervisor's test
services, the systemd guest, the CLI as a subprocess, SIPp scenarios; test data lives under tests/fixtures/."""

"""`python -m appliance` runs the command line."""

from appliance.cli.main import main

main()

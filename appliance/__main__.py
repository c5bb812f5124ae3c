"""`python -m appliance` runs the command line."""

from appliance.cli.entry import main

main()

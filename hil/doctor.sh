#!/usr/bin/env bash
# Run `appliance doctor --json` on a real board over SSH and check its profile and runtimes.
# Usage: hil/doctor.sh HOST EXPECTED_PROFILE   (HOST as ssh understands it; appliance installed there)
set -euo pipefail
host=${1:?usage: hil/doctor.sh HOST EXPECTED_PROFILE}
expected=${2:?usage: hil/doctor.sh HOST EXPECTED_PROFILE}
report=$(ssh -o BatchMode=yes -o ConnectTimeout=10 "$host" appliance doctor --json) || status=$?
REPORT="$report" python3 - "$expected" "${status:-0}" <<'PY'
import json, os, sys
expected, status = sys.argv[1], int(sys.argv[2])
report = json.loads(os.environ["REPORT"])
profile = report["profile"]["name"]
print(f"profile: {profile} ({', '.join(report['profile']['why'])})")
for m in report["models"]:
    print(f"  {m['model']}: {m['runtime'] or 'NONE'}")
    for a in m["attempts"]:
        if not a["passed"] and a.get("tried", True):
            print(f"    rejected {a['candidate']}: {a['reason']}")
ok = profile == expected and status == 0
print("PASS" if ok else f"FAIL (expected profile {expected}, doctor exit {status})")
sys.exit(0 if ok else 1)
PY

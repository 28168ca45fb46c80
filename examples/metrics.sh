#!/usr/bin/env bash
# Asks a running caselog service for a few metrics of the financial year 2025-26, as a reporting
# service would, e.g. after `scripts/caselog import examples/cases.ndjson` (see README.md).
# CASELOG_SERVER (default http://127.0.0.1:50051) and CASELOG_TOKEN (default: the development
# admin token of deploy/dev-tokens.json) say where and as whom.
set -euo pipefail
cd "$(dirname "$0")/.."
export CASELOG_TOKEN="${CASELOG_TOKEN:-dev-admin-0000000000000000000}"
year=2025-26
echo "== timeliness: T2 (s31 within 26 weeks), T4 (children seen within 15 working days), T6 (working weeks to file)"
scripts/caselog metrics T2,T4,T6 --financial-year "$year"
echo
echo "== engagement by law type: E1 (seen in person), E3 (personalised letter), E4 (recommendation shared), as CSV"
scripts/caselog metrics E1,E3,E4 --financial-year "$year" --group-by law_type --format csv
echo
echo "== open cases and long-running proceedings on 31 March 2026 (S1, S2), as JSON"
scripts/caselog metrics S1,S2 --financial-year "$year" --format json

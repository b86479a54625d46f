#!/usr/bin/env bash
# Run the default test suite (slow tests excluded; see pyproject.toml). pytest's exit
# code 5 ("no tests collected") is turned into a failure: a run that tests nothing
# must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; failing on purpose" >&2
  exit 1
fi
exit "$rc"

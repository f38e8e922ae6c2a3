#!/usr/bin/env bash
# `make e2e`: the product installed with Helm on a real cluster, and the suite in e2e/ against
# it. All the work is `python -m devcluster e2e` (devcluster/e2e.py): on kind whenever Docker
# can run here, else on the local cluster, else one "skipped" line and exit 0. Run as root.
#
#   bash e2e/run.sh [pytest arguments]
#
# Env: E2E_CLUSTER=kind|local (choose), KEEP_CLUSTER=1 (keep it up after the suite until
# Ctrl-C), PYTHON (default: the repository's .venv).
set -o errexit -o nounset -o pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$root"
exec "$PYTHON" -m devcluster e2e "$@"

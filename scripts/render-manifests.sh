#!/usr/bin/env bash
# Render k8s-manifests/*.yaml from the Helm chart (charts/session-manager, its defaults plus
# ci/manifests-values.yaml) with the helm that scripts/build-cluster-binaries.sh builds.
#   scripts/render-manifests.sh            write the files
#   scripts/render-manifests.sh --check    write nothing; exit 1 when they differ from the chart
# kustomization.yaml, README.md and redis-credentials.example.yaml stay hand-written.
set -o errexit -o nounset -o pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$root"
exec "$python" -m devcluster.chart "$@"

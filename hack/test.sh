#!/usr/bin/env bash
# Runs every test tier that can run on this machine, starting the real services they
# need (OpenBao dev server with a file audit device, PostgreSQL 15) through hack/.
#   hack/test.sh [extra cargo test args]
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/hack/services-up.sh" >&2
# kubectl (kustomize) and helm for the packaging tests (crates/certus-cli/tests/packaging.rs).
"$ROOT/hack/install-kubectl.sh" >&2
# shellcheck disable=SC1090,SC1091
. "$STATE/env"

if [ -z "${CERTUS_E2E_KUBECONFIG:-}" ]; then
  log "end-to-end tier: CERTUS_E2E_KUBECONFIG is not set, so the e2e tests will report SKIPPED (see tests/e2e/README.md)"
fi
cargo test --workspace --all-targets --locked "$@"

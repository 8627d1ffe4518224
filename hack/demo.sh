#!/usr/bin/env bash
# The main job on the embedded default: start an OpenBao dev server (and PostgreSQL),
# reconcile config/samples/ into it with `certus-vault apply`, then show that a second
# `plan` finds nothing to change.
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

"$ROOT/hack/services-up.sh" >&2
# shellcheck disable=SC1090,SC1091
. "$STATE/env"

log "building certus-vault"
cargo build --locked -q -p certus-cli
bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/certus-vault"

echo "== certus-vault apply -f config/samples/  (Vault at $VAULT_ADDR)"
"$bin" apply -f config/samples/
echo
echo "== certus-vault plan -f config/samples/  (expect: no changes, exit 0)"
"$bin" plan -f config/samples/
echo
echo "Vault policies now: $("$CERTUS_BAO_BIN" policy list | tr '\n' ' ')"

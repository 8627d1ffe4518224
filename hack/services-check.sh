#!/usr/bin/env bash
# shellcheck disable=SC2153  # CERTUS_PG_* come from the sourced env file
# End-to-end smoke check of the services started by hack/services-up.sh:
# KV write/read, JSON audit lines, password login to PostgreSQL, and OpenBao's
# database secrets engine issuing PostgreSQL credentials that log in, then
# revoking them. Leaves a `certus-smoke-db/` mount behind only on failure.
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

[ -f "$COMBINED_ENV" ] || die "$COMBINED_ENV missing; run hack/services-up.sh first"
# shellcheck disable=SC1090
. "$COMBINED_ENV"
bao() { "$CERTUS_BAO_BIN" "$@"; }
psql_() { "$CERTUS_PG_BIN_DIR/psql" -X -At "$@"; }
t0=$(now_s)

lines_before=$(wc -l <"$CERTUS_AUDIT_LOG")
bao kv put secret/certus-smoke a=b >/dev/null
[ "$(bao kv get -field=a secret/certus-smoke)" = b ] || die "KV round trip failed"
bao kv metadata delete secret/certus-smoke >/dev/null
[ "$(wc -l <"$CERTUS_AUDIT_LOG")" -gt "$lines_before" ] || die "no new audit lines in $CERTUS_AUDIT_LOG"
tail -n +"$((lines_before + 1))" "$CERTUS_AUDIT_LOG" | python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    json.loads(line); n += 1
assert n > 0
' || die "audit lines are not JSON"
grep -q '"path":"secret/data/certus-smoke"' "$CERTUS_AUDIT_LOG" || die "KV request not in audit log"
log "ok: KV round trip, JSON audit lines in $CERTUS_AUDIT_LOG"

[ "$(PGPASSWORD="$CERTUS_PG_PASSWORD" psql_ -h "$CERTUS_PG_HOST" -p "$CERTUS_PG_PORT" -U "$CERTUS_PG_USER" -d "$CERTUS_PG_DB" -c 'select 1')" = 1 ] \
  || die "psql login failed"
[ "$(psql_ "$CERTUS_PG_URL" -c 'select rolsuper from pg_roles where rolname = current_user')" = t ] \
  || die "$CERTUS_PG_USER is not a superuser"
log "ok: psql password login as $CERTUS_PG_USER (superuser)"

mount=certus-smoke-db
bao secrets disable "$mount" >/dev/null 2>&1 || true
bao secrets enable -path="$mount" database >/dev/null
bao write "$mount/config/pg" plugin_name=postgresql-database-plugin \
  connection_url="postgresql://{{username}}:{{password}}@$CERTUS_PG_HOST:$CERTUS_PG_PORT/$CERTUS_PG_DB?sslmode=disable" \
  username="$CERTUS_PG_USER" password="$CERTUS_PG_PASSWORD" allowed_roles='*' >/dev/null
bao write "$mount/roles/smoke" db_name=pg default_ttl=5m max_ttl=10m \
  creation_statements="CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';" >/dev/null
creds=$(bao read -format=json "$mount/creds/smoke")
u=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["username"])')
p=$(printf '%s' "$creds" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["password"])')
[ "$(PGPASSWORD="$p" psql_ -h "$CERTUS_PG_HOST" -p "$CERTUS_PG_PORT" -U "$u" -d "$CERTUS_PG_DB" -c 'select current_user')" = "$u" ] \
  || die "login with issued credentials failed"
bao secrets disable "$mount" >/dev/null   # revokes the lease, dropping the role
if PGPASSWORD="$p" PGCONNECT_TIMEOUT=5 psql_ -h "$CERTUS_PG_HOST" -p "$CERTUS_PG_PORT" -U "$u" -d "$CERTUS_PG_DB" -c 'select 1' >/dev/null 2>&1; then
  die "revoked credentials still log in"
fi
log "ok: database engine issued $u, it logged in, revocation removed it"
log "all checks passed in $(elapsed_since "$t0")"

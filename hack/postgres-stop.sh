#!/usr/bin/env bash
# Stops our PostgreSQL cluster (pg_ctl stop -m fast). No error if not running.
# Its data is kept; `hack/postgres-start.sh --fresh` wipes it.
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

DATA="$(pg_base)/data"
if [ ! -f "$DATA/PG_VERSION" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
  log "PostgreSQL is not running (no cluster at $DATA)"
  exit 0
fi
if ! run_as_pg "$PG_BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
  log "PostgreSQL is not running"
  exit 0
fi
log "stopping PostgreSQL ($DATA)"
if ! run_as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 -s; then
  log "fast shutdown failed; trying immediate"
  run_as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 30 -s
fi
log "PostgreSQL stopped"

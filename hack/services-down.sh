#!/usr/bin/env bash
# Stops the services started by hack/services-up.sh (OpenBao loses its
# in-memory state; PostgreSQL keeps its data). No error if they are not running.
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

rc=0
"$HACK_DIR/openbao-stop.sh" || rc=1
"$HACK_DIR/postgres-stop.sh" || rc=1
exit "$rc"

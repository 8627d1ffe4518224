#!/usr/bin/env bash
# Stops the OpenBao dev server started by hack/openbao-start.sh (SIGTERM, wait,
# then SIGKILL) and removes its pid file. No error if it is not running.
# Its state is in memory: stopping it discards every secret, mount and token.
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

pid=$(bao_server_pid)
if [ -z "$pid" ]; then
  log "OpenBao is not running"
else
  stop_pid "$pid" OpenBao 15
  log "OpenBao stopped"
fi
rm -f "$BAO_PID_FILE"

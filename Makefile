# One entry point for developers, the README and CI.
.PHONY: demo test lint ci crds services-up services-down

# The main job on the embedded default: OpenBao dev server + config/samples/ reconciled
# by `certus-vault apply`.
demo:
	hack/demo.sh

# Every test tier that can run here (unit, integration against real OpenBao/PostgreSQL,
# mocked-Kubernetes controller tests); the end-to-end tier runs when
# CERTUS_E2E_KUBECONFIG names a cluster's kubeconfig and says it skipped otherwise.
test:
	hack/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

ci: lint test

# Regenerate crds/ from the Rust types.
crds:
	cargo run -q -p certus-cli -- crds --out-dir crds

services-up:
	hack/services-up.sh

services-down:
	hack/services-down.sh

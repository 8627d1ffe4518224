# syntax=docker/dockerfile:1
# The certus-vault image: the operator (`run`, the default command) and the CLI
# (`crds`, `plan`, `apply`).
#
#   docker build -t ghcr.io/certus/certus-vault-operator:0.1.0 .
#
# Build stage: the pinned toolchain, the workspace as checked in (Cargo.lock honoured).
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p certus-cli \
    && install -m 0755 target/release/certus-vault /certus-vault

# Runtime stage: glibc + CA certificates only, no shell, no package manager, non-root
# (uid/gid 65532, the same ids the Helm chart and config/manager set).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="certus-vault-operator" \
      org.opencontainers.image.description="Declarative HashiCorp Vault / OpenBao for Kubernetes" \
      org.opencontainers.image.source="https://github.com/certus/certus-vault-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /certus-vault /certus-vault
USER 65532:65532
ENTRYPOINT ["/certus-vault"]
CMD ["run"]

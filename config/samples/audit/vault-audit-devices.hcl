# Vault / OpenBao server configuration for certus-vault-operator's audit reader.
# OpenBao accepts audit devices only from server configuration (HashiCorp Vault also
# from `vault audit enable`).
#
# IMPORTANT: Vault blocks every request while ALL of its audit devices fail. The socket
# device writes synchronously to the operator; if it were the only device, an operator
# outage would stop Vault. Always keep the file device: it is also what the operator's
# file reader follows (mount the same volume into the operator, read-only).

audit "file" "file" {
  description = "JSON audit log, followed by certus-vault-operator"
  options {
    file_path = "/vault/audit/audit.log"
    mode      = "0600"
  }
}

# Optional: stream to the operator's socket listener as well (lower latency, no shared
# volume). No TLS, no authentication: restrict the listener with a NetworkPolicy that
# admits only the Vault pods.
audit "socket" "certus" {
  description = "JSON audit stream to certus-vault-operator"
  options {
    address     = "certus-vault-operator-audit.certus-system.svc:9090"
    socket_type = "tcp"
    format      = "json"
  }
}

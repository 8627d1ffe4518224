{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "certus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "certus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "certus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "certus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "certus.labels" -}}
helm.sh/chart: {{ include "certus.chart" . }}
{{ include "certus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: certus-vault-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "certus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "certus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "certus.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "certus.leaseName" -}}
{{- default (printf "%s-leader" (include "certus.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Namespaces that get the namespaced Role when watchNamespaces is set: every watched
namespace plus the release namespace (the operator's own ServiceAccount, and the Secrets a
ClusterVaultConnection usually refers to, live there). One name per line.
*/}}
{{- define "certus.roleNamespaces" -}}
{{- $all := append .Values.watchNamespaces .Release.Namespace }}
{{- range $all | uniq | sortAlpha }}
{{ . }}
{{- end }}
{{- end }}

{{/*
Namespaces that get the Secrets Role when rbac.secretNamespaces is set.
*/}}
{{- define "certus.secretNamespaces" -}}
{{- range .Values.rbac.secretNamespaces | uniq | sortAlpha }}
{{ . }}
{{- end }}
{{- end }}

{{/* Whether Secret access is granted per namespace instead of by the ClusterRole. */}}
{{- define "certus.secretsPerNamespace" -}}
{{- if or .Values.watchNamespaces .Values.rbac.secretNamespaces }}true{{ end }}
{{- end }}

{{/* ---------------------------------------------------------------------------------
RBAC rules. Each rule carries a comment that says why the operator needs it; the same
rules are used by the ClusterRole (all namespaces) and by the per-namespace Roles
(watchNamespaces), and config/rbac/ mirrors the cluster-wide set.
--------------------------------------------------------------------------------- */}}

{{/* The namespaced vault.certus.io kinds. */}}
{{- define "certus.namespacedKinds" -}}
- vaultconnections
- vaultpolicies
- secretengines
- authmethods
- vaultroles
- dynamiccredentials
- staticsecrets
- rotationpolicies
{{- end }}

{{/* The cluster-scoped vault.certus.io kinds. */}}
{{- define "certus.clusterKinds" -}}
- clustervaultconnections
- auditalertrules
{{- end }}

{{/* Rules over the operator's own kinds; `.kinds` is the list template above. */}}
{{- define "certus.rules.kinds" -}}
# Watch the resources it reconciles (get/list/watch) and add or remove its finalizer
# (patch/update) so deleting a resource can clean up Vault first.
- apiGroups: ["vault.certus.io"]
  resources:
    {{- .kinds | nindent 4 }}
  verbs: ["get", "list", "watch", "patch", "update"]
# Write status.conditions and observedGeneration through the status subresource only.
- apiGroups: ["vault.certus.io"]
  resources:
    {{- regexReplaceAll "(?m)^- (.*)$" .kinds "- ${1}/status" | nindent 4 }}
  verbs: ["get", "patch", "update"]
# Set blockOwnerDeletion on the owner references of projected Secrets (required where
# the OwnerReferencesPermissionEnforcement admission plugin is enabled).
- apiGroups: ["vault.certus.io"]
  resources:
    {{- regexReplaceAll "(?m)^- (.*)$" .kinds "- ${1}/finalizers" | nindent 4 }}
  verbs: ["update"]
{{- end }}

{{/* Secrets: referenced credentials in, projected secrets out. */}}
{{- define "certus.rules.secrets" -}}
# Read the Secrets resources refer to (AppRole SecretIDs, tokens, CA bundles, database
# and cloud root credentials) and watch the Secrets it owns so a deleted or edited
# projection is restored. Create/patch/delete write the projected Secrets of
# StaticSecret, DynamicCredential and RotationPolicy (server-side apply, owned by the
# resource). RBAC cannot limit create to names the operator owns; narrow the
# namespaces with rbac.secretNamespaces or watchNamespaces (docs/security.md).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- end }}

{{/* Namespaced rules other than Secrets and the operator's kinds. */}}
{{- define "certus.rules.namespaced" -}}
# Kubernetes auth login: request a short-lived token for the ServiceAccount a
# VaultConnection names (TokenRequest API). Grants no read access to ServiceAccounts.
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
# Record Events about state changes and errors (events.k8s.io/v1, kube-runtime's
# recorder); patch aggregates repeats into one Event.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same Events through the core API, for tooling that still writes or reads v1 Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# Rolling restart of the workloads a StaticSecret/DynamicCredential names (by name or
# label selector) after the projected Secret changed: patch of the Pod template
# annotation only.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "list", "patch"]
{{- end }}

{{/* Cluster-scoped needs. */}}
{{- define "certus.rules.crds" -}}
# Wait until its CustomResourceDefinitions are Established before starting controllers.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Rules in the operator's own namespace only. */}}
{{- define "certus.rules.self" -}}
{{- if .Values.leaderElection.enabled }}
# Leader election: create the Lease once (create cannot be limited by name) ...
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
# ... then read, renew and take over only the operator's own Lease.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "certus.leaseName" . | quote }}]
  verbs: ["get", "update", "patch"]
{{- end }}
# Audit reader checkpoint: create its ConfigMap once (create cannot be limited by name) ...
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create"]
# ... then read and update only it (how far the Vault audit log was read), so a restarted
# or new leader resumes instead of re-alerting on old lines.
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: [{{ .Values.audit.checkpointConfigMap | quote }}]
  verbs: ["get", "update", "patch"]
{{- if .Values.persistVaultTokens }}
# Vault login tokens kept across restarts (--persist-vault-tokens): create the Secret of
# each Vault identity (create cannot be limited by name) ...
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# ... then read, update and delete them (named certus-vault-token-<hash of the identity>,
# not known in advance; only in the operator's own namespace).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "patch", "delete"]
{{- end }}
{{- end }}

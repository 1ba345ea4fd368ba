{{/* Names and labels shared by every template. */}}

{{- define "remediator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: the release name, plus the chart name unless it already has it. */}}
{{- define "remediator.fullname" -}}
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

{{- define "remediator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "remediator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Not app.kubernetes.io/part-of=store-platform: store discovery selects namespaces by it. */}}
{{- define "remediator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "remediator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "remediator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "remediator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "remediator.tokenSecretName" -}}
{{- default (printf "%s-token" (include "remediator.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "remediator.hasApiToken" -}}
{{- if .Values.auth.existingSecret }}
{{- if .Values.auth.existingSecretHasApiToken }}true{{ end }}
{{- else if .Values.auth.apiToken }}true{{ end }}
{{- end }}

{{- define "remediator.hasViewerToken" -}}
{{- if .Values.auth.existingSecret }}
{{- if .Values.auth.existingSecretHasViewerToken }}true{{ end }}
{{- else if .Values.auth.viewerToken }}true{{ end }}
{{- end }}

{{- define "remediator.playbooksConfigMapName" -}}
{{- default (printf "%s-playbooks" (include "remediator.fullname" .)) .Values.playbooks.existingConfigMap }}
{{- end }}

{{/* "true" when the state is on PostgreSQL (database.url), else empty. */}}
{{- define "remediator.postgresql" -}}
{{- if or (hasPrefix "postgresql://" .Values.database.url) (hasPrefix "postgres://" .Values.database.url) }}true{{ end }}
{{- end }}

{{/*
The config keys that follow from the pod layout (deployment.yaml's mounts); configmap.yaml
merges them over .Values.config, whose schema does not allow them. The kubeconfig is left
unset, so the daemon uses the in-cluster service account. With keep_conditional=False the tests
read the `else` branches here as the defaults' (every condition is false by default). Paths here and mountPaths in
deployment.yaml must agree (tests/deploy/test_chart.py checks both).
*/}}
{{- define "remediator.managedConfig" -}}
server:
  host: 0.0.0.0
  port: 9095
auth:
  token_file: /var/run/secrets/remediator/token
  {{- if include "remediator.hasApiToken" . }}
  api_token_file: /var/run/secrets/remediator/api-token
  {{- end }}
  {{- if include "remediator.hasViewerToken" . }}
  viewer_token_file: /var/run/secrets/remediator/viewer-token
  {{- end }}
playbooks:
  directory: /etc/remediator/playbooks
state:
  {{- if include "remediator.postgresql" . }}
  path: {{ .Values.database.url | quote }}
  {{- if .Values.database.existingSecret }}
  password_file: /var/run/secrets/remediator-database/password
  {{- end }}
  {{- else }}
  path: /var/lib/remediator/remediator.sqlite
  {{- end }}
{{- if include "remediator.postgresql" . }}
ha:
  # The Lease lives where the Role grants it; named after the release, so that two releases
  # in one namespace elect their leaders apart.
  lease_name: {{ include "remediator.fullname" . }}-leader
  lease_namespace: {{ .Release.Namespace }}
{{- end }}
{{- if .Values.provisionerAuth.existingSecret }}
provisioner:
  token_file: /var/run/secrets/remediator-provisioner/token
{{- end }}
{{- end }}

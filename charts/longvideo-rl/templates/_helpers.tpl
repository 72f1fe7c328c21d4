{{/*
The chart's only helpers file: names (cut to 63 characters, the DNS label limit), labels, images and the
RBAC rules. Selector labels are name + instance + component and never change: a Deployment's selector
is immutable, so changing them would make `helm upgrade` fail.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "lvr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<name>", or the release name alone when it already contains the name; fullnameOverride wins. */}}
{{- define "lvr.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "lvr.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A namespaced object's name: "<fullname>-<part>", cut so that the part is never the piece lost. */}}
{{- define "lvr.partName" -}}
{{- $part := .part }}
{{- printf "%s-%s" (include "lvr.fullname" .root | trunc (int (sub 62 (len $part))) | trimSuffix "-") $part }}
{{- end }}

{{/* A cluster-scoped name: also carries the release namespace, so two releases never collide. */}}
{{- define "lvr.clusterName" -}}
{{- $part := .part }}
{{- $prefix := printf "%s-%s" .root.Release.Namespace (include "lvr.fullname" .root) }}
{{- printf "%s-%s" ($prefix | trunc (int (sub 62 (len $part))) | trimSuffix "-") $part }}
{{- end }}

{{- define "lvr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component (operator, minio); call with (dict "root" $ "component" "operator"). */}}
{{- define "lvr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lvr.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every object's labels: the selector labels plus version, chart and manager. */}}
{{- define "lvr.labels" -}}
{{ include "lvr.selectorLabels" . }}
app.kubernetes.io/part-of: longvideo-rl
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "lvr.chart" .root }}
{{- end }}

{{/* "repository:tag" or "repository@digest"; the tag defaults to the chart's appVersion (the project version). */}}
{{- define "lvr.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "lvr.operator.name" -}}
{{- include "lvr.partName" (dict "root" . "part" "operator") }}
{{- end }}

{{- define "lvr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lvr.operator.name" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's RBAC rules for this install: one variant of files/rbac-rules.yaml, which `lvr crds`
generates from operator/lvr_operator/manifests/rbac.py. Call with (dict "root" $ "kind" "clusterRole"|"role"). */}}
{{- define "lvr.rbacRules" -}}
{{- $all := .root.Files.Get "files/rbac-rules.yaml" | fromYaml }}
{{- $scope := ternary "namespaced" "clusterwide" (gt (len .root.Values.watchNamespaces) 0) }}
{{- $mode := ternary "peering" "standalone" .root.Values.peering.enabled }}
{{- index $all $scope $mode .kind | toYaml }}
{{- end }}

{{- define "lvr.minio.name" -}}
{{- include "lvr.partName" (dict "root" . "part" "minio") }}
{{- end }}

{{/* The MinIO credentials Secret, keys accessKey/secretKey: what a job's spec.cache.s3.credentialsSecret wants. */}}
{{- define "lvr.minio.secretName" -}}
{{- include "lvr.partName" (dict "root" . "part" "minio-credentials") }}
{{- end }}

{{- define "lvr.minio.endpoint" -}}
{{- printf "http://%s.%s.svc:%d" (include "lvr.minio.name" .) .Release.Namespace (int .Values.minio.port) }}
{{- end }}

{{/* Pod and container security settings shared by every workload of the chart. */}}
{{- define "lvr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "lvr.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

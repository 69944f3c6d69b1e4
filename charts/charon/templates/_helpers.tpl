{{/*
The chart name, or nameOverride; 63 characters at most (a DNS label).
*/}}
{{- define "charon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of object names: fullnameOverride, else the release name when it already contains
the chart name, else "<release>-<chart>"; 63 characters at most.
*/}}
{{- define "charon.fullname" -}}
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

{{/*
"<chart>-<version>", for the helm.sh/chart label.
*/}}
{{- define "charon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods; they never change after install (Deployment selectors
are immutable).
*/}}
{{- define "charon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "charon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "charon.labels" -}}
helm.sh/chart: {{ include "charon.chart" . }}
{{ include "charon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: charon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "charon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "charon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image, "<repository>:<tag>", the tag defaulting to the chart's appVersion.
*/}}
{{- define "charon.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The subject every binding grants to: the operator's ServiceAccount.
*/}}
{{- define "charon.rbac.subjects" -}}
- kind: ServiceAccount
  name: {{ include "charon.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* Chart name, shortened to the 63 characters Kubernetes allows in a label. */}}
{{- define "sdft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name used as the prefix of every resource. */}}
{{- define "sdft.fullname" -}}
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

{{- define "sdft.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sdft.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sdft.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sdft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sdft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sdft.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference for a component: include "sdft.image" (list . "api"). */}}
{{- define "sdft.image" -}}
{{- $root := index . 0 }}
{{- $image := index $root.Values.image (index . 1) }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{/* Name of the Secret with the connection settings that pods read. */}}
{{- define "sdft.secretName" -}}
{{- default (include "sdft.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Keys of the chart-managed connection Secret; empty values are left out. */}}
{{- define "sdft.secretData" -}}
{{- with .Values.secrets.databaseUrl }}
SDFT_DATABASE_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.redisUrl }}
SDFT_REDIS_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.s3AccessKeyId }}
SDFT_S3_ACCESS_KEY_ID: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.s3SecretAccessKey }}
SDFT_S3_SECRET_ACCESS_KEY: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Environment of the API and worker containers: the ConfigMap, then the Secret. */}}
{{- define "sdft.envFrom" -}}
- configMapRef:
    name: {{ include "sdft.fullname" . }}
- secretRef:
    name: {{ include "sdft.secretName" . }}
{{- end }}

{{/* Volumes for SDFT_MODELS_DIR, mounted by the API and the workers. */}}
{{- define "sdft.modelsVolume" -}}
- name: models
{{- if .Values.models.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.models.existingClaim }}
    readOnly: {{ .Values.models.readOnly }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end }}

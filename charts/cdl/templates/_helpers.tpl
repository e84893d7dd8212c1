{{- define "cdl.name" -}}cdl{{- end -}}
{{- define "cdl.fullname" -}}
{{- if contains "cdl" .Release.Name -}}{{ .Release.Name | trunc 55 | trimSuffix "-" }}{{- else -}}{{ printf "%s-cdl" .Release.Name | trunc 55 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "cdl.labels" -}}
app.kubernetes.io/name: cdl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "cdl.selector" -}}
app.kubernetes.io/name: cdl
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- define "cdl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "cdl.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* The operator's Secret rule: get only, by name when rbac.secretNames lists them. */}}
{{- define "cdl.secretRule" -}}
apiGroups: [""]
resources: ["secrets"]
verbs: ["get"]
{{- with .Values.rbac.secretNames }}
resourceNames: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Whether the operator runs as shards (several replicas, each owning a share). */}}
{{- define "cdl.sharded" -}}
{{- if or .Values.operator.shards.enabled (gt (int .Values.operator.replicas) 1) }}true{{- end }}
{{- end }}

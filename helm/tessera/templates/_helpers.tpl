{{/*
Names. The full name is cut to 48 characters so that "<fullname>-controlplane", a Service name,
stays within a DNS label's 63.
*/}}
{{- define "tessera.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 48 | trimSuffix "-" -}}
{{- end -}}

{{- define "tessera.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 48 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too: two releases of one name in two namespaces
must not share a ClusterRole. */}}
{{- define "tessera.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "tessera.fullname" .) -}}
{{- end -}}

{{- define "tessera.controlPlaneName" -}}{{ include "tessera.fullname" . }}-controlplane{{- end -}}
{{- define "tessera.gatewayName" -}}{{ include "tessera.fullname" . }}-gateway{{- end -}}
{{- define "tessera.nodeName" -}}{{ include "tessera.fullname" . }}-node{{- end -}}
{{- define "tessera.nodeTokenSecret" -}}{{ include "tessera.fullname" . }}-node-token{{- end -}}
{{- define "tessera.gatewayTokenSecret" -}}{{ include "tessera.fullname" . }}-gateway-token{{- end -}}

{{- define "tessera.jobsNamespace" -}}
{{- default .Release.Namespace .Values.jobs.namespace -}}
{{- end -}}

{{- define "tessera.controlPlaneURL" -}}
http://{{ include "tessera.controlPlaneName" . }}:{{ .Values.controlPlane.service.port }}
{{- end -}}

{{/* The URL clients reach the gateway at: set, else its ingress host, else its Service. */}}
{{- define "tessera.gatewayURL" -}}
{{- $host := .Values.ingress.hosts.gateway -}}
{{- if .Values.gateway.url -}}
{{- .Values.gateway.url -}}
{{- else if and .Values.ingress.enabled $host -}}
{{- $scheme := "http" -}}
{{- range .Values.ingress.tls -}}
{{- if has $host (default list .hosts) -}}{{- $scheme = "https" -}}{{- end -}}
{{- end -}}
{{- printf "%s://%s" $scheme $host -}}
{{- else -}}
{{- $port := int .Values.gateway.service.port -}}
{{- printf "http://%s.%s.svc%s" (include "tessera.gatewayName" .) .Release.Namespace (eq $port 80 | ternary "" (printf ":%d" $port)) -}}
{{- end -}}
{{- end -}}

{{/* SQLite: no Secret holding the database URL, and no URL or a sqlite: one. */}}
{{- define "tessera.sqlite" -}}
{{- $url := .Values.database.url -}}
{{- if and (not .Values.database.existingSecret) (or (not $url) (hasPrefix "sqlite" $url)) -}}true{{- end -}}
{{- end -}}

{{/* Labels. */}}
{{- define "tessera.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tessera.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tessera.labels" -}}
{{ include "tessera.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tessera
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* An image reference: {{ include "tessera.image" (dict "ctx" $ "image" .Values.node.image) }} */}}
{{- define "tessera.image" -}}
{{- $tag := .image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- if .ctx.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .ctx.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A config value as the string pydantic reads: whole numbers without an exponent (YAML numbers
arrive as float64, which would print 1000000 as 1e+06). */}}
{{- define "tessera.configValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . | toString -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The schema refuses these too; this holds where it is skipped (--skip-schema-validation). */}}
{{- define "tessera.validate" -}}
{{- if include "tessera.sqlite" . -}}
{{- if ne (int .Values.controlPlane.replicas) 1 -}}
{{- fail "controlPlane.replicas: SQLite (no database.existingSecret; database.url empty or sqlite:) allows exactly 1 replica" -}}
{{- end -}}
{{- if not .Values.persistence.enabled -}}
{{- fail "persistence.enabled: SQLite (no database.existingSecret; database.url empty or sqlite:) needs a persistent volume" -}}
{{- end -}}
{{- end -}}
{{- end -}}

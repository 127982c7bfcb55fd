{{/* Name of the chart, or nameOverride. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: the release name, plus the chart name unless it is in it. */}}
{{- define "tollgate.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{/* Selector labels of the controller pods. */}}
{{- define "tollgate.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* Selector labels of the gateway pods: the controller's default --gateway-selector
     (app.kubernetes.io/component=gateway,app.kubernetes.io/name=tollgate) matches them. */}}
{{- define "tollgate.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The controller's ServiceAccount. */}}
{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-controller" (include "tollgate.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Leader election: forced by controller.leaderElection.enabled, else on with more than one replica. */}}
{{- define "tollgate.leaderElection" -}}
{{- $le := .Values.controller.leaderElection.enabled }}
{{- if kindIs "bool" $le }}{{ $le }}{{ else }}{{ gt (int .Values.controller.replicas) 1 }}{{ end }}
{{- end }}

{{/* Name of the controller's Lease. */}}
{{- define "tollgate.leaseName" -}}
{{- printf "%s-controller" (include "tollgate.fullname" .) }}
{{- end }}

{{/* The image, by digest when one is given. */}}
{{- define "tollgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Names the controller writes in every watched namespace (fixed in the code: the gateway
     ConfigMap is --configmap-name's default, the credentials Secret config::CREDENTIALS_SECRET). */}}
{{- define "tollgate.configMapName" -}}tollgate-gateway{{- end }}
{{/* The shard ConfigMaps of a config too large for one (src/config/shard.rs: MAX_SHARDS = 8),
as a comma-separated list of names. */}}
{{- define "tollgate.configShardNames" -}}
{{- $cm := include "tollgate.configMapName" . -}}
{{- range $i, $e := until 8 }}{{ if $i }}, {{ end }}{{ $cm }}-shard-{{ add1 $i }}{{ end -}}
{{- end }}
{{- define "tollgate.credentialsSecretName" -}}tollgate-credentials{{- end }}
{{/* The Hard budgets' grants (config::allowances::ALLOWANCES_CONFIGMAP, --allowances-configmap-name's
default), written by the controller in each namespace with Hard ProviderBudgets. */}}
{{- define "tollgate.allowancesConfigMapName" -}}tollgate-allowances{{- end }}

{{/* Refuses combinations that install but cannot work. */}}
{{- define "tollgate.validate" -}}
{{- if and .Values.gateway.enabled .Values.namespaces (not (has .Release.Namespace .Values.namespaces)) }}
{{- fail (printf "gateway.enabled: the gateway serves the config the controller writes in its own namespace %q, which is not in namespaces %v; add it, or set gateway.enabled=false" .Release.Namespace .Values.namespaces) }}
{{- end }}
{{- if and .Values.gateway.enabled (not (contains (printf "app.kubernetes.io/name=%s" (include "tollgate.name" .)) .Values.controller.gatewaySelector)) }}
{{- fail (printf "controller.gatewaySelector %q does not select this chart's gateway pods (app.kubernetes.io/name=%s, because of nameOverride): adjust it" .Values.controller.gatewaySelector (include "tollgate.name" .)) }}
{{- end }}
{{- if and (gt (int .Values.controller.replicas) 1) (eq (include "tollgate.leaderElection" .) "false") }}
{{- fail "controller.replicas > 1 needs leader election (controller.leaderElection.enabled must not be false): only one controller may write" }}
{{- end }}
{{- end }}

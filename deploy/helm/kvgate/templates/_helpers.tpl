{{/* Names, labels and the filter configuration shared by the templates. */}}

{{- define "kvgate.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* The Gateway: the one created here, or the existing one named in gateway.existing. */}}
{{- define "kvgate.gatewayName" -}}
{{- if .Values.gateway.create -}}
{{- default (include "kvgate.fullname" .) .Values.gateway.name -}}
{{- else -}}
{{- required "gateway.existing.name is required when gateway.create is false" .Values.gateway.existing.name -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the Gateway and its pods (the EnvoyFilter and the sidecar's ConfigMaps
go there: Istio applies them to workloads of their own namespace). */}}
{{- define "kvgate.gatewayNamespace" -}}
{{- if .Values.gateway.create -}}
{{- .Release.Namespace -}}
{{- else -}}
{{- default .Release.Namespace .Values.gateway.existing.namespace -}}
{{- end -}}
{{- end -}}

{{/* The Deployment, Service and ServiceAccount Istio generates for the Gateway. */}}
{{- define "kvgate.gatewayIstio" -}}
{{- printf "%s-istio" (include "kvgate.gatewayName" .) -}}
{{- end -}}

{{/* Served model name of pods without annotation, and of the helm test request. */}}
{{- define "kvgate.defaultModel" -}}
{{- $first := "" -}}
{{- with .Values.tokenizers.models -}}{{- $first = (first .).name -}}{{- end -}}
{{- default $first .Values.discovery.defaultModel -}}
{{- end -}}

{{- define "kvgate.poolName" -}}
{{- default (printf "%s-workers" (include "kvgate.fullname" .)) .Values.pool.name -}}
{{- end -}}

{{/* Name of the ECDS extension config carrying the wasm filter (EnvoyFilter mode). */}}
{{- define "kvgate.extensionName" -}}
{{- printf "%s.%s-filter" .Release.Namespace (include "kvgate.fullname" .) -}}
{{- end -}}

{{- define "kvgate.labels" -}}
app.kubernetes.io/name: kvgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
The filter's plugin configuration (README table keys), as a dict: the Dynamo-style
values mapped onto kvgate keys, then filterConfig verbatim. The same JSON configures the
sidecar (kvgate-sync --config).
*/}}
{{- define "kvgate.pluginConfig" -}}
{{- $d := .Values.dynamo -}}
{{- $c := dict "block_size" (int $d.kvBlockSize) "router_replica_sync" $d.routerReplicaSync "router_temperature" $d.routerTemperature "enforce_disagg" $d.enforceDisagg "sidecar_cluster" "kvgate_sidecar" "sidecar_authority" .Values.sidecar.authority -}}
{{- if not $d.useKvRouting -}}
{{- $_ := set $c "overlap_score_credit" 0 -}}
{{- $_ := set $c "use_kv_events" false -}}
{{- end -}}
{{- if not (kindIs "invalid" $d.busyThreshold) -}}
{{- $_ := set $c "busy_threshold" $d.busyThreshold -}}
{{- end -}}
{{- if not (kindIs "invalid" $d.overlapScoreWeight) -}}
{{- $_ := set $c "overlap_score_weight" $d.overlapScoreWeight -}}
{{- end -}}
{{- range $k, $v := .Values.filterConfig -}}
{{- $_ := set $c $k $v -}}
{{- end -}}
{{- toJson $c -}}
{{- end -}}

{{/* The module digest: 64 hex digits, not all zeros. The examples ship a placeholder
this refuses, so an unedited copy cannot deploy a filter Istio would never fetch. */}}
{{- define "kvgate.sha256" -}}
{{- $d := .Values.filter.sha256 | toString -}}
{{- if or (not (regexMatch "^[0-9a-f]{64}$" $d)) (regexMatch "^0+$" $d) -}}
{{- fail (printf "filter.sha256 must be the 64-hex-digit digest `make oci` prints (the image manifest digest for oci://, the .wasm file's sha256 for https://), not %q" $d) -}}
{{- end -}}
{{- $d -}}
{{- end -}}

{{/* The Secret holding the sidecar API token (key `token`). */}}
{{- define "kvgate.tokenSecret" -}}
{{- .Values.sidecar.apiTokenSecret | default (printf "%s-sidecar-token" (include "kvgate.fullname" .)) -}}
{{- end -}}

{{/* Names, labels and the filter configuration shared by the templates. */}}

{{- define "kvgate.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvgate.gatewayName" -}}
{{- default (include "kvgate.fullname" .) .Values.gateway.name -}}
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

{{- define "kvgate.sha256" -}}
{{- required "filter.sha256 is required: the image manifest digest for oci:// (make oci prints it), the file's sha256 for https://" .Values.filter.sha256 -}}
{{- end -}}

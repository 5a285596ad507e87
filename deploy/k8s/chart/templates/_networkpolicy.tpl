{{/* NetworkPolicy building blocks; see networkPolicy in values.yaml. */}}

{{/* A peer: the pods of one component of this release. */}}
{{- define "pagewire.np.pods" -}}
- podSelector:
    matchLabels:
      {{- include "pagewire.selectorLabels" . | nindent 6 }}
{{- end -}}

{{- define "pagewire.np.dns" -}}
{{- $dns := .Values.networkPolicy.dns -}}
- to:
    {{- toYaml $dns.to | nindent 4 }}
  ports:
    - protocol: UDP
      port: {{ $dns.port | int }}
    - protocol: TCP
      port: {{ $dns.port | int }}
{{- end -}}

{{/* Egress to CIDRs and/or peers on one port; (dict "cidrs" .. "except" .. "peers" .. "port" ..). */}}
{{- define "pagewire.np.external" -}}
{{- if or .cidrs .peers -}}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ . }}
        {{- with $.except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
    {{- end }}
    {{- with .peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ .port | int }}
{{- end -}}
{{- end -}}

{{- define "pagewire.np.postgresql" -}}
{{- $pg := .Values.networkPolicy.postgresql -}}
{{ include "pagewire.np.external" (dict "cidrs" $pg.cidrs "except" list "peers" $pg.peers "port" $pg.port) }}
{{- end -}}

{{- define "pagewire.np.redis" -}}
{{- $r := .Values.networkPolicy.redis -}}
{{ include "pagewire.np.external" (dict "cidrs" $r.cidrs "except" list "peers" $r.peers "port" $r.port) }}
{{- end -}}

{{- define "pagewire.np.https" -}}
{{- $h := .Values.networkPolicy.https -}}
{{ include "pagewire.np.external" (dict "cidrs" $h.cidrs "except" $h.except "peers" list "port" $h.port) }}
{{- end -}}

{{- define "pagewire.np.otlp" -}}
{{- $o := .Values.networkPolicy.otlp -}}
{{- if .Values.otel.endpoint -}}
{{ include "pagewire.np.external" (dict "cidrs" $o.cidrs "except" list "peers" $o.peers "port" $o.port) }}
{{- end -}}
{{- end -}}

{{/* Egress to the gRPC port of another component; (dict "root" $ "component" "tokens"). */}}
{{- define "pagewire.np.toService" -}}
- to:
    {{- include "pagewire.np.pods" . | nindent 4 }}
  ports:
    - protocol: TCP
      port: {{ include "pagewire.port" . }}
{{- end -}}

{{/* Ingress of the metrics port from the monitoring namespace. */}}
{{- define "pagewire.np.metrics" -}}
{{- with .root.Values.networkPolicy.monitoringFrom -}}
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - protocol: TCP
      port: {{ $.port | int }}
{{- end -}}
{{- end -}}

{{- define "pagewire.np.header" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "pagewire.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
{{- end -}}

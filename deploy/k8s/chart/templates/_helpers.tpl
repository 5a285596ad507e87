{{/* Names, labels and the pieces every Pagewire pod shares. */}}

{{- define "pagewire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pagewire.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>; call with (dict "root" $ "component" "router"). */}}
{{- define "pagewire.componentName" -}}
{{- printf "%s-%s" (include "pagewire.fullname" .root) .component -}}
{{- end -}}

{{- define "pagewire.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pagewire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pagewire.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pagewire.labels" -}}
helm.sh/chart: {{ include "pagewire.chart" .root }}
{{ include "pagewire.selectorLabels" . }}
app.kubernetes.io/part-of: pagewire
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels shared by every object of the release, whatever its component. */}}
{{- define "pagewire.releaseSelector" -}}
app.kubernetes.io/name: {{ include "pagewire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pagewire.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The gRPC port of a service; (dict "root" $ "component" "tokens"). */}}
{{- define "pagewire.port" -}}
{{- (index .root.Values .component).port | int -}}
{{- end -}}

{{/* dns:/// target on a headless Service, for client-side round_robin. */}}
{{- define "pagewire.grpcTarget" -}}
{{- printf "dns:///%s-headless.%s.svc.%s:%d" (include "pagewire.componentName" .) .root.Release.Namespace .root.Values.clusterDomain (include "pagewire.port" . | int) -}}
{{- end -}}

{{/* ---------------------------------------------------------------- Secrets */}}

{{- define "pagewire.databaseSecret" -}}
{{- $db := .root.Values.database -}}
{{- $own := default dict (index $db.perService .component) -}}
{{- if or $own.existingSecret $own.url -}}
{{- default (printf "%s-database" (include "pagewire.componentName" .)) $own.existingSecret -}}
{{- else -}}
{{- default (printf "%s-database" (include "pagewire.fullname" .root)) $db.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "pagewire.databaseKey" -}}
{{- $db := .root.Values.database -}}
{{- $own := default dict (index $db.perService .component) -}}
{{- if or $own.existingSecret $own.url -}}
{{- default "url" $own.secretKey -}}
{{- else -}}
{{- $db.secretKey -}}
{{- end -}}
{{- end -}}

{{/* "true" when the service's database URL is given inline in values (the chart makes its Secret). */}}
{{- define "pagewire.databaseInline" -}}
{{- $db := .root.Values.database -}}
{{- $own := default dict (index $db.perService .component) -}}
{{- if or $own.existingSecret $own.url -}}
{{- ternary "true" "" (and (not $own.existingSecret) (ne (default "" $own.url) "")) -}}
{{- else -}}
{{- ternary "true" "" (and (not $db.existingSecret) (ne $db.url "")) -}}
{{- end -}}
{{- end -}}

{{- define "pagewire.databaseUrl" -}}
{{- $db := .root.Values.database -}}
{{- $own := default dict (index $db.perService .component) -}}
{{- default $db.url $own.url -}}
{{- end -}}

{{- define "pagewire.redisSecret" -}}
{{- default (printf "%s-redis" (include "pagewire.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "pagewire.gatewaySecret" -}}
{{- default (include "pagewire.componentName" (dict "root" . "component" "gateway")) .Values.gateway.secret.existingSecret -}}
{{- end -}}

{{- define "pagewire.keyringSecret" -}}
{{- default (printf "%s-keyring" (include "pagewire.fullname" .)) .Values.tokens.keyring.existingSecret -}}
{{- end -}}

{{- define "pagewire.tlsSecret" -}}
{{- $svc := index .root.Values.tls.services .component -}}
{{- default (printf "%s-tls" (include "pagewire.componentName" .)) $svc.existingSecret -}}
{{- end -}}

{{/* The Secret of a client identity's certificate; (dict "root" $ "name" "helpdesk"). */}}
{{- define "pagewire.clientSecret" -}}
{{- $client := default dict (index .root.Values.tls.clients .name) -}}
{{- default (printf "%s-client-%s-tls" (include "pagewire.fullname" .root) .name) $client.existingSecret -}}
{{- end -}}

{{/* A cert-manager Certificate's spec; (dict "root" $ "identity" "router" "secret" <name> "server" true). */}}
{{- define "pagewire.certificateSpec" -}}
{{- $cm := .root.Values.tls.certManager -}}
secretName: {{ .secret }}
secretTemplate:
  labels:
    {{- include "pagewire.releaseSelector" .root | nindent 4 }}
commonName: {{ .identity }}
dnsNames:
  - {{ .identity }}
duration: {{ $cm.duration }}
renewBefore: {{ $cm.renewBefore }}
privateKey:
  algorithm: ECDSA
  size: 256
  encoding: PKCS8
  rotationPolicy: Always
usages:
  - digital signature
  {{- if .server }}
  - server auth
  {{- end }}
  - client auth
issuerRef:
  name: {{ $cm.issuerRef.name }}
  kind: {{ $cm.issuerRef.kind }}
  group: {{ $cm.issuerRef.group }}
{{- end -}}

{{/* ---------------------------------------------------------------- authorization */}}

{{/* The full proto name of a gRPC service, as its health service reports it. */}}
{{- define "pagewire.grpcServiceName" -}}
{{- printf "pagewire.%s.v1.%sService" . (title .) -}}
{{- end -}}

{{/* identity -> accounts map as PAGEWIRE_*_ACCOUNT_ACCESS: `app=acme,globex;helpdesk=*`. */}}
{{- define "pagewire.accountAccess" -}}
{{- $parts := list -}}
{{- range $identity, $accounts := . -}}
{{- $parts = append $parts (printf "%s=%s" $identity (join "," $accounts)) -}}
{{- end -}}
{{- join ";" $parts -}}
{{- end -}}

{{/* Authorization environment of router or subscriptions: who may call what, for which accounts. */}}
{{- define "pagewire.authEnv" -}}
{{- $values := index .root.Values .component -}}
{{- $prefix := printf "PAGEWIRE_%s" (upper .component) -}}
- name: PAGEWIRE_OPERATORS
  value: {{ join "," .root.Values.auth.operators | quote }}
- name: {{ $prefix }}_READERS
  value: {{ join "," $values.readers | quote }}
{{- if hasKey $values "senders" }}
- name: {{ $prefix }}_SENDERS
  value: {{ join "," $values.senders | quote }}
{{- end }}
{{- with $values.accountAccess }}
- name: {{ $prefix }}_ACCOUNT_ACCESS
  value: {{ include "pagewire.accountAccess" . | quote }}
{{- end }}
{{- end -}}

{{/* ---------------------------------------------------------------- pods */}}

{{- define "pagewire.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser | int64 }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup | int64 }}
fsGroup: {{ .Values.podSecurityContext.fsGroup | int64 }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pagewire.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser | int64 }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup | int64 }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment every service container has: logs, mTLS, OpenTelemetry. */}}
{{- define "pagewire.commonEnv" -}}
- name: PAGEWIRE_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
{{- if .root.Values.tls.enabled }}
- name: PAGEWIRE_TLS_CA_FILE
  value: /var/run/secrets/pagewire/tls/ca.crt
- name: PAGEWIRE_TLS_CERT_FILE
  value: /var/run/secrets/pagewire/tls/tls.crt
- name: PAGEWIRE_TLS_KEY_FILE
  value: /var/run/secrets/pagewire/tls/tls.key
{{- else }}
# unsafeInsecureGrpc: plaintext gRPC, no caller identity (debugging only).
- name: PAGEWIRE_INSECURE_GRPC
  value: "1"
{{- end }}
{{ include "pagewire.otelEnv" . }}
{{- end -}}

{{- define "pagewire.otelEnv" -}}
{{- $otel := .root.Values.otel -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ printf "pagewire-%s" .component | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME)%s" (ternary (printf ",%s" $otel.resourceAttributes) "" (ne $otel.resourceAttributes "")) | quote }}
- name: OTEL_TRACES_EXPORTER
  value: {{ $otel.tracesExporter | quote }}
{{- with $otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $otel.protocol }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with $otel.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with $otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Environment of a gRPC service: bind address, port, shutdown, database, metrics. */}}
{{- define "pagewire.grpcEnv" -}}
{{- $values := index .root.Values .component -}}
- name: PAGEWIRE_GRPC_HOST
  value: "0.0.0.0"
{{- if not .root.Values.tls.enabled }}
# Plaintext on 0.0.0.0: the services refuse it without this (unsafeInsecureGrpc).
- name: PAGEWIRE_INSECURE_GRPC_ALLOW_REMOTE
  value: "1"
{{- end }}
- name: {{ printf "PAGEWIRE_%s_PORT" (upper .component) }}
  value: {{ $values.port | int | quote }}
- name: PAGEWIRE_METRICS_PORT
  value: {{ $values.metricsPort | int | quote }}
{{- if $values.healthPort }}
- name: PAGEWIRE_HEALTH_PORT
  value: {{ $values.healthPort | int | quote }}
{{- end }}
- name: PAGEWIRE_SHUTDOWN_DRAIN_S
  value: {{ .root.Values.shutdown.drainSeconds | toString | quote }}
- name: PAGEWIRE_SHUTDOWN_GRACE_S
  value: {{ .root.Values.shutdown.graceSeconds | toString | quote }}
- name: PAGEWIRE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pagewire.databaseSecret" . }}
      key: {{ include "pagewire.databaseKey" . }}
{{- end -}}

{{- define "pagewire.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "pagewire.tlsVolume" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "pagewire.tlsSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "pagewire.tlsMount" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /var/run/secrets/pagewire/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level scheduling shared by the service Deployments. */}}
{{- define "pagewire.scheduling" -}}
{{- $root := .root -}}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - topologyKey: {{ . }}
    maxSkew: {{ $root.Values.topologySpread.maxSkew | int }}
    whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "pagewire.selectorLabels" (dict "root" $root "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Pod annotations: checksums of chart-made Secrets (so a changed value rolls the pods) and scrape hints. */}}
{{- define "pagewire.podAnnotations" -}}
{{- $root := .root -}}
checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics
prometheus.io/port: {{ .metricsPort | quote }}
{{- end }}
{{- with $root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* terminationGracePeriodSeconds must outlast preStop + drain + grace. */}}
{{- define "pagewire.checkGrace" -}}
{{- $values := index .root.Values .component -}}
{{- $needed := addf ($values.preStopSleepSeconds | float64) .shutdown -}}
{{- if le ($values.terminationGracePeriodSeconds | float64) $needed -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must be longer than preStopSleepSeconds + shutdown (%v s)" .component $values.terminationGracePeriodSeconds $needed) -}}
{{- end -}}
{{- end -}}

{{/* Values that cannot be expressed in values.schema.json. */}}
{{- define "pagewire.validate" -}}
{{- $v := .Values -}}
{{- if not $v.redis.enabled -}}
{{- if or (gt ($v.router.replicaCount | int) 1) $v.router.autoscaling.enabled -}}
{{- fail "redis.enabled=false gives the router an in-process lock, correct for ONE replica only: set router.replicaCount=1 and router.autoscaling.enabled=false, or enable Redis" -}}
{{- end -}}
{{- end -}}
{{- $gw := $v.gateway.secret -}}
{{- if and (not $gw.existingSecret) (or $gw.appSecret $gw.verifyToken $gw.instagramAppSecret) (not (and $gw.appSecret $gw.verifyToken)) -}}
{{- fail "gateway.secret: inline secrets need both appSecret and verifyToken" -}}
{{- end -}}
{{- include "pagewire.validateTls" . -}}
{{- include "pagewire.validateAuth" . -}}
{{- end -}}

{{/* mTLS on, or off only when asked for in so many words; each certificate from one source. */}}
{{- define "pagewire.validateTls" -}}
{{- $v := .Values -}}
{{- if not $v.tls.enabled -}}
{{- if not $v.unsafeInsecureGrpc -}}
{{- fail "tls.enabled=false turns mutual TLS off: gRPC between the pods would be plaintext on 0.0.0.0, unencrypted and with no caller identity, so every allow-list (auth.operators, router.readers, router.senders, subscriptions.readers) would let anyone the NetworkPolicies admit call everything. Refused unless unsafeInsecureGrpc=true is set as well (debugging only)" -}}
{{- end -}}
{{- else -}}
{{- $issuer := $v.tls.certManager.issuerRef.name -}}
{{- $services := list "gateway" "router" "tokens" "subscriptions" -}}
{{- range $name, $svc := $v.tls.services -}}
{{- if and (not $svc.existingSecret) (or $svc.cert $svc.key) (not (and $svc.cert $svc.key $v.tls.ca)) -}}
{{- fail (printf "tls.services.%s: an inline certificate needs cert, key and tls.ca" $name) -}}
{{- end -}}
{{- if and (not $svc.existingSecret) $svc.cert $issuer -}}
{{- fail (printf "tls.services.%s: an inline certificate and tls.certManager.issuerRef.name both set; choose one" $name) -}}
{{- end -}}
{{- end -}}
{{- range $name, $client := $v.tls.clients -}}
{{- $client = default dict $client -}}
{{- if has $name $services -}}
{{- fail (printf "tls.clients.%s: %s is a service of this chart; its certificate is tls.services.%s" $name $name $name) -}}
{{- end -}}
{{- if and (not $client.existingSecret) (or $client.cert $client.key) (not (and $client.cert $client.key $v.tls.ca)) -}}
{{- fail (printf "tls.clients.%s: an inline certificate needs cert, key and tls.ca" $name) -}}
{{- end -}}
{{- if and (not $client.existingSecret) $client.cert $issuer -}}
{{- fail (printf "tls.clients.%s: an inline certificate and tls.certManager.issuerRef.name both set; choose one" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The internet-facing gateway may call router.Ingest and nothing else: never in a group. */}}
{{- define "pagewire.validateAuth" -}}
{{- $v := .Values -}}
{{- $groups := dict "auth.operators" $v.auth.operators "router.readers" $v.router.readers "router.senders" $v.router.senders "subscriptions.readers" $v.subscriptions.readers -}}
{{- range $key, $members := $groups -}}
{{- if has "gateway" $members -}}
{{- fail (printf "%s: the gateway faces the internet and may call router.Ingest only; it cannot be in %s" $key $key) -}}
{{- end -}}
{{- end -}}
{{- range $key, $access := dict "router.accountAccess" $v.router.accountAccess "subscriptions.accountAccess" $v.subscriptions.accountAccess -}}
{{- if hasKey $access "gateway" -}}
{{- fail (printf "%s: the gateway may call router.Ingest only; it has no accounts to see" $key) -}}
{{- end -}}
{{- end -}}
{{- with $v.subscriptions.accountAccess.router -}}
{{- if not (has "*" .) -}}
{{- fail "subscriptions.accountAccess.router: the router looks up the page of every event it routes; leave it out (router=* is built in)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The Deployment, Services, ServiceAccount, PodDisruptionBudget and
HorizontalPodAutoscaler of one service. Each service's own templates call these
with (dict "root" $ "component" "<name>" ...) and add what is theirs: its
environment, its Secret volumes, its NetworkPolicy.
*/}}

{{/* Deployment; extra keys: "env" (YAML list), "volumes", "mounts" (YAML lists, may be ""). */}}
{{- define "pagewire.deployment" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $values := index $root.Values $c -}}
{{- $http := eq $c "gateway" -}}
{{- $metricsPort := ternary $values.port $values.metricsPort $http | int -}}
{{- $probePort := $values.port | int -}}
{{- if and (not $http) $values.healthPort -}}
{{- $probePort = $values.healthPort | int -}}
{{- end -}}
{{- if and (not $http) $root.Values.tls.enabled (not $values.healthPort) -}}
{{- fail (printf "%s.healthPort is required with tls.enabled: the kubelet's gRPC probes cannot present a client certificate" $c) -}}
{{- end -}}
{{- include "pagewire.checkGrace" (dict "root" $root "component" $c "shutdown" (ternary 10.0 (addf $root.Values.shutdown.drainSeconds $root.Values.shutdown.graceSeconds) $http)) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  {{- if not (and $values.autoscaling $values.autoscaling.enabled) }}
  replicas: {{ $values.replicaCount | int }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  selector:
    matchLabels:
      {{- include "pagewire.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "pagewire.labels" . | nindent 8 }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "pagewire.podAnnotations" (dict "root" $root "metricsPort" $metricsPort) | nindent 8 }}
    spec:
      serviceAccountName: {{ include "pagewire.componentName" . }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds | int }}
      securityContext:
        {{- include "pagewire.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with include "pagewire.scheduling" . | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ $c }}
          image: {{ include "pagewire.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "services.{{ $c }}"]
          ports:
            {{- if $http }}
            - name: http
              containerPort: {{ $values.port | int }}
              protocol: TCP
            {{- else }}
            - name: grpc
              containerPort: {{ $values.port | int }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $values.metricsPort | int }}
              protocol: TCP
            {{- if $values.healthPort }}
            - name: health
              containerPort: {{ $values.healthPort | int }}
              protocol: TCP
            {{- end }}
            {{- end }}
          env:
            {{- .env | nindent 12 }}
            {{- include "pagewire.commonEnv" . | nindent 12 }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- $p := $root.Values.probes }}
          startupProbe:
            {{- if $http }}
            httpGet:
              path: /healthz
              port: http
            {{- else }}
            grpc:
              port: {{ $probePort }}
            {{- end }}
            periodSeconds: {{ $p.startup.periodSeconds | int }}
            failureThreshold: {{ $p.startup.failureThreshold | int }}
            timeoutSeconds: 2
          readinessProbe:
            {{- if $http }}
            httpGet:
              path: /readyz
              port: http
            {{- else }}
            # The service's own name, NOT_SERVING while what it needs is unreachable
            # (the router: PostgreSQL, Redis), so such a pod leaves the Services meanwhile.
            grpc:
              port: {{ $probePort }}
              service: {{ include "pagewire.grpcServiceName" $c }}
            {{- end }}
            periodSeconds: {{ $p.readiness.periodSeconds | int }}
            timeoutSeconds: {{ $p.readiness.timeoutSeconds | int }}
            failureThreshold: {{ $p.readiness.failureThreshold | int }}
          livenessProbe:
            {{- if $http }}
            httpGet:
              path: /healthz
              port: http
            {{- else }}
            # The overall status "" (no service): SERVING while the process runs, so a
            # database outage never restarts the pod. Never the service's own name.
            grpc:
              port: {{ $probePort }}
            {{- end }}
            periodSeconds: {{ $p.liveness.periodSeconds | int }}
            timeoutSeconds: {{ $p.liveness.timeoutSeconds | int }}
            failureThreshold: {{ $p.liveness.failureThreshold | int }}
          {{- if gt ($values.preStopSleepSeconds | int) 0 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $values.preStopSleepSeconds | int }}
          {{- end }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- include "pagewire.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with include "pagewire.tlsMount" . | trim }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "pagewire.tmpVolume" $root | nindent 8 }}
        {{- with include "pagewire.tlsVolume" . | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* The Service (port named grpc or http, plus metrics) and, for gRPC, its headless twin. */}}
{{- define "pagewire.services" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $values := index $root.Values $c -}}
{{- $http := eq $c "gateway" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "pagewire.selectorLabels" . | nindent 4 }}
  ports:
    - name: {{ ternary "http" "grpc" $http }}
      port: {{ $values.port | int }}
      targetPort: {{ ternary "http" "grpc" $http }}
      protocol: TCP
      {{- if not $http }}
      appProtocol: grpc
    - name: metrics
      port: {{ $values.metricsPort | int }}
      targetPort: metrics
      protocol: TCP
      {{- end }}
{{- if not $http }}
---
# Headless: `dns:///` resolves to every ready pod, and the clients' round_robin
# spreads calls over them (a ClusterIP would pin each connection to one pod).
apiVersion: v1
kind: Service
metadata:
  name: {{ include "pagewire.componentName" . }}-headless
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  clusterIP: None
  publishNotReadyAddresses: false
  selector:
    {{- include "pagewire.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.port | int }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}
{{- end -}}

{{- define "pagewire.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
# No service talks to the Kubernetes API.
automountServiceAccountToken: false
{{- end -}}

{{- define "pagewire.pdb" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  {{- if $values.pdb.minAvailable }}
  minAvailable: {{ $values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $values.pdb.maxUnavailable | default 1 }}
  {{- end }}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "pagewire.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "pagewire.hpa" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.autoscaling.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "pagewire.componentName" . }}
  minReplicas: {{ $values.autoscaling.minReplicas | int }}
  maxReplicas: {{ $values.autoscaling.maxReplicas | int }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $values.autoscaling.targetCPUUtilizationPercentage | int }}
  behavior:
    scaleDown:
      # Webhook bursts come and go; don't drop pods the moment one ends.
      stabilizationWindowSeconds: 300
{{- end }}
{{- end -}}

{{/* A ServiceMonitor for one service's metrics (the gateway's are on its http port). */}}
{{- define "pagewire.serviceMonitor" -}}
{{- $root := .root -}}
{{- if $root.Values.metrics.serviceMonitor.enabled }}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "pagewire.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pagewire.labels" . | nindent 4 }}
    {{- with $root.Values.metrics.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "pagewire.selectorLabels" . | nindent 6 }}
  # Only the ClusterIP Service has the port; its headless twin is skipped.
  endpoints:
    - port: {{ ternary "http" "metrics" (eq .component "gateway") }}
      path: /metrics
      interval: {{ $root.Values.metrics.serviceMonitor.interval }}
{{- end }}
{{- end -}}

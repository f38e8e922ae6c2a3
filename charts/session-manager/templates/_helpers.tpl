{{/* Names, labels and the values other templates derive from other values. */}}

{{/* The prefix of object names: the release name when it says session-manager already. */}}
{{- define "sm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains "session-manager" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-session-manager" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object's metadata (never in selectors: those must not change). */}}
{{- define "sm.labels" -}}
app.kubernetes.io/part-of: session-manager
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels of pod templates: no chart or app version, so a chart upgrade alone rolls no pod
(the bundled Redis restarts only when its own spec changes). */}}
{{- define "sm.podLabels" -}}
app.kubernetes.io/part-of: session-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of a component ("api", "worker"): never change them, Deployments'
selectors are immutable. */}}
{{- define "sm.selector" -}}
app.kubernetes.io/name: session-manager
app.kubernetes.io/component: {{ . }}
{{- end -}}

{{- define "sm.sessionsNamespace" -}}{{ .Values.namespaces.sessions.name }}{{- end -}}

{{- define "sm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sm.scalerMode" -}}{{ .Values.config.KEDA_SCALER | default "push" }}{{- end -}}

{{/* Secret names and keys, created by the chart or given. */}}
{{- define "sm.apiKeysSecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "sm.fullname" .)) -}}
{{- end -}}
{{- define "sm.apiKeysKey" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecretKey }}{{ else }}keys{{ end -}}
{{- end -}}
{{- define "sm.redisSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis-credentials" (include "sm.fullname" .)) -}}
{{- end -}}
{{- define "sm.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}password{{ end -}}
{{- end -}}
{{- define "sm.redisUrlSecret" -}}
{{- .Values.redis.external.existingSecret | default (printf "%s-redis-url" (include "sm.fullname" .)) -}}
{{- end -}}
{{- define "sm.redisUrlKey" -}}
{{- if .Values.redis.external.existingSecret }}{{ .Values.redis.external.existingSecretKey }}{{ else }}url{{ end -}}
{{- end -}}
{{/* The Redis password is needed where a pod (bundled Redis, API, worker) or KEDA reads it. */}}
{{- define "sm.redisPasswordNeeded" -}}
{{- if or .Values.redis.bundled.enabled (eq (include "sm.scalerMode" .) "redis") }}true{{ end -}}
{{- end -}}
{{- define "sm.scalerServerSecret" -}}
{{- if eq .Values.scaler.tls.source "existingSecret" -}}
{{- .Values.scaler.tls.existingServerSecret -}}
{{- else -}}
{{- printf "%s-scaler-tls" (include "sm.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- define "sm.scalerClientSecret" -}}
{{- if eq .Values.scaler.tls.source "existingSecret" -}}
{{- .Values.scaler.tls.existingClientSecret -}}
{{- else -}}
{{- printf "%s-scaler-client" (include "sm.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* DNS names KEDA dials the scaler at; the serving certificate covers each. */}}
{{- define "sm.scalerHosts" -}}
{{- $svc := printf "%s-scaler.%s.svc" (include "sm.fullname" .) .Release.Namespace -}}
{{- list (printf "%s.%s" $svc .Values.clusterDomain) $svc | toJson -}}
{{- end -}}

{{/* A setting's value as the ConfigMap string: numbers without exponents (toYaml), text as is. */}}
{{- define "sm.envValue" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ toYaml . | quote }}{{ end -}}
{{- end -}}

{{/* The settings: what the chart derives from other values, then `config` (schema-checked). */}}
{{- define "sm.settings" -}}
{{- $derived := dict
  "NAMESPACE" (include "sm.sessionsNamespace" .)
  "USER_POD_IMAGE" (printf "%s:%s" .Values.userPod.image.repository .Values.userPod.image.tag)
  "POD_URL_TEMPLATE" (printf "http://{name}.{namespace}.svc.%s:80" .Values.clusterDomain)
-}}
{{- if .Values.redis.bundled.enabled -}}
{{- $host := printf "%s.%s.svc.%s" .Values.redis.bundled.name .Release.Namespace .Values.clusterDomain -}}
{{- $_ := set $derived "REDIS_HOST" $host -}}
{{- $_ := set $derived "REDIS_PORT" 6379 -}}
{{- $_ := set $derived "KEDA_REDIS_HOST" $host -}}
{{- $_ := set $derived "KEDA_REDIS_PORT" 6379 -}}
{{- end -}}
{{- if include "sm.redisPasswordNeeded" . -}}
{{- $_ := set $derived "REDIS_SECRET_NAME" (include "sm.redisSecret" .) -}}
{{- $_ := set $derived "REDIS_SECRET_KEY" (include "sm.redisSecretKey" .) -}}
{{- end -}}
{{- if eq (include "sm.scalerMode" .) "push" -}}
{{- $_ := set $derived "SCALER_ADDRESS" (printf "%s:%d" (first (include "sm.scalerHosts" . | fromJsonArray)) (int .Values.scaler.port)) -}}
{{- $_ := set $derived "SCALER_PORT" .Values.scaler.port -}}
{{- $_ := set $derived "SCALER_SECRET_NAME" (include "sm.scalerClientSecret" .) -}}
{{- end -}}
{{- $_ := set $derived "WORKER_HEALTH_PORT" .Values.scaler.healthPort -}}
{{- if or .Values.sessionTemplates.files .Values.sessionTemplates.existingConfigMap -}}
{{- $_ := set $derived "TEMPLATES_DIR" .Values.sessionTemplates.mountPath -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.config) $derived) -}}
{{- end -}}

{{/* Cross-field rules the service would refuse at start; failing here fails the install. */}}
{{- define "sm.check" -}}
{{- $c := .Values.config -}}
{{- $idle := 120 }}{{ if hasKey $c "IDLE_TIMEOUT" }}{{ $idle = int $c.IDLE_TIMEOUT }}{{ end -}}
{{- $cooldown := 30 }}{{ if hasKey $c "KEDA_COOLDOWN_PERIOD" }}{{ $cooldown = int $c.KEDA_COOLDOWN_PERIOD }}{{ end -}}
{{- $archive := 3600 }}{{ if hasKey $c "ARCHIVE_AFTER_SECONDS" }}{{ $archive = int $c.ARCHIVE_AFTER_SECONDS }}{{ end -}}
{{- if ge $cooldown $idle -}}
{{- fail "config.KEDA_COOLDOWN_PERIOD must be smaller than config.IDLE_TIMEOUT" -}}
{{- end -}}
{{- if and (gt $archive 0) (le $archive $idle) -}}
{{- fail "config.ARCHIVE_AFTER_SECONDS must be 0 (never archive) or longer than config.IDLE_TIMEOUT" -}}
{{- end -}}
{{- if and (not .Values.redis.bundled.enabled) (not (or .Values.redis.external.url .Values.redis.external.existingSecret)) -}}
{{- fail "redis.bundled.enabled is false: set redis.external.url or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.bundled.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- fail "redis.external is set while redis.bundled.enabled is true: disable the bundled Redis to use an external one" -}}
{{- end -}}
{{- if and (not .Values.redis.bundled.enabled) (eq (include "sm.scalerMode" .) "redis") (not (or .Values.redis.auth.password .Values.redis.auth.existingSecret)) -}}
{{- fail "KEDA_SCALER=redis with an external Redis: set redis.auth.password or redis.auth.existingSecret (KEDA reads that password in the sessions namespace)" -}}
{{- end -}}
{{- if and .Values.sessionTemplates.files .Values.sessionTemplates.existingConfigMap -}}
{{- fail "sessionTemplates: set files or existingConfigMap, not both" -}}
{{- end -}}
{{- if eq (include "sm.scalerMode" .) "push" -}}
{{- if and (eq .Values.scaler.tls.source "existingSecret") (not (and .Values.scaler.tls.existingServerSecret .Values.scaler.tls.existingClientSecret)) -}}
{{- fail "scaler.tls.source is existingSecret: set scaler.tls.existingServerSecret and scaler.tls.existingClientSecret" -}}
{{- end -}}
{{- if and (eq .Values.scaler.tls.source "certManager") (not .Values.scaler.tls.certManager.issuerRef.name) -}}
{{- fail "scaler.tls.source is certManager: set scaler.tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- end -}}
{{- range $component := list "api" "worker" -}}
{{- $v := index $.Values $component -}}
{{- if and $v.podDisruptionBudget.enabled (ge (int $v.podDisruptionBudget.minAvailable) (int $v.replicas)) -}}
{{- fail (printf "%s.podDisruptionBudget.minAvailable must be below %s.replicas, or node drains block" $component $component) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.api.ingress.enabled (not .Values.api.ingress.host) -}}
{{- fail "api.ingress.enabled: set api.ingress.host" -}}
{{- end -}}
{{- end -}}

{{/* Pod template annotations: a settings or template change rolls the pods on upgrade. */}}
{{- define "sm.rollAnnotations" -}}
checksum/config: {{ include "sm.settings" . | sha256sum }}
{{- if .Values.sessionTemplates.files }}
checksum/session-templates: {{ toJson .Values.sessionTemplates.files | sha256sum }}
{{- end }}
{{- end -}}

{{/* Environment of the API and worker containers beyond the ConfigMap: the secrets. */}}
{{- define "sm.secretEnv" -}}
{{- if .Values.redis.bundled.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sm.redisSecret" . }}
      key: {{ include "sm.redisSecretKey" . }}
{{- else }}
# The external Redis' URL, password included.
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sm.redisUrlSecret" . }}
      key: {{ include "sm.redisUrlKey" . }}
{{- end }}
- name: API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "sm.apiKeysSecret" . }}
      key: {{ include "sm.apiKeysKey" . }}
{{- end -}}

{{/* Session templates mounted over TEMPLATES_DIR, when the values give a set. */}}
{{- define "sm.templatesConfigMap" -}}
{{- .Values.sessionTemplates.existingConfigMap | default (printf "%s-session-templates" (include "sm.fullname" .)) -}}
{{- end -}}
{{- define "sm.templatesMount" -}}
{{- if or .Values.sessionTemplates.files .Values.sessionTemplates.existingConfigMap }}
- name: session-templates
  mountPath: {{ .Values.sessionTemplates.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
{{- define "sm.templatesVolume" -}}
{{- if or .Values.sessionTemplates.files .Values.sessionTemplates.existingConfigMap }}
- name: session-templates
  configMap:
    name: {{ include "sm.templatesConfigMap" . }}
{{- end }}
{{- end -}}

{{/* Pod-level scheduling and pull settings of a component (.Values.api / .Values.worker). */}}
{{- define "sm.podPlacement" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := index $ctx.Values $component -}}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "sm.selector" $component | nindent 14 }}
{{- end -}}

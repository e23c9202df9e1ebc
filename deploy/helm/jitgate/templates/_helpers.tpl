{{/*
Expand the name of the chart.
*/}}
{{- define "jitgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A default fully qualified app name, truncated at 63 characters (DNS names).
*/}}
{{- define "jitgate.fullname" -}}
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

{{/*
The name of one of the release's objects: the full name, shortened so that
"<name>-<suffix>" stays within max (default 63) characters.
Include with (dict "root" $ "suffix" "worker-metrics" ["max" 52]).
*/}}
{{- define "jitgate.componentName" -}}
{{- $max := int (default 63 (get . "max")) }}
{{- $base := include "jitgate.fullname" .root | trunc (int (sub $max (add1 (len .suffix)))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .suffix }}
{{- end }}

{{- define "jitgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "jitgate.labels" -}}
helm.sh/chart: {{ include "jitgate.chart" . }}
{{ include "jitgate.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jitgate
{{- end }}

{{- define "jitgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jitgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component: include with (dict "root" $ "component" "web").
*/}}
{{- define "jitgate.componentLabels" -}}
{{ include "jitgate.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jitgate.componentSelectorLabels" -}}
{{ include "jitgate.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "jitgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jitgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jitgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "jitgate.secretName" -}}
{{- default (include "jitgate.componentName" (dict "root" . "suffix" "env")) .Values.existingSecret }}
{{- end }}

{{- define "jitgate.policiesConfigMap" -}}
{{- if .Values.policies.existingConfigMap }}
{{- .Values.policies.existingConfigMap }}
{{- else if .Values.policies.files }}
{{- include "jitgate.componentName" (dict "root" . "suffix" "policies") }}
{{- end }}
{{- end }}

{{/*
The settings jitgate reads from a *_FILE twin (worker/settings.py SECRET_FIELDS).
*/}}
{{- define "jitgate.fileSecretNames" -}}
JITGATE_JIRA_TOKEN JITGATE_JIRA_WEBHOOK_SECRET JITGATE_JIRA_WEBHOOK_SECRET_PREVIOUS JITGATE_SERVICENOW_PASSWORD JITGATE_SERVICENOW_WEBHOOK_SECRET JITGATE_SERVICENOW_WEBHOOK_SECRET_PREVIOUS JITGATE_SERVICENOW_WEBHOOK_PASSWORD JITGATE_NOTIFY_WEBHOOK_URL
{{- end }}

{{/*
Refuse values that cannot work, at render time rather than in a crash-looping pod.
*/}}
{{- define "jitgate.validate" -}}
{{- $c := .Values.config }}
{{- if not (and (lt (int $c.taskSoftTimeLimit) (int $c.taskTimeLimit)) (lt (int $c.taskTimeLimit) (int $c.visibilityTimeout))) }}
{{- fail "config: need taskSoftTimeLimit < taskTimeLimit < visibilityTimeout" }}
{{- end }}
{{- if le (int .Values.worker.terminationGracePeriodSeconds) (int $c.taskTimeLimit) }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed config.taskTimeLimit (%d): Kubernetes would SIGKILL running grants and revocations" (int .Values.worker.terminationGracePeriodSeconds) (int $c.taskTimeLimit)) }}
{{- end }}
{{- if not (has .Values.beat.mode (list "deployment" "cronjob")) }}
{{- fail (printf "beat.mode must be deployment or cronjob, not %q" .Values.beat.mode) }}
{{- end }}
{{- $allowed := splitList " " (include "jitgate.fileSecretNames" .) }}
{{- range $name, $key := .Values.secretFiles.files }}
{{- if not (has $name $allowed) }}
{{- fail (printf "secretFiles.files: %s has no _FILE twin in jitgate (one of: %s)" $name (join ", " $allowed)) }}
{{- end }}
{{- end }}
{{- if and .Values.policies.files .Values.policies.existingConfigMap }}
{{- fail "policies: set files or existingConfigMap, not both" }}
{{- end }}
{{- end }}

{{/*
Environment of every jitgate container.
*/}}
{{- define "jitgate.env" -}}
{{- $c := .Values.config -}}
- name: JITGATE_HTTP_HOST
  value: "0.0.0.0"
- name: JITGATE_HTTP_PORT
  value: {{ $c.httpPort | quote }}
- name: JITGATE_DATA_DIR
  value: /var/lib/jitgate
- name: JITGATE_METRICS_DIR
  value: {{ $c.metricsDir | quote }}
- name: JITGATE_LOG_FORMAT
  value: {{ $c.logFormat | quote }}
- name: JITGATE_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: JITGATE_TASK_SOFT_TIME_LIMIT
  value: {{ $c.taskSoftTimeLimit | quote }}
- name: JITGATE_TASK_TIME_LIMIT
  value: {{ $c.taskTimeLimit | quote }}
- name: JITGATE_VISIBILITY_TIMEOUT
  value: {{ $c.visibilityTimeout | quote }}
- name: JITGATE_WORKER_CONCURRENCY
  value: {{ $c.workerConcurrency | quote }}
- name: JITGATE_SWEEP_INTERVAL
  value: {{ $c.sweepInterval | quote }}
- name: JITGATE_POLL_INTERVAL
  value: {{ $c.pollInterval | quote }}
- name: JITGATE_DRIFT_INTERVAL
  value: {{ $c.driftInterval | quote }}
{{- if include "jitgate.policiesConfigMap" . }}
- name: JITGATE_POLICY_PATH
  value: {{ .Values.policies.mountPath | quote }}
{{- end }}
{{- range $name, $key := .Values.secretFiles.files }}
- name: {{ printf "%s_FILE" $name }}
  value: {{ printf "%s/%s" $.Values.secretFiles.mountPath $key | quote }}
{{- end }}
{{- range $name, $value := $c.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "jitgate.envFrom" -}}
- secretRef:
    name: {{ include "jitgate.secretName" . }}
{{- end }}

{{/*
Writable places under a read-only root filesystem: /tmp, the data folder (heartbeat,
beat schedule) and the metrics folder; plus the policies and secret files.
*/}}
{{- define "jitgate.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/jitgate
- name: metrics
  mountPath: {{ .Values.config.metricsDir }}
{{- if include "jitgate.policiesConfigMap" . }}
- name: policies
  mountPath: {{ .Values.policies.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.secretFiles.files }}
- name: secret-files
  mountPath: {{ .Values.secretFiles.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "jitgate.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
- name: data
  emptyDir:
    sizeLimit: 64Mi
- name: metrics
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- with include "jitgate.policiesConfigMap" . }}
- name: policies
  configMap:
    name: {{ . }}
{{- end }}
{{- if .Values.secretFiles.files }}
- name: secret-files
  secret:
    secretName: {{ default (include "jitgate.secretName" .) .Values.secretFiles.secretName }}
    defaultMode: 0440
    items:
      {{- range $name, $key := .Values.secretFiles.files }}
      - key: {{ $key }}
        path: {{ $key }}
      {{- end }}
{{- end }}
{{- end }}

{{/*
Pod-level settings shared by every jitgate pod.
*/}}
{{- define "jitgate.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{ end -}}
serviceAccountName: {{ include "jitgate.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "jitgate.podAnnotations" -}}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- if .Values.policies.files }}
checksum/policies: {{ toYaml .Values.policies.files | sha256sum }}
{{- end }}
{{- end }}

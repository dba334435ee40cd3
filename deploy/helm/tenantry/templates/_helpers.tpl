{{/*
Shared helpers. Every workload template loops over the five services in this order.
*/}}

{{- define "tenantry.services" -}}
tenancy identity provisioning webhooks ratelimit
{{- end -}}

{{/* The services that open the object store (tenancy: export archives). */}}
{{- define "tenantry.objectStoreServices" -}}
tenancy
{{- end -}}

{{/* The port every api listens on inside its pod (TENANTRY_HTTP_PORT). */}}
{{- define "tenantry.httpPort" -}}8000{{- end -}}

{{/* The uid/gid the images run as (deploy/docker/Dockerfile). */}}
{{- define "tenantry.uid" -}}10001{{- end -}}

{{/*
The release's base name: the release name when it already says "tenantry" (tenantry-us),
else "<release>-tenantry". At most 40 characters, so "<base>-provisioning-worker" fits
in 63.
*/}}
{{- define "tenantry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on everything the chart makes. */}}
{{- define "tenantry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenantry
tenantry/region: {{ .Values.region }}
{{- end -}}

{{/* Selector labels of one workload: (dict "root" $ "service" name "component" api|worker|...) */}}
{{- define "tenantry.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- if .service }}
tenantry/service: {{ .service }}
{{- end }}
{{- end -}}

{{/* All labels of one workload (same dict as selectorLabels). */}}
{{- define "tenantry.workloadLabels" -}}
{{ include "tenantry.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- if .service }}
tenantry/service: {{ .service }}
{{- end }}
{{- end -}}

{{/* A service's ServiceAccount name: (dict "root" $ "service" name) */}}
{{- define "tenantry.serviceAccountName" -}}
{{- printf "%s-%s" (include "tenantry.fullname" .root) .service -}}
{{- end -}}

{{/* The image of a service: (dict "root" $ "service" name) */}}
{{- define "tenantry.image" -}}
{{- $image := .root.Values.image -}}
{{- $name := printf "%s%s" $image.namePrefix .service -}}
{{- if $image.registry -}}
{{- $name = printf "%s/%s" (trimSuffix "/" $image.registry) $name -}}
{{- end -}}
{{- $digest := index (default dict $image.digests) .service -}}
{{- if $digest -}}
{{- printf "%s@%s" $name $digest -}}
{{- else -}}
{{- printf "%s:%s" $name (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
deepMerge: merges .src into .dst in place (maps recursively; any other value, false and 0
included, replaces; null keeps the destination's). sprig's mergeOverwrite would ignore an
override of false or 0.
*/}}
{{- define "tenantry.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (index $dst $key)) -}}
{{- include "tenantry.deepMerge" (dict "dst" (index $dst $key) "src" $value) -}}
{{- else if not (kindIs "invalid" $value) -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The effective settings of one workload, written into .out: defaults.<role> with
services.<name>.<role> merged over it. A pdb given for the service replaces the default
one whole (maxUnavailable and minAvailable exclude each other). Checks what the schema
cannot: minReplicas <= maxReplicas, KEDA's replica cap. (dict "root" $ "service" name "role" api|worker "out" (dict))
*/}}
{{- define "tenantry.config" -}}
{{- $root := .root -}}
{{- $out := .out -}}
{{- $svc := index $root.Values.services .service -}}
{{- $override := default dict (index $svc .role) -}}
{{- $merged := deepCopy (index $root.Values.defaults .role) -}}
{{- $_ := include "tenantry.deepMerge" (dict "dst" $merged "src" (deepCopy $override)) -}}
{{- if $override.pdb -}}
{{- $_ := set $merged "pdb" $override.pdb -}}
{{- end -}}
{{- range $key, $value := $merged -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- $where := printf "services.%s.%s" .service .role -}}
{{- if gt (int $out.autoscaling.minReplicas) (int $out.autoscaling.maxReplicas) -}}
{{- fail (printf "%s.autoscaling: minReplicas (%v) is greater than maxReplicas (%v)" $where $out.autoscaling.minReplicas $out.autoscaling.maxReplicas) -}}
{{- end -}}
{{- /* the api's preStop sleeps 5 s before the process is asked to stop */ -}}
{{- $stopping := add (ceil $out.shutdownGraceSeconds) (ternary 5 0 (eq .role "api")) -}}
{{- if ge (int $stopping) (int $out.terminationGracePeriodSeconds) -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%v) must exceed shutdownGraceSeconds (%v)%s, or Kubernetes kills the process mid-shutdown" $where $out.terminationGracePeriodSeconds $out.shutdownGraceSeconds (ternary " plus the api's 5 s preStop pause" "" (eq .role "api"))) -}}
{{- end -}}
{{- if eq .role "worker" -}}
{{- $keda := $out.keda -}}
{{- $enabled := $root.Values.keda.enabled -}}
{{- if not (kindIs "invalid" $keda.enabled) -}}{{- $enabled = $keda.enabled -}}{{- end -}}
{{- $_ := set $keda "enabled" $enabled -}}
{{- $partitions := int $root.Values.kafka.partitions -}}
{{- if kindIs "invalid" $keda.maxReplicaCount -}}
{{- $_ := set $keda "maxReplicaCount" $partitions -}}
{{- else if gt (int $keda.maxReplicaCount) $partitions -}}
{{- fail (printf "%s.keda.maxReplicaCount (%v) is above kafka.partitions (%v): a consumer group has at most one active consumer per partition, and KEDA's Kafka scaler never scales past the partition count (docs/deploy.md, Scaling)" $where $keda.maxReplicaCount $partitions) -}}
{{- end -}}
{{- if gt (int $keda.minReplicaCount) (int $keda.maxReplicaCount) -}}
{{- fail (printf "%s.keda: minReplicaCount (%v) is greater than maxReplicaCount (%v)" $where $keda.minReplicaCount $keda.maxReplicaCount) -}}
{{- end -}}
{{- if kindIs "invalid" $keda.lagThreshold -}}
{{- $_ := set $keda "lagThreshold" $root.Values.keda.lagThreshold -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Variables every process of the suite sets itself; extraEnv may not name them. */}}
{{- define "tenantry.managedEnv" -}}
TENANTRY_REGION TENANTRY_REGIONS TENANTRY_DIRECTORY_REGION TENANTRY_DIRECTORY_URL TENANTRY_DIRECTORY_SECRET TENANTRY_DIRECTORY_DATABASE_URL TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL TENANTRY_LOG_LEVEL TENANTRY_KAFKA_BOOTSTRAP TENANTRY_REDIS_URL TENANTRY_REDIS_PASSWORD TENANTRY_OBJECT_STORE TENANTRY_OBJECT_STORE_DIR TENANTRY_S3_ENDPOINT TENANTRY_S3_BUCKET TENANTRY_S3_REGION TENANTRY_S3_ACCESS_KEY TENANTRY_S3_SECRET_KEY TENANTRY_DATABASE_URL TENANTRY_MIGRATION_DATABASE_URL TENANTRY_SERVICE_URLS TENANTRY_DB_POOL_SIZE TENANTRY_SHUTDOWN_GRACE_SECONDS TENANTRY_HTTP_HOST TENANTRY_HTTP_PORT TENANTRY_WORKER_HEALTH_PORT TENANTRY_MASTER_KEY TENANTRY_INTERNAL_API_SECRET TENANTRY_BOOTSTRAP_SECRET TENANTRY_SSO_CLIENT_SECRET TENANTRY_SMTP_PASSWORD TENANTRY_LEGAL_PROCESSOR_NAME TENANTRY_LEGAL_PROCESSOR_ADDRESS TENANTRY_LEGAL_NOTICE_DAYS TENANTRY_LEGAL_BREACH_NOTICE_HOURS
{{- end -}}

{{/* A service's api inside the cluster: (dict "root" $ "service" name) */}}
{{- define "tenantry.serviceUrl" -}}
{{- $root := .root -}}
{{- $host := printf "%s-%s.%s.svc.%s" (include "tenantry.fullname" $root) .service $root.Release.Namespace $root.Values.clusterDomain -}}
{{- $port := int $root.Values.service.port -}}
{{- if eq $port 80 -}}
{{- printf "http://%s" $host -}}
{{- else -}}
{{- printf "http://%s:%d" $host $port -}}
{{- end -}}
{{- end -}}

{{/* TENANTRY_SERVICE_URLS: every api's in-cluster URL. */}}
{{- define "tenantry.serviceUrls" -}}
{{- $root := . -}}
{{- $urls := list -}}
{{- range $name := splitList " " (include "tenantry.services" $root) -}}
{{- $urls = append $urls (printf "%s=%s" $name (include "tenantry.serviceUrl" (dict "root" $root "service" $name))) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/*
The deployment's regions and the directory, checked, written into .out: "regionsJson"
(TENANTRY_REGIONS; empty for a deployment of one region), "self" (this region's entry, or
an empty dict), "directoryRegion", "hosting" (this region hosts the directory) and
"directoryUrl". (dict "root" $ "out" (dict))
*/}}
{{- define "tenantry.topology" -}}
{{- $values := .root.Values -}}
{{- $out := .out -}}
{{- $ids := list -}}
{{- $entries := list -}}
{{- $byId := dict -}}
{{- $byIssuer := dict -}}
{{- range $entry := $values.regions -}}
{{- if has $entry.id $ids -}}
{{- fail (printf "regions: %q is listed twice" $entry.id) -}}
{{- end -}}
{{- $issuer := $entry.urls.identity -}}
{{- with index $byIssuer $issuer -}}
{{- fail (printf "regions %s and %s share identity's URL %s: each region's access tokens name their region by it" . $entry.id $issuer) -}}
{{- end -}}
{{- $_ := set $byIssuer $issuer $entry.id -}}
{{- $ids = append $ids $entry.id -}}
{{- $_ := set $byId $entry.id $entry -}}
{{- $entries = append $entries (dict "id" $entry.id "jurisdiction" $entry.jurisdiction "urls" $entry.urls) -}}
{{- end -}}
{{- if and $ids (not (has $values.region $ids)) -}}
{{- fail (printf "regions (%s) does not list this release's region %q: every region's values list every region, their own included" (join ", " $ids) $values.region) -}}
{{- end -}}
{{- $directory := $values.directory -}}
{{- $directoryRegion := default $values.region $directory.region -}}
{{- if and $ids (not (has $directoryRegion $ids)) -}}
{{- fail (printf "directory.region %q is not one of regions (%s): name the region that hosts the global directory" $directoryRegion (join ", " $ids)) -}}
{{- end -}}
{{- if and (not $ids) (ne $directoryRegion $values.region) -}}
{{- fail (printf "directory.region %q: regions is empty, so region %q is the deployment's only region and hosts the directory itself; list every region under regions to use another's directory" $directoryRegion $values.region) -}}
{{- end -}}
{{- $hosting := eq $directoryRegion $values.region -}}
{{- $database := default dict $directory.database -}}
{{- if and $hosting (not $database.existingSecret) -}}
{{- fail (printf "region %q hosts the global directory (directory.region), so its tenancy needs the directory's database: set directory.database.existingSecret (a Secret with the app-role URL under urlKey and the owner-role URL under migrationUrlKey)" $values.region) -}}
{{- end -}}
{{- if and (not $hosting) $database.existingSecret -}}
{{- fail (printf "directory.database.existingSecret is set, but region %q hosts the directory, not %q: only the hosting region's tenancy opens its database; leave it empty here (this region's replica pulls the change feed from directory.url)" $directoryRegion $values.region) -}}
{{- end -}}
{{- $directoryUrl := $directory.url -}}
{{- if $hosting -}}
{{- /* the directory is this region's own tenancy: reached inside the cluster */ -}}
{{- $directoryUrl = include "tenantry.serviceUrl" (dict "root" .root "service" "tenancy") -}}
{{- else if not $directoryUrl -}}
{{- $directoryUrl = (index $byId $directoryRegion).urls.tenancy -}}
{{- end -}}
{{- $_ := set $out "regionsJson" (ternary (toJson $entries) "" (gt (len $entries) 0)) -}}
{{- $_ := set $out "self" (default dict (index $byId $values.region)) -}}
{{- $_ := set $out "directoryRegion" $directoryRegion -}}
{{- $_ := set $out "hosting" $hosting -}}
{{- $_ := set $out "directoryUrl" $directoryUrl -}}
{{- end -}}

{{/*
identity's public URL: services.identity.sso.publicUrl, else this region's identity URL in
regions; both given, they must agree. (dict "root" $ "topology" (the topology's out))
*/}}
{{- define "tenantry.identityPublicUrl" -}}
{{- $sso := default dict .root.Values.services.identity.sso -}}
{{- $fromRegions := "" -}}
{{- with .topology.self.urls }}{{ $fromRegions = .identity }}{{ end -}}
{{- if and $sso.publicUrl $fromRegions (ne (trimSuffix "/" $sso.publicUrl) (trimSuffix "/" $fromRegions)) -}}
{{- fail (printf "services.identity.sso.publicUrl (%s) differs from identity's URL in regions (%s): they are the same address (the access tokens' issuer), so leave sso.publicUrl empty" $sso.publicUrl $fromRegions) -}}
{{- end -}}
{{- default $fromRegions $sso.publicUrl -}}
{{- end -}}

{{/* One env entry from a Secret: (dict "name" VAR "secret" name "key" key) */}}
{{- define "tenantry.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/*
The environment of a service's processes: (dict "root" $ "service" name "role" api|worker|migrate "config" cfg)
Settings are TENANTRY_<FIELD> (libs/platform settings.py); secrets come from existing Secrets.
*/}}
{{- define "tenantry.env" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $name := .service -}}
{{- $svc := index $values.services $name -}}
{{- $cfg := .config -}}
{{- $topology := dict }}
{{- $_ := include "tenantry.topology" (dict "root" $root "out" $topology) }}
- name: TENANTRY_REGION
  value: {{ $values.region | quote }}
- name: TENANTRY_REGIONS
  value: {{ $topology.regionsJson | quote }}
- name: TENANTRY_DIRECTORY_REGION
  value: {{ $topology.directoryRegion | quote }}
- name: TENANTRY_DIRECTORY_URL
  value: {{ $topology.directoryUrl | quote }}
- name: TENANTRY_LOG_LEVEL
  value: {{ $values.logLevel | default "INFO" | quote }}
- name: TENANTRY_KAFKA_BOOTSTRAP
  value: {{ $values.kafka.bootstrapServers | quote }}
{{- $redis := $values.redis }}
{{- $redisPassword := default dict $redis.passwordSecret }}
{{- if $redis.existingSecret }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_REDIS_URL" "secret" $redis.existingSecret "key" $redis.urlKey) }}
{{- else if $redisPassword.existingSecret }}
{{- if regexMatch "^[a-z]+://[^/]*@" $redis.url }}
{{- fail (printf "redis.url carries credentials (%s): with redis.passwordSecret the chart puts the password into it; leave them out" (regexReplaceAll "//[^/]*@" $redis.url "//***@")) }}
{{- end }}
{{- /* Kubernetes expands $(VAR) from a variable defined above it, at pod start */}}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_REDIS_PASSWORD" "secret" $redisPassword.existingSecret "key" $redisPassword.key) }}
{{- $url := splitn "://" 2 $redis.url }}
- name: TENANTRY_REDIS_URL
  value: {{ printf "%s://:$(TENANTRY_REDIS_PASSWORD)@%s" $url._0 $url._1 | quote }}
{{- else }}
- name: TENANTRY_REDIS_URL
  value: {{ $redis.url | quote }}
{{- end }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_DATABASE_URL" "secret" $svc.database.existingSecret "key" $svc.database.urlKey) }}
{{- if eq .role "migrate" }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_MIGRATION_DATABASE_URL" "secret" $svc.database.existingSecret "key" $svc.database.migrationUrlKey) }}
{{- end }}
- name: TENANTRY_SERVICE_URLS
  value: {{ include "tenantry.serviceUrls" $root | quote }}
{{- if ne .role "migrate" }}
- name: TENANTRY_DB_POOL_SIZE
  value: {{ $cfg.dbPoolSize | default 10 | quote }}
- name: TENANTRY_SHUTDOWN_GRACE_SECONDS
  value: {{ $cfg.shutdownGraceSeconds | quote }}
{{- end }}
{{- if eq .role "api" }}
- name: TENANTRY_HTTP_HOST
  value: "0.0.0.0"
- name: TENANTRY_HTTP_PORT
  value: {{ include "tenantry.httpPort" $root | quote }}
{{- end }}
{{- if eq .role "worker" }}
{{- /* /healthz and /readyz on the pod's address (the kubelet probes it there), not loopback */}}
- name: TENANTRY_HTTP_HOST
  value: "0.0.0.0"
- name: TENANTRY_WORKER_HEALTH_PORT
  value: {{ $cfg.healthPort | quote }}
{{- end }}
{{- if $svc.masterKey }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_MASTER_KEY" "secret" $svc.masterKey.existingSecret "key" $svc.masterKey.key) }}
{{- end }}
{{- if and (has $name (splitList " " (include "tenantry.objectStoreServices" $root))) (ne .role "migrate") }}
{{- $store := $values.objectStore }}
- name: TENANTRY_OBJECT_STORE
  value: "s3"
- name: TENANTRY_S3_ENDPOINT
  value: {{ $store.endpoint | quote }}
- name: TENANTRY_S3_BUCKET
  value: {{ $store.bucket | quote }}
- name: TENANTRY_S3_REGION
  value: {{ $store.region | quote }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_S3_ACCESS_KEY" "secret" $store.credentials.existingSecret "key" $store.credentials.accessKeyKey) }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_S3_SECRET_KEY" "secret" $store.credentials.existingSecret "key" $store.credentials.secretKeyKey) }}
{{- end }}
{{- if ne .role "migrate" }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_INTERNAL_API_SECRET" "secret" $values.internalApiSecret.existingSecret "key" $values.internalApiSecret.key) }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_DIRECTORY_SECRET" "secret" $values.directory.secret.existingSecret "key" $values.directory.secret.key) }}
{{- end }}
{{- if and (eq $name "tenancy") $topology.hosting }}
{{- $directoryDb := $values.directory.database }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_DIRECTORY_DATABASE_URL" "secret" $directoryDb.existingSecret "key" $directoryDb.urlKey) }}
{{- if eq .role "migrate" }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL" "secret" $directoryDb.existingSecret "key" $directoryDb.migrationUrlKey) }}
{{- end }}
{{- end }}
{{- if eq $name "identity" }}
{{- if and $svc.bootstrapSecret $svc.bootstrapSecret.existingSecret }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_BOOTSTRAP_SECRET" "secret" $svc.bootstrapSecret.existingSecret "key" $svc.bootstrapSecret.key) }}
{{- end }}
{{- if $svc.emailVerificationUrl }}
- name: TENANTRY_EMAIL_VERIFICATION_URL
  value: {{ $svc.emailVerificationUrl | quote }}
{{- end }}
{{- $sso := default dict $svc.sso }}
{{- /* The access tokens' issuer names the region: its identity URL in regions */}}
{{- $publicUrl := include "tenantry.identityPublicUrl" (dict "root" $root "topology" $topology) }}
{{- if $publicUrl }}
- name: TENANTRY_SSO_PUBLIC_URL
  value: {{ $publicUrl | quote }}
{{- end }}
{{- if $sso.redirectUris }}
- name: TENANTRY_SSO_REDIRECT_URIS
  value: {{ join "," $sso.redirectUris | quote }}
{{- end }}
{{- if and $sso.clientSecret $sso.clientSecret.existingSecret }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_SSO_CLIENT_SECRET" "secret" $sso.clientSecret.existingSecret "key" $sso.clientSecret.key) }}
{{- end }}
{{- $smtp := $values.smtp }}
- name: TENANTRY_SMTP_HOST
  value: {{ $smtp.host | quote }}
- name: TENANTRY_SMTP_PORT
  value: {{ $smtp.port | quote }}
- name: TENANTRY_SMTP_STARTTLS
  value: {{ $smtp.starttls | default "required" | quote }}
- name: TENANTRY_SMTP_FROM_ADDRESS
  value: {{ $smtp.fromAddress | quote }}
{{- $validate := true }}
{{- if hasKey $smtp "validateCerts" }}{{ $validate = $smtp.validateCerts }}{{ end }}
- name: TENANTRY_SMTP_VALIDATE_CERTS
  value: {{ $validate | toString | quote }}
- name: TENANTRY_SMTP_TIMEOUT
  value: {{ $smtp.timeoutSeconds | default 15 | quote }}
{{- if $smtp.username }}
- name: TENANTRY_SMTP_USERNAME
  value: {{ $smtp.username | quote }}
{{- end }}
{{- if $smtp.existingSecret }}
{{ include "tenantry.secretEnv" (dict "name" "TENANTRY_SMTP_PASSWORD" "secret" $smtp.existingSecret "key" $smtp.passwordKey) }}
{{- end }}
{{- end }}
{{- if eq $name "tenancy" }}
{{- /* What a tenant's DPA is filled in with (docs/legal): the region's `legal:` values */}}
{{- $legal := default dict $values.legal }}
{{- $processor := default dict $legal.processor }}
- name: TENANTRY_LEGAL_PROCESSOR_NAME
  value: {{ $processor.legalName | default "" | quote }}
- name: TENANTRY_LEGAL_PROCESSOR_ADDRESS
  value: {{ $processor.address | default "" | quote }}
- name: TENANTRY_LEGAL_NOTICE_DAYS
  value: {{ $legal.noticeDays | default 30 | quote }}
- name: TENANTRY_LEGAL_BREACH_NOTICE_HOURS
  value: {{ $legal.breachNoticeHours | default 48 | quote }}
{{- end }}
{{- if eq .role "api" }}
- name: TENANTRY_RATELIMIT_LOCAL_DIVISOR
  value: {{ $cfg.autoscaling.minReplicas | quote }}
{{- end }}
{{- $managed := splitList " " (include "tenantry.managedEnv" $root) }}
{{- $extra := default dict $cfg.extraEnv }}
{{- range $key := keys $extra | sortAlpha }}
{{- if has $key $managed }}
{{- fail (printf "services.%s extraEnv: %s is set by the chart from its own values; set those instead" $name $key) }}
{{- end }}
- name: {{ $key }}
  value: {{ index $extra $key | quote }}
{{- end }}
{{- end -}}

{{/* Pod-level security: non-root, RuntimeDefault seccomp. */}}
{{- define "tenantry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "tenantry.uid" . }}
runAsGroup: {{ include "tenantry.uid" . }}
fsGroup: {{ include "tenantry.uid" . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "tenantry.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ include "tenantry.uid" . }}
runAsGroup: {{ include "tenantry.uid" . }}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The only writable path: /tmp, a small emptyDir. */}}
{{- define "tenantry.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{- define "tenantry.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Spread a workload's pods over zones and nodes, softly. (same dict as selectorLabels) */}}
{{- define "tenantry.topologySpread" -}}
{{- $spread := .root.Values.topologySpread -}}
{{- if $spread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ $spread.zoneKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "tenantry.selectorLabels" . | nindent 8 }}
  - maxSkew: 1
    topologyKey: {{ $spread.nodeKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "tenantry.selectorLabels" . | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Scheduling fields of a pod spec from a workload's config. */}}
{{- define "tenantry.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* An egress rule to a destination of networkPolicy (postgres, kafka, ...): the dict itself. */}}
{{- define "tenantry.egressTo" -}}
- to:
    {{- toYaml .to | nindent 4 }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}

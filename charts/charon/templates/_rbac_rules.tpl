{{/*
The API calls the operator makes, as RBAC rules, each with why. This file is the only place
they are written: rbac.yaml renders "charon.rbac.rules" into the ClusterRole (or into a Role
in each watched namespace) and "charon.rbac.leaseRules" into a Role in the release namespace,
and tests/helm.rs reads the rendered rules back. Change them here, with the operator.
*/}}
{{- define "charon.rbac.rules" -}}
# Workflows are read through a watch (list + watch); the operator patches one only to remove
# the charon.dev/trigger and charon.dev/backfill annotations once it has acted on them.
- apiGroups: ["charon.dev"]
  resources: ["workflows"]
  verbs: ["list", "watch", "patch"]
# One WorkflowInstance per triggered partition: created by triggers and backfills, read fresh
# (get) when the cache may lag, updated when a finished one is re-opened as a new run, patched
# to halt it (a halted Backfill) or to drop charon.dev/retry-now, deleted after history.ttl.
- apiGroups: ["charon.dev"]
  resources: ["workflowinstances"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Backfills are watched, created for the charon.dev/backfill annotation, and read fresh (get)
# before a finished instance they triggered is deleted (its outcome must be on record first).
- apiGroups: ["charon.dev"]
  resources: ["backfills"]
  verbs: ["get", "list", "watch", "create"]
# A namespace's Quota limits what its instances run and queue: watched, and its status
# (usage) written whole.
- apiGroups: ["charon.dev"]
  resources: ["quotas"]
  verbs: ["list", "watch"]
# Status is a subresource, written whole (update) with the resourceVersion it was computed
# from: workflow validity and next trigger, instance state and history, backfill progress,
# quota usage.
- apiGroups: ["charon.dev"]
  resources: ["workflows/status", "backfills/status", "quotas/status"]
  verbs: ["update"]
- apiGroups: ["charon.dev"]
  resources: ["workflowinstances/status"]
  {{- if .Values.logStore.url }}
  # With a log store, an archived attempt is also marked so by a JSON patch (patch).
  verbs: ["update", "patch"]
  {{- else }}
  verbs: ["update"]
  {{- end }}
# Each execution of an instance is a Job: created per attempt, watched for its outcome, read
# fresh (get) before a missing one counts as lost, patched to suspend and resume it (charon
# suspend/resume), deleted on halt and when a later attempt supersedes it.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A pipeline whose retries resume from the failed step keeps its step outputs on one
# PersistentVolumeClaim per run: created before its first Job, deleted when the run ends.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["create", "delete"]
# The pods of those Jobs tell when the container runs, its exit code, and infrastructure
# failures (image pull errors, evictions) that the Job status does not; watched.
{{- if .Values.logStore.url }}
# With a log store, each pod is held by the charon.dev/log-archive finalizer until its log
# (pods/log get) is archived: read fresh (get) before, released by a patch after.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- else }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- end }}
# Every instance transition, and an invalid spec, is recorded as a core/v1 Event.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "charon.rbac.uiRules" -}}
# The web UI (ui.enabled) keeps its own caches: Workflows, WorkflowInstances and Backfills
# are watched by the rules above; the Events about instances are watched too.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "watch"]
# It carries out what a user asks once a SubjectAccessReview allowed it, reading the object
# fresh first (get): triggers (create or re-open instances, granted above), backfills (create,
# granted above; halt and concurrency: patch), halt, retry, suspend and resume (patch
# instances and workflows, granted above).
- apiGroups: ["charon.dev"]
  resources: ["workflows"]
  verbs: ["get"]
- apiGroups: ["charon.dev"]
  resources: ["backfills"]
  verbs: ["patch"]
# The log viewer finds an attempt's Job and pod (list; a pipeline step's container: get),
# and reads the pod's log.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}

{{- define "charon.rbac.uiClusterRules" -}}
# The web UI checks each request's bearer token (TokenReview) and whether its user may do
# what it asks (SubjectAccessReview); both are cluster-scoped.
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}

{{- define "charon.rbac.poolRules" -}}
# Pools are cluster-scoped: their slots are shared by every namespace, so only an operator
# watching every namespace uses them. Watched, and their status (slots held, queue, decayed
# usage per namespace) written by a merge patch.
- apiGroups: ["charon.dev"]
  resources: ["pools"]
  verbs: ["list", "watch"]
- apiGroups: ["charon.dev"]
  resources: ["pools/status"]
  verbs: ["patch"]
{{- end }}

{{- define "charon.rbac.leaseRules" -}}
# Leader election: replicas compete for one coordination.k8s.io Lease in the release namespace;
# the holder renews it by update, a newcomer reads it and creates it if it is missing.
{{- if gt (int .Values.sharding.shards) 1 }}
# Sharding: each replica lists the shard and member Leases (by label), takes and renews
# shard Leases by update, and deletes its member Lease when it stops.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "create", "update", "delete"]
{{- else }}
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
{{- end }}

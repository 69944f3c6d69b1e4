{{/*
The API calls the operator makes, as RBAC rules, each with why. This file is the only place
they are written: rbac.yaml renders "charon.rbac.rules" into the ClusterRole (or into a Role
in each watched namespace) and "charon.rbac.leaseRules" into a Role in the release namespace,
and tests/helm.rs reads the rendered rules back. Change them here, with the operator.
*/}}
{{- define "charon.rbac.rules" -}}
# Workflows, instances and backfills are what the operator reconciles: it lists and watches
# them, and patches or updates them: it removes the charon.dev/trigger, charon.dev/backfill and
# charon.dev/retry-now annotations once handled, and a halted Backfill halts its instances.
- apiGroups: ["charon.dev"]
  resources: ["workflows", "workflowinstances", "backfills"]
  verbs: ["get", "list", "watch", "patch", "update"]
# It creates one WorkflowInstance per triggered partition and a Backfill per charon.dev/backfill
# annotation; it deletes finished instances after spec.history.ttl, and Backfills it created.
- apiGroups: ["charon.dev"]
  resources: ["workflowinstances", "backfills"]
  verbs: ["create", "delete"]
# Status is a subresource: instance states and history, workflow validity and next trigger,
# backfill progress are all written there.
- apiGroups: ["charon.dev"]
  resources: ["workflows/status", "workflowinstances/status", "backfills/status"]
  verbs: ["get", "patch", "update"]
# Each execution of an instance is a Job: created per attempt, watched for its outcome, and
# deleted on halt and when a later attempt supersedes it.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The pods of those Jobs tell when the container runs, its exit code, and infrastructure
# failures (image pull errors, evictions) that the Job status does not; read-only.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# The container log of an execution, read (never written) for the run's record.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Every state transition, and an invalid spec, is recorded as an Event on the object; events
# go through the core or the events.k8s.io API, and patch counts a repeated Event.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{- define "charon.rbac.leaseRules" -}}
# Leader election: replicas compete for one coordination.k8s.io Lease in the release namespace;
# the holder renews it by update, a newcomer reads it and creates it if it is missing.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}

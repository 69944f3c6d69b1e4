//! An embedded, in-memory Kubernetes-compatible API server.

// Package deploy holds Loom's Kubernetes manifests, as kustomize
// directories: deploy/ (a 3-node NATS cluster with JetStream, the RBAC of
// the kubernetes discovery backend, one Loom service, the
// PodDisruptionBudgets of NATS and the service) and deploy/etcd/ (an
// optional etcd cluster and its PodDisruptionBudget). The package has no
// code; its tests check the manifests against Loom's configuration, the
// restricted Pod Security Standard and the workloads' quorums and, with
// -tags kube, dry-run them on a real kube-apiserver with kubectl.
package deploy

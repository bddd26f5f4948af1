//go:build tools

// Package tools pins the Kubernetes test control plane programs that
// scripts/k8s-testenv builds into a cache dir outside the repo. Nothing of
// ours imports it; the build tag keeps it out of every normal build.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"                     // etcd (binary must be renamed: go build -o etcd)
	_ "helm.sh/helm/v3/cmd/helm"                      // helm
	_ "k8s.io/kubernetes/cmd/kube-apiserver"          // kube-apiserver
	_ "k8s.io/kubernetes/cmd/kube-controller-manager" // optional: Jobs, GC, namespaces, default SAs
	_ "k8s.io/kubernetes/cmd/kube-scheduler"          // kube-scheduler
	_ "k8s.io/kubernetes/cmd/kubectl"                 // kubectl
)

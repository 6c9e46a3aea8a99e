//go:build tools

// Keeps the node's main packages in the module graph so `go mod tidy` records
// everything `go build` of them needs.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

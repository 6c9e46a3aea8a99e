//go:build tools

// Keeps kube-apiserver's main package in the module graph so `go mod tidy`
// records everything `go build k8s.io/kubernetes/cmd/kube-apiserver` needs.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"

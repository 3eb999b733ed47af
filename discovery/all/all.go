// Package all links every discovery backend Loom ships (memory, etcd, NATS
// KV, Kubernetes), so that a program can choose any of them with discovery.backend:
//
//	import _ "github.com/loomrt/loom/discovery/all"
//
// A program that needs only one imports that backend's package instead and
// leaves the others' dependencies out of its binary (etcd's client alone
// brings gRPC and protobuf).
package all

import (
	_ "github.com/loomrt/loom/discovery/etcd"   // registers "etcd"
	_ "github.com/loomrt/loom/discovery/kube"   // registers "kubernetes"
	_ "github.com/loomrt/loom/discovery/memory" // registers "memory"
	_ "github.com/loomrt/loom/discovery/natskv" // registers "natskv"
)

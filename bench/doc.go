// Package bench holds side-by-side benchmarks of Loom's request plane
// against its peers: raw TCP (the physical floor), gRPC, yamux and NATS,
// each with its server in the benchmark's process and its client reaching
// it over loopback TCP. It is a module of its own so that the library never
// depends on the peers.
//
//	go test -run '^$' -bench . -benchtime 2s -count 3
//
// BenchmarkUnary, BenchmarkStream, BenchmarkParallel and
// BenchmarkIdleStreams are described in docs/performance.md, with the
// latest figures. `go test ./...` runs each of them for a few iterations.
package bench

package loom_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The root package must not link etcd's client (and with it gRPC and
// protobuf): programs opt into heavy discovery backends by importing them.
func TestRootPackageLinksNoEtcd(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/loomrt/loom").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "go.etcd.io/") || strings.HasPrefix(dep, "google.golang.org/grpc") {
			t.Errorf("the root package depends on %s; import heavy backends from programs, not from package loom", dep)
		}
	}
}

// docs/observability.md: the root package links OpenTelemetry's API and
// nothing more of it; the SDK and the OTLP exporters, with the gRPC they
// bring, are linked only by programs that import otelsetup.
func TestOnlyOtelsetupLinksTheOpenTelemetrySDKAndExporters(t *testing.T) {
	deps := func(pkg string) []string {
		t.Helper()
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		return strings.Fields(string(out))
	}
	heavy := func(dep string) bool {
		return strings.HasPrefix(dep, "go.opentelemetry.io/otel/sdk") || strings.HasPrefix(dep, "go.opentelemetry.io/otel/exporters/")
	}
	api := false
	root := deps("github.com/loomrt/loom")
	for _, dep := range root {
		if heavy(dep) {
			t.Errorf("the root package depends on %s; OpenTelemetry's SDK and exporters belong in otelsetup", dep)
		}
		api = api || dep == "go.opentelemetry.io/otel/trace"
	}
	if !api {
		t.Error("the root package does not link OpenTelemetry's trace API; docs/observability.md says it does")
	}
	var sdk, exporter, grpc bool
	more := 0
	for _, dep := range deps("github.com/loomrt/loom/otelsetup") {
		sdk = sdk || dep == "go.opentelemetry.io/otel/sdk/trace"
		exporter = exporter || strings.HasPrefix(dep, "go.opentelemetry.io/otel/exporters/otlp/")
		grpc = grpc || dep == "google.golang.org/grpc"
		if !slices.Contains(root, dep) {
			more++
		}
	}
	if more < 100 {
		t.Errorf("otelsetup links %d packages the root package does not; docs/observability.md says over a hundred", more)
	}
	if !sdk || !exporter || !grpc {
		t.Errorf("otelsetup links the SDK %v, an OTLP exporter %v, gRPC %v; docs/observability.md says all three", sdk, exporter, grpc)
	}
}

// docs/observability.md: the loom command, which links gRPC and the SDK
// already (through etcd), gains only otelsetup and its OTLP exporter by
// importing otelsetup.
func TestTheLoomCommandGainsOnlyTheOTLPExporterFromOtelsetup(t *testing.T) {
	golist := func(args ...string) []string {
		t.Helper()
		out, err := exec.Command("go", append([]string{"list"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.Fields(string(out))
	}
	const cmd, otelsetup = "github.com/loomrt/loom/cmd/loom", "github.com/loomrt/loom/otelsetup"
	imports := golist("-f", `{{join .Imports " "}}`, cmd)
	if !slices.Contains(imports, otelsetup) {
		t.Fatalf("%s does not import %s; the test needs updating", cmd, otelsetup)
	}
	without := golist(append([]string{"-deps"}, slices.DeleteFunc(imports, func(p string) bool { return p == otelsetup })...)...)
	for _, dep := range golist("-deps", cmd) {
		if dep == cmd || dep == otelsetup || slices.Contains(without, dep) {
			continue
		}
		if !strings.HasPrefix(dep, "go.opentelemetry.io/otel/exporters/otlp/") {
			t.Errorf("importing otelsetup brings %s into the loom command; docs/observability.md says only the OTLP exporter", dep)
		}
	}
}

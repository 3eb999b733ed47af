package otelsetup_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/loomrt/loom/otelsetup"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The steps share OpenTelemetry's global provider, which cannot be reset:
// they run in order, in a fresh process of this test binary each time.
func TestSetupFollowsTheEnvironmentAndKeepsAProgramsOwnProvider(t *testing.T) {
	if !inFreshProcess(t, "1") {
		return
	}
	global := func() string { return strings.TrimPrefix(fmt.Sprintf("%T", otel.GetTracerProvider()), "*") }

	t.Run("without an endpoint nothing is installed", func(t *testing.T) {
		stop, err := otelsetup.Setup(context.Background())
		if err != nil || stop(context.Background()) != nil {
			t.Fatal(err)
		}
		if g := global(); g != "global.tracerProvider" {
			t.Fatalf("the global provider is a %s", g)
		}
	})

	t.Run("an unknown protocol is an error naming it", func(t *testing.T) {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
		_, err := otelsetup.Setup(context.Background())
		if !errors.Is(err, otelsetup.ErrConfig) || !strings.Contains(err.Error(), "http/json") {
			t.Fatalf("err %v", err)
		}
	})

	t.Run("OTEL_SDK_DISABLED wins over an endpoint", func(t *testing.T) {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		t.Setenv("OTEL_SDK_DISABLED", "true")
		if _, err := otelsetup.Setup(context.Background()); err != nil || global() != "global.tracerProvider" {
			t.Fatalf("err %v, global %s", err, global())
		}
	})

	t.Run("OTEL_TRACES_EXPORTER none wins over an endpoint", func(t *testing.T) {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		t.Setenv("OTEL_TRACES_EXPORTER", "none")
		if _, err := otelsetup.Setup(context.Background()); err != nil || global() != "global.tracerProvider" {
			t.Fatalf("err %v, global %s", err, global())
		}
	})

	t.Run("with an endpoint spans are exported over OTLP/HTTP and flushed by shutdown", func(t *testing.T) {
		var mu sync.Mutex
		var bodies []string
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies = append(bodies, r.URL.Path+" "+string(b))
			mu.Unlock()
			w.Header().Set("Content-Type", "application/x-protobuf")
		}), ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
		t.Setenv("OTEL_SERVICE_NAME", "setup-test")
		stop, err := otelsetup.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if g := global(); g != "trace.TracerProvider" {
			t.Fatalf("the global provider is a %s, want the SDK's", g)
		}
		again, err := otelsetup.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_, span := otel.Tracer("test").Start(context.Background(), "exported-span")
		span.End()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := again(ctx); err != nil { // the second Setup hands back the same shutdown
			t.Fatal(err)
		}
		_ = stop(ctx)
		mu.Lock()
		defer mu.Unlock()
		if len(bodies) == 0 || !strings.HasPrefix(bodies[0], "/v1/traces ") || !strings.Contains(bodies[0], "exported-span") || !strings.Contains(bodies[0], "setup-test") {
			t.Fatalf("the receiver got %q", bodies)
		}
	})

	t.Run("a program's own provider is kept", func(t *testing.T) {
		own := sdktrace.NewTracerProvider()
		defer own.Shutdown(context.Background())
		otel.SetTracerProvider(own)
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		if _, err := otelsetup.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		if otel.GetTracerProvider() != own {
			t.Fatal("Setup replaced the program's own TracerProvider")
		}
	})
}

// OTEL_TRACES_EXPORTER is a comma-separated list, as the OpenTelemetry
// specification allows: otlp anywhere in it asks for OTLP export (without
// an endpoint, to the exporters' default), none alone turns export off,
// and a value Setup does not know, or none with another, is an error
// naming the variable and the values accepted, with nothing installed.
// In a fresh process, as the steps above.
func TestOTELTracesExporterIsAList(t *testing.T) {
	if !inFreshProcess(t, "list") {
		return
	}
	global := func() string { return strings.TrimPrefix(fmt.Sprintf("%T", otel.GetTracerProvider()), "*") }

	for _, bad := range []struct{ value, named string }{
		{"zipkin", "zipkin"},
		{"otlp,console", "console"},
		{"otlp, jaeger", "jaeger"},
		{"none,otlp", "none"},
	} {
		t.Run(bad.value+" is an error", func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
			t.Setenv("OTEL_TRACES_EXPORTER", bad.value)
			_, err := otelsetup.Setup(context.Background())
			if !errors.Is(err, otelsetup.ErrConfig) {
				t.Fatalf("err %v, want an ErrConfig", err)
			}
			for _, s := range []string{"OTEL_TRACES_EXPORTER", bad.named, "otlp", "none"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("the error %q does not name %q", err, s)
				}
			}
			if g := global(); g != "global.tracerProvider" {
				t.Fatalf("the global provider is a %s after an error", g)
			}
		})
	}

	t.Run("none in a list wins over an endpoint", func(t *testing.T) {
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
		t.Setenv("OTEL_TRACES_EXPORTER", " none, ")
		if _, err := otelsetup.Setup(context.Background()); err != nil || global() != "global.tracerProvider" {
			t.Fatalf("err %v, global %s", err, global())
		}
	})

	t.Run("otlp in a list installs the SDK without an endpoint", func(t *testing.T) {
		t.Setenv("OTEL_TRACES_EXPORTER", "OTLP , otlp")
		stop, err := otelsetup.Setup(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer stop(context.Background())
		if g := global(); g != "trace.TracerProvider" {
			t.Fatalf("the global provider is a %s, want the SDK's", g)
		}
	})
}

// inFreshProcess runs the calling test again in a fresh process of this
// test binary, with OTELSETUP_STEPS=step, and reports false: the caller
// returns. In that fresh process it reports true, with every OTEL_*
// variable Setup reads cleared: the caller runs its steps.
func inFreshProcess(t *testing.T, step string) bool {
	t.Helper()
	if os.Getenv("OTELSETUP_STEPS") != step {
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "OTELSETUP_STEPS="+step)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
			t.Fatalf("the steps in a fresh process: %v\n%s", err, out)
		}
		return false
	}
	for _, v := range []string{"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		t.Setenv(v, "")
	}
	return true
}

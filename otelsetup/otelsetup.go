// Package otelsetup installs the OpenTelemetry SDK from the standard
// OTEL_* environment variables, so that a Loom program exports its traces
// without code:
//
//	import _ "github.com/loomrt/loom/otelsetup" // loom.Run sets up tracing from OTEL_*
//
// With the import, loom.Run calls Setup before the program starts and
// flushes the spans at shutdown; the loom command does the same. A
// program that does not use loom.Run calls Setup itself and the returned
// shutdown function before it exits.
//
// It is a package of its own because the exporters (OTLP over gRPC and
// HTTP) link gRPC and the SDK into the program: the root package depends
// on the OpenTelemetry API only, which costs nothing until an SDK is
// installed.
//
// The variables read: OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER (a
// comma-separated list: otlp, or none alone; any other exporter is an
// error wrapping ErrConfig), OTEL_EXPORTER_OTLP_ENDPOINT and
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL and
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL (grpc or http/protobuf, the
// default), OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _INSECURE and the rest
// of the exporters' own, OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
// OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_*. Nothing is
// set up when no endpoint is set (and OTEL_TRACES_EXPORTER does not list
// otlp), and a TracerProvider the program installed itself is kept.
package otelsetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/loomrt/loom"
)

func init() { loom.RegisterTracingSetup(Setup) }

// own is the provider Setup installed.
var own atomic.Pointer[sdktrace.TracerProvider]

// Protocols of OTEL_EXPORTER_OTLP_PROTOCOL that Setup supports.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// ErrConfig wraps every error about the OTEL_* variables' values.
var ErrConfig = errors.New("otelsetup: bad OpenTelemetry configuration")

// Setup installs a TracerProvider exporting over OTLP, as the OTEL_*
// variables describe, as the global one, with the W3C trace context and
// baggage propagators. It returns the function that flushes and stops it
// (call it at exit). It installs nothing, and returns a shutdown that does
// nothing, when the variables do not ask for an exporter or the program
// has installed a TracerProvider of its own.
func Setup(ctx context.Context) (shutdown func(context.Context) error, err error) {
	nothing := func(context.Context) error { return nil }
	if ok, err := wanted(); !ok || err != nil {
		return nothing, err
	}
	if mine := own.Load(); mine != nil && otel.GetTracerProvider() == trace.TracerProvider(mine) {
		return mine.Shutdown, nil // set up already (the loom command, then loom.Run)
	}
	if installed() {
		return nothing, nil
	}
	proto := env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	var exp sdktrace.SpanExporter
	switch proto {
	case ProtocolHTTP, "":
		exp, err = otlptracehttp.New(ctx)
	case ProtocolGRPC:
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nothing, fmt.Errorf("%w: OTEL_EXPORTER_OTLP_PROTOCOL %q: use %s or %s", ErrConfig, proto, ProtocolHTTP, ProtocolGRPC)
	}
	if err != nil {
		return nothing, fmt.Errorf("otelsetup: OTLP exporter (%s): %w", cmpOr(proto, ProtocolHTTP), err)
	}
	res, err := resource.Merge(resource.Default(), resource.Environment())
	if err != nil {
		// A schema conflict leaves a usable resource; keep it.
		res = resource.Environment()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	own.Store(tp)
	otel.SetTextMapPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}))
	return tp.Shutdown, nil
}

// Values of OTEL_TRACES_EXPORTER that Setup knows.
const (
	ExporterOTLP = "otlp"
	ExporterNone = "none"
)

// wanted reports whether the variables ask for traces to be exported.
// OTEL_TRACES_EXPORTER is a comma-separated list, as the specification
// allows: otlp in it asks for OTLP export, none alone turns export off;
// unset (or empty), the endpoint variables decide.
func wanted() (bool, error) {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false, nil
	}
	list := os.Getenv("OTEL_TRACES_EXPORTER")
	var otlp, none bool
	for v := range strings.SplitSeq(list, ",") {
		switch v = strings.ToLower(strings.TrimSpace(v)); v {
		case "":
		case ExporterOTLP:
			otlp = true
		case ExporterNone:
			none = true
		default:
			return false, fmt.Errorf("%w: OTEL_TRACES_EXPORTER %q: unknown exporter %q; use %s, or %s to export nothing", ErrConfig, list, v, ExporterOTLP, ExporterNone)
		}
	}
	switch {
	case none && otlp:
		return false, fmt.Errorf("%w: OTEL_TRACES_EXPORTER %q: %s cannot be listed with another exporter; use %s alone, or %s", ErrConfig, list, ExporterNone, ExporterNone, ExporterOTLP)
	case none:
		return false, nil
	case otlp:
		return true, nil
	}
	return env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") != "", nil
}

// installed reports whether the program installed a TracerProvider: the
// global one is no longer OpenTelemetry's default.
func installed() bool {
	return fmt.Sprintf("%T", otel.GetTracerProvider()) != "*global.tracerProvider"
}

func env(names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(os.Getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

package zmqhttp

import (
	"context"
	"io"
	"net/http"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// TestOpenTelemetry: otelhttp on both sides of a zmqhttp hop, unchanged,
// gives one trace spanning client and handler: the trace context travels
// in the request's headers like over TCP.
func TestOpenTelemetry(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	defer tp.Shutdown(context.Background())
	prop := propagation.TraceContext{}
	var handlerTrace trace.TraceID
	h := otelhttp.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlerTrace = trace.SpanContextFromContext(r.Context()).TraceID()
		io.WriteString(w, "traced")
	}), "server", otelhttp.WithTracerProvider(tp), otelhttp.WithPropagators(prop))
	ts := startServer(t, "tcp", h)
	zt, err := NewTransport(ts.L.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer zt.Close()
	c := &http.Client{Transport: otelhttp.NewTransport(zt, otelhttp.WithTracerProvider(tp), otelhttp.WithPropagators(prop))}
	resp, err := c.Get("http://svc/traced")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	spans := exp.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want a client span and a server span", len(spans))
	}
	var client, server tracetest.SpanStub
	for _, s := range spans {
		switch s.SpanKind {
		case trace.SpanKindClient:
			client = s
		case trace.SpanKindServer:
			server = s
		}
	}
	if !client.SpanContext.IsValid() || !server.SpanContext.IsValid() ||
		server.SpanContext.TraceID() != client.SpanContext.TraceID() ||
		server.Parent.SpanID() != client.SpanContext.SpanID() || handlerTrace != client.SpanContext.TraceID() {
		t.Errorf("client span %v, server span %v (parent %v), handler's trace %v: want one trace, the server's parent the client",
			client.SpanContext, server.SpanContext, server.Parent, handlerTrace)
	}
}

package provisioner

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// sums returns, per metric name, the total of its data points for the target.
func sums(rm metricdata.ResourceMetrics, target string) map[string]float64 {
	out := map[string]float64{}
	mine := func(s attribute.Set) bool { v, ok := s.Value("tenure.target"); return ok && v.AsString() == target }
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if mine(p.Attributes) {
						out[m.Name] += float64(p.Count)
					}
				}
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if mine(p.Attributes) {
						out[m.Name] += float64(p.Value)
					}
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					if mine(p.Attributes) {
						out[m.Name] += float64(p.Value) + 0.5 // +0.5: present even when 0
					}
				}
			}
		}
	}
	return out
}

// The host measures every call, failure and retry per target, and reports queue depth and
// dead letters.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	mem := connectortest.NewMemory("readers")
	failed := false
	mem.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapDisable && !failed {
			failed = true
			return connector.Retryable(errors.New("503"))
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "metered", Type: "memory", Conn: mem, Policy: connector.Policy{BackoffInitial: 10 * time.Millisecond}}}})
	h.hire(t, "w-met", "metered")
	h.waitVerified(t, "w-met", 1)
	h.fire(t, "w-met")
	h.waitCase(t, "w-met", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	eventually(t, "metrics", func() error {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			return err
		}
		got := sums(rm, "metered")
		for name, atLeast := range map[string]float64{
			"tenure.connector.call.duration":      5, // get, create, get, sessions, disable ×2, get
			"tenure.connector.call.failures":      1,
			"tenure.connector.operation.duration": 2, // the joiner's and the leaver's command
			"tenure.connector.operation.retries":  1,
			"tenure.provisioner.queue.depth":      0.5,
		} {
			if got[name] < atLeast {
				return fmt.Errorf("%s = %v, want at least %v (all: %v)", name, got[name], atLeast, got)
			}
		}
		return nil
	})
}

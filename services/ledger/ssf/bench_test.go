package ssf_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// BenchmarkRevocationToPush measures the transmitter alone: a revocation published to
// JetStream (fsync on every write) → consumed, SET signed and stored in PostgreSQL → pushed
// over HTTP and answered 202. One at a time, so the figures are latencies. The end-to-end
// figure, from a verified disable, is test/e2e BenchmarkRevocationSETLatency.
func BenchmarkRevocationToPush(b *testing.B) {
	e := startEnv(b, ssf.Config{}, pgtest.NewDatabase(b), natstest.Start(b), nil)
	arrived := make(chan time.Time, 1)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		w.WriteHeader(http.StatusAccepted)
		select {
		case arrived <- at:
		default:
		}
	}))
	defer sink.Close()
	if code := e.call("POST", "/ssf/streams", "siem-token", map[string]any{
		"delivery": map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": sink.URL},
	}, nil); code != http.StatusCreated {
		b.Fatalf("create stream: %d", code)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, fmt.Sprintf("w-%d", i), fmt.Sprintf("w%d@clinic.example", i), "ehr")
		select {
		case at := <-arrived:
			lat = append(lat, at.Sub(start))
		case <-time.After(30 * time.Second):
			b.Fatalf("SET %d not pushed in 30s", i)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	p := func(q int) float64 { return float64(lat[min(len(lat)-1, len(lat)*q/100)].Microseconds()) / 1000 }
	b.ReportMetric(p(50), "push-p50-ms")
	b.ReportMetric(p(99), "push-p99-ms")
}

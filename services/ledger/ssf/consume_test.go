package ssf_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	"github.com/tenure-dev/tenure/services/ledger/ssf"
)

// TestConsumerComesBack: when the transmitter's durable consumer disappears (an operator
// deleted it, a stream was restored), the transmitter recreates it and goes on.
func TestConsumerComesBack(t *testing.T) {
	ns := natstest.Start(t)
	e := startEnv(t, ssf.Config{}, pgtest.NewDatabase(t), ns, nil)
	var got atomic.Int32
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer sink.Close()
	if code := e.call("POST", "/ssf/streams", "siem-token", map[string]any{
		"delivery": map[string]string{"method": "urn:ietf:rfc:8935", "endpoint_url": sink.URL},
	}, nil); code != http.StatusCreated {
		t.Fatalf("create stream: %d", code)
	}
	e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-1", "a@clinic.example", "ehr")
	waitFor(t, "the first SET", func() bool { return got.Load() == 1 })
	if err := ns.JS.DeleteConsumer(context.Background(), natsx.EventsStream, ssf.Durable); err != nil {
		t.Fatal(err)
	}
	// Published while no consumer exists: the recreated consumer reads the stream again, sends
	// this one, and does not send the first one twice.
	e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-2", "b@clinic.example", "ehr")
	waitFor(t, "the SET published while the consumer was gone", func() bool { return got.Load() >= 2 })
	e.publish(eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, "w-3", "c@clinic.example", "ehr")
	waitFor(t, "the next SET", func() bool { return got.Load() >= 3 })
	time.Sleep(300 * time.Millisecond)
	if n := got.Load(); n != 3 {
		t.Errorf("receiver got %d SETs, want 3", n)
	}
}

// TestRunStoppedAtOnceIsClean: a shutdown that comes before the consumer exists (tenure dev
// stopped right after it started) ends Run without an error, so the process exits 0.
func TestRunStoppedAtOnceIsClean(t *testing.T) {
	ns := natstest.Start(t)
	e := startEnv(t, ssf.Config{}, pgtest.NewDatabase(t), ns, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.tx.Run(ctx); err != nil {
		t.Fatalf("Run on a context that already ended: %v", err)
	}
}

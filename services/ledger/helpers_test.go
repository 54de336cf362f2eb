package ledger

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// newPool returns a pool on a fresh database (as the superuser pgtest provides).
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return connect(t, pgtest.NewDatabase(t))
}

func connect(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgstore.Connect(context.Background(), url, Schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// testKey signs the checkpoints of every test service (replicas share their key).
var testKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

func newService(t testing.TB, cfg Config, pool *pgxpool.Pool, js jetstream.JetStream) *Service {
	t.Helper()
	if cfg.SigningKey == nil {
		cfg.SigningKey = testKey
	}
	s, err := New(context.Background(), cfg, Deps{Pool: pool, JS: js})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// run runs s until the test ends.
func run(t testing.TB, s *Service) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
}

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 123456789, time.UTC)

// msg builds an event message as the other services publish it.
func msg(t testing.TB, id, subject, worker string, at time.Time, payload proto.Message) *nats.Msg {
	t.Helper()
	m, err := events.Msg(context.Background(), events.Event{
		ID: id, Subject: subject, Source: "tenure/test", WorkerID: worker, Actor: "tester", Time: at, Payload: payload,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func joiner(worker string) *eventsv1.WorkerEvent {
	return &eventsv1.WorkerEvent{
		EventId: "hr-" + worker, Source: "workday", Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER, HrEventType: "hire",
		Worker: &eventsv1.Worker{WorkerId: worker, WorkerType: eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE, Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, Email: worker + "@example.org", JobCode: "RN"},
	}
}

func leaver(worker string) *eventsv1.WorkerEvent {
	return &eventsv1.WorkerEvent{
		EventId: "hr-leave-" + worker, Source: "workday", Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER, HrEventType: "termination",
		Worker: &eventsv1.Worker{WorkerId: worker, Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED},
	}
}

func grant(worker, system string) *eventsv1.AccessDecision {
	return &eventsv1.AccessDecision{DecisionId: "d-" + worker, Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT, WorkerId: worker, System: system, Package: "clinician", Connector: "scim-" + system}
}

// direct turns a message into an entry as the consumer would (without stream metadata).
func direct(m *nats.Msg) *entry { return entryFrom(m.Subject, m.Header, m.Data, 0, time.Time{}) }

// sampleEntries returns n entries about a few workers on a few subjects, one minute apart.
func sampleEntries(t testing.TB, prefix string, n int) []*entry {
	t.Helper()
	es := make([]*entry, n)
	for i := range es {
		w := fmt.Sprintf("w%d", i%5)
		at := t0.Add(time.Duration(i) * time.Minute)
		id := fmt.Sprintf("%s-%d", prefix, i)
		switch i % 3 {
		case 0:
			es[i] = direct(msg(t, id, events.Subject("tenure.hr", "joiner", w), w, at, joiner(w)))
		case 1:
			es[i] = direct(msg(t, id, events.Subject("tenure.access", "grant", w), w, at, grant(w, "ehr")))
		default:
			es[i] = direct(msg(t, id, events.Subject("tenure.revocation", "account_disabled", w), w, at,
				&eventsv1.Revocation{RevocationId: id, WorkerId: w, Connector: "ldap", Kind: eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED}))
		}
	}
	return es
}

// appendAll appends es in batches of size.
func appendAll(t testing.TB, s *Service, es []*entry, size int) {
	t.Helper()
	for i := 0; i < len(es); i += size {
		if _, err := s.appendEntries(context.Background(), es[i:min(i+size, len(es))]); err != nil {
			t.Fatal(err)
		}
	}
}

func headSeq(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	var seq int64
	if err := pool.QueryRow(context.Background(), "SELECT seq FROM head").Scan(&seq); err != nil {
		t.Fatal(err)
	}
	return seq
}

// eventCount counts the entries that are not the ledger's own checkpoint events.
func eventCount(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM entries WHERE type <> $1", checkpointType).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAcked waits until the ledger consumer has acked everything up to the stream's last message.
func waitAcked(t testing.TB, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	stream, err := js.Stream(ctx, "TENURE_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	si, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	last := si.State.LastSeq
	cons, err := js.Consumer(ctx, "TENURE_EVENTS", Durable)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ledger to ack every message", timeout, func() bool {
		ci, err := cons.Info(ctx)
		return err == nil && ci.AckFloor.Stream >= last && ci.NumAckPending == 0
	})
}

func verifyOK(t testing.TB, s *Service, entries int64) *ledgerv1.VerifyResponse {
	t.Helper()
	res, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Ok || res.EntriesChecked != entries || res.FirstBrokenSeq != 0 || res.Problem != "" || len(res.HeadHash) != HashSize {
		t.Fatalf("Verify = %+v, want ok with %d entries", res, entries)
	}
	return res
}

// pgxTx runs statements in one transaction, rolls it back and returns the first error.
func pgxTx(t testing.TB, pool *pgxpool.Pool, sqls ...string) error {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, q := range sqls {
		if _, err := tx.Exec(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

package intake

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// testClock is time.Now plus an offset the test moves forward.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) Now() time.Time                       { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *testClock) Advance(d time.Duration)              { c.offset.Add(int64(d)) }
func withClock(c *testClock) func(*Config)                { return func(cfg *Config) { cfg.Now = c.Now } }
func rfc(t time.Time) string                              { return t.UTC().Format(time.RFC3339) }
func (h *harness) postAt(c *testClock, d delivery) answer { d.ts = c.Now(); return h.post(d) }

func (h *harness) worker(id string) *eventsv1.Worker {
	h.t.Helper()
	r, err := h.svc.GetWorker(context.Background(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	return r.GetWorker()
}

// waitMsgs waits until the stream holds n messages under filter.
func (h *harness) waitMsgs(filter string, n int) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.streamMsgs(filter) < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d messages on %s, want %d", h.streamMsgs(filter), filter, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestFutureTerminationHeldAcrossRestart(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	if a := h.post(delivery{id: "h1", body: hireBody, secret: acmeSecret}); a.Status != http.StatusAccepted {
		t.Fatalf("hire: %d %s", a.Status, a.Raw)
	}
	eff := clock.Now().Add(2 * time.Hour).Truncate(time.Second)
	const traceID = "0af7651916cd43dd8448eb211c80319c"
	a := h.post(delivery{id: "t1", secret: acmeSecret, header: http.Header{"Traceparent": {"00-" + traceID + "-b7ad6b7169203331-01"}},
		body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E1001"},"effective_time":%q,"reason":"resignation"}`, rfc(eff))})
	if a.Status != http.StatusAccepted || a.State != "scheduled" || a.Subject != "tenure.hr.leaver.E1001" || a.StreamSeq != 0 {
		t.Fatalf("future termination: %d %s", a.Status, a.Raw)
	}
	// A retry of the held event is a duplicate, not a second held event.
	if a := h.post(delivery{id: "t1", secret: acmeSecret, ts: time.Now().Add(time.Second),
		body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E1001"},"effective_time":%q,"reason":"resignation"}`, rfc(eff))}); a.State != "duplicate" {
		t.Fatalf("retry: %d %s", a.Status, a.Raw)
	}
	if err := h.svc.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.streamMsgs("tenure.hr.leaver.>") != 0 || h.worker("E1001").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("the termination fired before its time")
	}
	hist, _ := h.svc.GetHistory(context.Background(), "E1001")
	if len(hist.Entries) != 2 || hist.Entries[1].GetState().String() != "HISTORY_ENTRY_STATE_SCHEDULED" || hist.Entries[1].GetKind() != "leaver" {
		t.Fatalf("history %v", hist)
	}

	// The service stops; time passes; a new instance on the same database fires it from Run.
	clock.Advance(3 * time.Hour)
	svc2, err := New(context.Background(), Config{Sources: h.svc.cfg.Sources, Now: clock.Now, ScheduleInterval: 50 * time.Millisecond},
		Deps{Pool: h.pool, JS: h.nats.JS, Log: h.svc.log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- svc2.Run(ctx) }()
	h.waitMsgs("tenure.hr.leaver.>", 1)
	// The relay deletes the outbox row right after the PubAck: let it finish before stopping.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if n, _ := pgstore.Pending(context.Background(), h.pool); n == 0 {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	m, ev := h.lastMsg("tenure.hr.leaver.E1001")
	if m.Header.Get(events.HeaderMsgID) != "intake:acme:t1" || m.Header.Get(events.HeaderID) != "intake:acme:t1" || ev.GetEventId() != "t1" ||
		!ev.GetEffectiveTime().AsTime().Equal(eff) || ev.GetWorker().GetEmail() != "ada@example.org" ||
		ev.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("fired %v %v", m.Header, ev)
	}
	// The held event continues the trace of the webhook that announced it.
	if tp := m.Header.Get(events.HeaderTraceParent); !strings.Contains(tp, traceID) {
		t.Fatalf("traceparent %q does not continue %s", tp, traceID)
	}
	if h.worker("E1001").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatal("registry not terminated")
	}
	if n, _ := pgstore.Pending(context.Background(), h.pool); n != 0 {
		t.Fatalf("%d outbox rows left", n)
	}
	// Firing again does nothing.
	svc2.Tick(context.Background())
	svc2.relay.Flush(context.Background())
	if h.streamMsgs("tenure.hr.leaver.>") != 1 {
		t.Fatal("fired twice")
	}
}

func TestRetroactiveAndStaleOrder(t *testing.T) {
	h := newHarness(t)
	t0 := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	post := func(id, typ, extra string, eff time.Time) answer {
		t.Helper()
		return h.post(delivery{id: id, secret: acmeSecret,
			body: fmt.Sprintf(`{"type":%q,"worker":{"worker_id":"E9","worker_type":"employee"%s},"effective_time":%q}`, typ, extra, rfc(eff))})
	}
	post("a", "hire", `,"job_code":"RN"`, t0)
	post("b", "job_change", `,"job_code":"RN-2"`, t0.Add(48*time.Hour))
	// A termination effective between them arrives last: it still terminates (retroactive),
	// keeping the newer job code.
	a := post("c", "termination", `,"end_date":"2026-01-02"`, t0.Add(24*time.Hour))
	if a.Status != http.StatusAccepted || a.Stale || a.Subject != "tenure.hr.leaver.E9" {
		t.Fatalf("retroactive termination: %d %s", a.Status, a.Raw)
	}
	w := h.worker("E9")
	if w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || w.GetJobCode() != "RN-2" || w.GetEndDate() != "2026-01-02" {
		t.Fatalf("registry %v", w)
	}
	// A stale hire and a stale leave_end never re-activate the leaver, and are not published.
	for i, typ := range []string{"hire", "leave_end", "job_change"} {
		a := post(fmt.Sprintf("s%d", i), typ, `,"job_code":"OLD"`, t0.Add(12*time.Hour))
		if a.Status != http.StatusAccepted || !a.Stale || a.Subject != "" {
			t.Fatalf("stale %s: %d %s", typ, a.Status, a.Raw)
		}
	}
	if w := h.worker("E9"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || w.GetJobCode() != "RN-2" {
		t.Fatalf("a stale event changed the registry: %v", w)
	}
	if n := h.streamMsgs("tenure.hr.>"); n != 3 {
		t.Fatalf("%d messages, want 3", n)
	}
	// A rehire after the termination, then a termination older than the rehire: stale.
	post("r", "rehire", `,"job_code":"RN-3"`, t0.Add(72*time.Hour))
	if a := post("old-term", "termination", "", t0.Add(60*time.Hour)); !a.Stale {
		t.Fatalf("termination older than a rehire: %s", a.Raw)
	}
	if h.worker("E9").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("an old termination undid a newer rehire")
	}
	hist, _ := h.svc.GetHistory(context.Background(), "E9")
	var states []string
	for _, e := range hist.Entries {
		states = append(states, strings.TrimPrefix(e.GetState().String(), "HISTORY_ENTRY_STATE_"))
	}
	if strings.Join(states, ",") != "APPLIED,STALE,STALE,STALE,APPLIED,APPLIED,STALE,APPLIED" {
		t.Fatalf("history states %v", states)
	}
}

func TestRescind(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock), func(c *Config) { c.RescindGrace = 24 * time.Hour })
	h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: hireBody})
	h.postAt(clock, delivery{id: "lv", secret: acmeSecret, body: `{"type":"leave_start","worker":{"worker_id":"E1001"}}`})
	if a := h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001","end_date":"2026-11-20"},"reason":"mistake"}`}); a.Status != http.StatusAccepted {
		t.Fatalf("termination: %s", a.Raw)
	}
	clock.Advance(time.Hour)
	a := h.postAt(clock, delivery{id: "r", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`})
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.rescind.E1001" {
		t.Fatalf("rescind: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg(a.Subject)
	w := ev.GetWorker()
	// Restored to what it was before the termination: on leave, no end date, same job.
	if w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE || w.GetEndDate() != "" || w.GetJobCode() != "RN-2" || w.GetEmail() != "ada@example.org" {
		t.Fatalf("restored %v", w)
	}
	if reg := h.worker("E1001"); reg.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE {
		t.Fatalf("registry %v", reg)
	}
	// Nothing to rescind now.
	if a := h.postAt(clock, delivery{id: "r2", secret: acmeSecret, body: fmt.Sprintf(`{"type":"termination_rescinded","worker":{"worker_id":"E1001"},"effective_time":%q}`, rfc(clock.Now()))}); a.Status != http.StatusUnprocessableEntity || !strings.Contains(a.Error, "no termination to rescind") {
		t.Fatalf("second rescind: %d %s", a.Status, a.Raw)
	}
	// Outside the grace window: 422, nothing stored.
	h.postAt(clock, delivery{id: "t2", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001"}}`})
	clock.Advance(25 * time.Hour)
	before := h.count("receipts")
	a = h.postAt(clock, delivery{id: "r3", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`})
	if a.Status != http.StatusUnprocessableEntity || a.Field != "type" || !strings.Contains(a.Error, "grace window") {
		t.Fatalf("late rescind: %d %s", a.Status, a.Raw)
	}
	if h.count("receipts") != before || h.worker("E1001").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatal("a late rescind changed something")
	}
}

func TestRescindCancelsHeldTermination(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: hireBody})
	eff := clock.Now().Add(48 * time.Hour)
	if a := h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E1001"},"effective_time":%q}`, rfc(eff))}); a.State != "scheduled" {
		t.Fatalf("held: %s", a.Raw)
	}
	a := h.postAt(clock, delivery{id: "r", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`})
	if a.Status != http.StatusAccepted {
		t.Fatalf("rescind: %d %s", a.Status, a.Raw)
	}
	clock.Advance(72 * time.Hour)
	h.svc.Tick(context.Background())
	h.svc.relay.Flush(context.Background())
	if h.streamMsgs("tenure.hr.leaver.>") != 0 || h.worker("E1001").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("a rescinded held termination fired")
	}
	hist, _ := h.svc.GetHistory(context.Background(), "E1001")
	found := false
	for _, e := range hist.Entries {
		found = found || (e.GetHrEventType() == "termination" && e.GetState().String() == "HISTORY_ENTRY_STATE_CANCELLED")
	}
	if !found {
		t.Fatalf("history %v", hist)
	}
}

func TestContractEnd(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	yesterday := clock.Now().UTC().AddDate(0, 0, -1).Format(time.DateOnly)
	tomorrow := clock.Now().UTC().AddDate(0, 0, 1).Format(time.DateOnly)
	for id, body := range map[string]string{
		"c1": fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"C1","worker_type":"contractor","sponsor_id":"E1","start_date":"2025-01-01","end_date":%q},"effective_time":"2025-01-01T00:00:00Z"}`, yesterday),
		"c2": fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"C2","worker_type":"vendor","vendor_org":"Acme","end_date":%q},"effective_time":"2025-01-01T00:00:00Z"}`, tomorrow),
		"e1": fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","end_date":%q},"effective_time":"2025-01-01T00:00:00Z"}`, yesterday),
	} {
		if a := h.postAt(clock, delivery{id: id, secret: acmeSecret, body: body}); a.Status != http.StatusAccepted {
			t.Fatalf("%s: %s", id, a.Raw)
		}
	}
	tick := func() {
		t.Helper()
		if err := h.svc.Tick(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.relay.Flush(context.Background()); err != nil && !strings.Contains(err.Error(), "no outbox row") {
			t.Fatal(err)
		}
	}
	tick()
	tick()
	if n := h.streamMsgs("tenure.hr.leaver.>"); n != 1 {
		t.Fatalf("%d leavers, want 1 (C1 only)", n)
	}
	m, ev := h.lastMsg("tenure.hr.leaver.C1")
	if m.Header.Get(events.HeaderMsgID) != "intake:contract_end:C1:"+yesterday || ev.GetHrEventType() != "contract_end" ||
		ev.GetWorker().GetSponsorId() != "E1" || ev.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("contract end %v %v", m.Header, ev)
	}
	hist, _ := h.svc.GetHistory(context.Background(), "C1")
	if last := hist.Entries[len(hist.Entries)-1]; last.GetReason() != "contract_end" || last.GetSource() != "intake" {
		t.Fatalf("history %v", last)
	}
	// Two days later C2's contract has ended too.
	clock.Advance(48 * time.Hour)
	tick()
	if n := h.streamMsgs("tenure.hr.leaver.>"); n != 2 {
		t.Fatalf("%d leavers, want 2", n)
	}
	if h.worker("E1").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("an employee's end date ended their employment without an HR event")
	}
}

func TestSelfReferenceRejected(t *testing.T) {
	h := newHarness(t)
	for i, tt := range []struct{ body, field string }{
		{`{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","manager_id":"E1"}}`, "worker.manager_id"},
		{`{"type":"hire","worker":{"worker_id":"C1","worker_type":"contractor","sponsor_id":"C1"}}`, "worker.sponsor_id"},
	} {
		a := h.post(delivery{id: fmt.Sprint("self", i), secret: acmeSecret, body: tt.body})
		if a.Status != http.StatusUnprocessableEntity || a.Field != tt.field || !strings.Contains(a.Error, "is the worker itself") {
			t.Errorf("%s: %d %s", tt.field, a.Status, a.Raw)
		}
	}
	if h.count("receipts")+h.count("workers") != 0 {
		t.Fatal("stored")
	}
}

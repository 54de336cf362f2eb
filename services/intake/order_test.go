package intake

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// fireHeld runs the scheduler once and publishes its outbox.
func fireHeld(t *testing.T, h *harness) {
	t.Helper()
	if err := h.svc.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.relay.Flush(context.Background()); err != nil && err.Error() != "no outbox row acknowledged" {
		t.Fatal(err)
	}
}

func mustAccept(t *testing.T, a answer) answer {
	t.Helper()
	if a.Status >= 300 {
		t.Fatalf("%d %s", a.Status, a.Raw)
	}
	return a
}

// A leave that ends (or starts) after the worker left changes nothing: it is kept in the
// history, not published, and the worker stays terminated.
func TestLeaveOfLeaverChangesNothing(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	mustAccept(t, h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: hireBody}))
	mustAccept(t, h.postAt(clock, delivery{id: "ls", secret: acmeSecret, body: `{"type":"leave_start","worker":{"worker_id":"E1001"}}`}))
	ret := clock.Now().Add(30 * 24 * time.Hour)
	if a := h.postAt(clock, delivery{id: "le", secret: acmeSecret, body: fmt.Sprintf(`{"type":"leave_end","worker":{"worker_id":"E1001"},"effective_time":%q}`, rfc(ret))}); a.State != "scheduled" {
		t.Fatalf("held leave_end: %s", a.Raw)
	}
	clock.Advance(time.Hour)
	mustAccept(t, h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001"},"reason":"resigned during leave"}`}))
	// A leave_start sent after the termination, effective now: no change either.
	clock.Advance(time.Hour)
	if a := mustAccept(t, h.postAt(clock, delivery{id: "ls2", secret: acmeSecret, body: fmt.Sprintf(`{"type":"leave_start","worker":{"worker_id":"E1001"},"effective_time":%q}`, rfc(clock.Now()))})); a.Effect != "none" || a.Subject != "" {
		t.Errorf("leave_start of a leaver: want effect none (recorded, not published), got %s", a.Raw)
	}
	clock.Advance(31 * 24 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("E1001"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("after the held leave_end's time: status %v, want terminated", w.GetStatus())
	}
	if n := h.streamMsgs("tenure.hr.leave_end.>"); n != 0 {
		t.Errorf("%d leave_end events published for a leaver", n)
	}
	if n := h.streamMsgs("tenure.hr.leave_start.>"); n != 1 {
		t.Errorf("%d leave_start events published, want 1 (the one before the termination)", n)
	}
}

// A hire held for a start date, then a termination before it (an offer withdrawn, a record
// deleted): the held hire does not fire. A rescind brings it back.
func TestTerminationSupersedesHeldEvents(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	start := clock.Now().Add(7 * 24 * time.Hour).Truncate(time.Second)
	if a := h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"N1","worker_type":"employee"},"effective_time":%q}`, rfc(start))}); a.State != "scheduled" {
		t.Fatalf("held hire: %s", a.Raw)
	}
	clock.Advance(time.Minute)
	mustAccept(t, h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"N1"},"reason":"offer withdrawn"}`}))
	// A rehire HR schedules after the termination is a new decision: it stays held.
	clock.Advance(time.Minute)
	back := clock.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	if a := h.postAt(clock, delivery{id: "r", secret: acmeSecret, body: fmt.Sprintf(`{"type":"rehire","worker":{"worker_id":"N1","worker_type":"employee"},"effective_time":%q}`, rfc(back))}); a.State != "scheduled" {
		t.Fatalf("held rehire: %s", a.Raw)
	}
	var state, why string
	if err := h.pool.QueryRow(context.Background(), `SELECT state, error FROM scheduled_events WHERE source_event_id = 'h'`).Scan(&state, &why); err != nil {
		t.Fatal(err)
	}
	if state != "cancelled" || why != supersededBy(eventID("acme", "t")) {
		t.Fatalf("held hire after the termination: %s %q", state, why)
	}
	clock.Advance(8 * 24 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("N1"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("past the start date: status %v, want terminated", w.GetStatus())
	}
	if n := h.streamMsgs("tenure.hr.joiner.>"); n != 0 {
		t.Fatalf("%d joiners published", n)
	}
	clock.Advance(30 * 24 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("N1"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatalf("the rehire sent after the termination: status %v, want active", w.GetStatus())
	}
}

// hireWithHeldJobChange hires E1001 and holds a job change to CHARGE-RN (webhook-id "j") for
// two weeks later; the clock is an hour on.
func hireWithHeldJobChange(t *testing.T, h *harness, clock *testClock) {
	t.Helper()
	mustAccept(t, h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: hireBody}))
	move := clock.Now().Add(14 * 24 * time.Hour).Truncate(time.Second)
	if a := h.postAt(clock, delivery{id: "j", secret: acmeSecret, body: fmt.Sprintf(`{"type":"job_change","worker":{"worker_id":"E1001","job_code":"CHARGE-RN"},"effective_time":%q}`, rfc(move))}); a.State != "scheduled" {
		t.Fatalf("held job change: %s", a.Raw)
	}
	clock.Advance(time.Hour)
}

// A rescind brings back what the termination cancelled.
func TestRescindRestoresSupersededHeldEvents(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	hireWithHeldJobChange(t, h, clock)
	mustAccept(t, h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001"}}`}))
	clock.Advance(time.Hour)
	mustAccept(t, h.postAt(clock, delivery{id: "x", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`}))
	clock.Advance(15 * 24 * time.Hour)
	fireHeld(t, h)
	w := h.worker("E1001")
	if w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || w.GetJobCode() != "CHARGE-RN" {
		t.Fatalf("after rescind and the job change's date: %v %q, want active CHARGE-RN", w.GetStatus(), w.GetJobCode())
	}
}

// A rescind of a backdated termination restores the record the worker had when it applied,
// including a job change dated after the termination's date, and its grace window counts
// from when the termination arrived.
func TestRescindOfBackdatedTermination(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	mustAccept(t, h.post(delivery{id: "h", secret: acmeSecret, body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"E9","worker_type":"employee","job_code":"RN"},"effective_time":%q}`, rfc(now.AddDate(0, 0, -90)))}))
	mustAccept(t, h.post(delivery{id: "j", secret: acmeSecret, body: fmt.Sprintf(`{"type":"job_change","worker":{"worker_id":"E9","job_code":"RN-2"},"effective_time":%q}`, rfc(now.AddDate(0, 0, -20)))}))
	// Backdated by more than the grace window (30 days by default).
	mustAccept(t, h.post(delivery{id: "t", secret: acmeSecret, body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E9"},"effective_time":%q}`, rfc(now.AddDate(0, 0, -45)))}))
	if w := h.worker("E9"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("backdated termination: %v", w.GetStatus())
	}
	a := h.post(delivery{id: "r", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E9"}}`})
	if a.Status != http.StatusAccepted {
		t.Fatalf("rescind right after a backdated termination arrived: %d %s", a.Status, a.Raw)
	}
	w := h.worker("E9")
	if w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || w.GetJobCode() != "RN-2" {
		t.Fatalf("after rescind: %v job %q, want active RN-2", w.GetStatus(), w.GetJobCode())
	}
}

// A partial event is checked against the record it merges with: an end date before the
// start date on record is refused, naming the field, and stores nothing.
func TestEndBeforeStartAcrossEvents(t *testing.T) {
	h := newHarness(t)
	mustAccept(t, h.post(delivery{id: "h", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"C1","worker_type":"contractor","start_date":"2026-03-01","end_date":"2026-12-31"}}`}))
	a := h.post(delivery{id: "j", secret: acmeSecret, body: `{"type":"job_change","worker":{"worker_id":"C1","end_date":"2026-01-01"}}`})
	if a.Status != http.StatusUnprocessableEntity || a.Field != "worker.end_date" {
		t.Fatalf("end date before the start date on record: %d %s", a.Status, a.Raw)
	}
	a = h.post(delivery{id: "j2", secret: acmeSecret, body: `{"type":"job_change","worker":{"worker_id":"C1","start_date":"2027-01-01"}}`})
	if a.Status != http.StatusUnprocessableEntity || a.Field != "worker.start_date" {
		t.Fatalf("start date after the end date on record: %d %s", a.Status, a.Raw)
	}
	if w := h.worker("C1"); w.GetEndDate() != "2026-12-31" || w.GetStartDate() != "2026-03-01" {
		t.Fatalf("record changed: %v", w)
	}
	var n int
	h.pool.QueryRow(context.Background(), `SELECT count(*) FROM receipts WHERE webhook_id IN ('j', 'j2')`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d receipts stored for refused events", n)
	}
	// A termination before the start date is an offer withdrawn: accepted.
	mustAccept(t, h.post(delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"C1","end_date":"2026-02-01"}}`}))
}

// A retry of an accepted thin delivery while the HRIS API is down is still a duplicate.
func TestThinRedeliveryWhileAPIDown(t *testing.T) {
	h, hris := vendorHarness(t)
	body := readTestdata(t, "bamboohr/event_updated.json")
	first := h.post(bambooDelivery(body, time.Now()))
	if first.Status != http.StatusAccepted {
		t.Fatalf("first: %s", first.Raw)
	}
	hris.failures.Store(100)
	a := h.post(bambooDelivery(body, time.Now().Add(time.Second)))
	if a.Status != http.StatusOK || a.State != "duplicate" || a.EventID != first.EventID {
		t.Fatalf("retry while the API is down: %d %s", a.Status, a.Raw)
	}
}

// Text limits count characters, as the JSON Schema's maxLength does: a name in a script of
// multi-byte characters gets the same length as an ASCII one.
func TestTextLimitsCountCharacters(t *testing.T) {
	h := newHarness(t)
	name := strings.Repeat("é", maxFieldLen) // 1,024 bytes
	mustAccept(t, h.post(delivery{id: "h", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"U1","worker_type":"employee","given_name":"` + name + `"}}`}))
	a := h.post(delivery{id: "h2", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"U2","worker_type":"employee","given_name":"` + name + `é"}}`})
	if a.Status != http.StatusUnprocessableEntity || a.Field != "worker.given_name" || !strings.Contains(a.Error, "512 characters") {
		t.Fatalf("a name one character over: %d %s", a.Status, a.Raw)
	}
	// C1 control characters are refused, as the schema's pattern says.
	a = h.post(delivery{id: "h3", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"U3","worker_type":"employee","given_name":"A\u0085B"}}`})
	if a.Status != http.StatusUnprocessableEntity || a.Field != "worker.given_name" {
		t.Fatalf("a C1 control character: %d %s", a.Status, a.Raw)
	}
}

// HR corrects a termination's date with a second termination: a rescind undoes both, puts
// back what the first cancelled, and counts its grace from the first.
func TestRescindAfterCorrectedTermination(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	hireWithHeldJobChange(t, h, clock)
	mustAccept(t, h.postAt(clock, delivery{id: "t1", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001"}}`}))
	clock.Advance(time.Hour)
	mustAccept(t, h.postAt(clock, delivery{id: "t2", secret: acmeSecret, body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E1001"},"effective_time":%q}`, rfc(clock.Now()))}))
	clock.Advance(time.Hour)
	mustAccept(t, h.postAt(clock, delivery{id: "x", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`}))
	clock.Advance(15 * 24 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("E1001"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || w.GetJobCode() != "CHARGE-RN" {
		t.Fatalf("after rescind and the job change's date: %v %q, want active CHARGE-RN", w.GetStatus(), w.GetJobCode())
	}
}

// A contract end is the calendar, not HR: a rehire HR scheduled (a contractor converted to an
// employee the next day) still fires.
func TestContractEndKeepsAHeldRehire(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	end := clock.Now().In(time.UTC).Format(time.DateOnly)
	mustAccept(t, h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"C7","worker_type":"contractor","sponsor_id":"E1","end_date":%q}}`, end)}))
	back := clock.Now().Add(36 * time.Hour).Truncate(time.Second)
	if a := h.postAt(clock, delivery{id: "r", secret: acmeSecret, body: fmt.Sprintf(`{"type":"rehire","worker":{"worker_id":"C7","worker_type":"employee"},"effective_time":%q}`, rfc(back))}); a.State != "scheduled" {
		t.Fatalf("held rehire: %s", a.Raw)
	}
	clock.Advance(25 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("C7"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("after the contract's end: %v", w.GetStatus())
	}
	clock.Advance(12 * time.Hour)
	fireHeld(t, h)
	if w := h.worker("C7"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || w.GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE {
		t.Fatalf("after the rehire's time: %v %v, want an active employee", w.GetStatus(), w.GetWorkerType())
	}
}

// A rescind whose publish fails stores nothing, the held events it would cancel or restore
// included: the HRIS retry starts afresh.
func TestFailedRescindChangesNoHeldEvent(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock), func(c *Config) { c.PublishTimeout = time.Second })
	hireWithHeldJobChange(t, h, clock)
	mustAccept(t, h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001"}}`}))
	if err := h.nats.JS.DeleteStream(context.Background(), natsx.EventsStream); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	if a := h.postAt(clock, delivery{id: "x", secret: acmeSecret, body: `{"type":"termination_rescinded","worker":{"worker_id":"E1001"}}`}); a.Status != http.StatusServiceUnavailable {
		t.Fatalf("rescind with the stream gone: %d %s", a.Status, a.Raw)
	}
	var state string
	if err := h.pool.QueryRow(context.Background(), `SELECT state FROM scheduled_events WHERE source_event_id = 'j'`).Scan(&state); err != nil || state != "cancelled" {
		t.Fatalf("held job change after the failed rescind: %q, %v; want still cancelled", state, err)
	}
}

package intake

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// HR systems re-send the same change under a new delivery id. The content is the event's
// identity: the re-send is a duplicate naming the original, with no second effect.
func TestResendUnderNewIDIsDuplicate(t *testing.T) {
	h := newHarness(t)
	first := mustAccept(t, h.post(delivery{id: "d1", secret: acmeSecret, body: hireBody}))
	term := `{"type":"termination","worker":{"worker_id":"E1001","end_date":"2025-09-30"},"effective_time":"2025-10-01T00:00:00Z"}`
	t1 := mustAccept(t, h.post(delivery{id: "d2", secret: acmeSecret, body: term}))
	for i, body := range []string{term, strings.ReplaceAll(term, `,"effective_time"`, ` , "effective_time"`)} {
		a := h.post(delivery{id: fmt.Sprintf("resend-%d", i), secret: acmeSecret, body: body})
		if a.Status != http.StatusOK || a.State != "duplicate" || a.DupOf != t1.EventID || a.EventID != t1.EventID {
			t.Fatalf("re-sent termination %d: %d %s", i, a.Status, a.Raw)
		}
	}
	// A retry of the re-send's own id is still the same duplicate; another body under it is a 409.
	if a := h.post(delivery{id: "resend-0", secret: acmeSecret, body: term}); a.Status != http.StatusOK || a.DupOf != t1.EventID {
		t.Fatalf("retry of a re-send: %d %s", a.Status, a.Raw)
	}
	if a := h.post(delivery{id: "resend-0", secret: acmeSecret, body: hireBody}); a.Status != http.StatusConflict {
		t.Fatalf("re-send id with another body: %d %s", a.Status, a.Raw)
	}
	// The reproduction of the issue: the same hire body under a new webhook-id after the
	// termination does not bring the worker back.
	if a := h.post(delivery{id: "hire-again", secret: acmeSecret, body: hireBody}); a.Status != http.StatusOK || a.DupOf != first.EventID {
		t.Fatalf("re-sent hire: %d %s", a.Status, a.Raw)
	}
	if n := h.streamMsgs("tenure.hr.leaver.>"); n != 1 {
		t.Fatalf("%d leavers published, want 1", n)
	}
	if n := h.streamMsgs("tenure.hr.joiner.>"); n != 1 {
		t.Fatalf("%d joiners published, want 1", n)
	}
	if w := h.worker("E1001"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("status %v", w.GetStatus())
	}
}

// A worker who has left comes back only through a rehire that starts after the termination
// or a rescind. Anything else is recorded, changes nothing, and raises a finding.
func TestLeaverComesBackOnlyByRehireOrRescind(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	mustAccept(t, h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: hireBody}))
	mustAccept(t, h.postAt(clock, delivery{id: "t", secret: acmeSecret, body: `{"type":"termination","worker":{"worker_id":"E1001","end_date":"2025-09-30"},"effective_time":"2025-10-01T00:00:00Z"}`}))
	now := rfc(clock.Now())
	for _, ev := range []string{
		// The old hire with a new effective time (what a "resend" with today's date does).
		strings.Replace(hireBody, `"2025-03-01T09:00:00Z"`, `"`+now+`"`, 1),
		`{"type":"job_change","worker":{"worker_id":"E1001","job_code":"RN-3"},"effective_time":"` + now + `"}`,
		`{"type":"leave_end","worker":{"worker_id":"E1001"},"effective_time":"` + now + `"}`,
		`{"type":"conversion","worker":{"worker_id":"E1001","worker_type":"contractor"},"effective_time":"` + now + `"}`,
		// A rehire whose start date is the old one (before the termination).
		`{"type":"rehire","worker":{"worker_id":"E1001","worker_type":"employee","start_date":"2025-03-01"},"effective_time":"` + now + `"}`,
		// A second termination opens no second case.
		`{"type":"termination","worker":{"worker_id":"E1001","end_date":"2025-10-15"},"effective_time":"` + now + `"}`,
	} {
		a := h.postAt(clock, delivery{id: fmt.Sprintf("x%d", len(ev)), secret: acmeSecret, body: ev})
		if a.Status != http.StatusAccepted || a.Effect != "none" || a.Subject != "" || a.Reason == "" {
			t.Fatalf("%s: %d %s", ev, a.Status, a.Raw)
		}
	}
	if w := h.worker("E1001"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED || w.GetJobCode() != "RN-2" {
		t.Fatalf("after events for a leaver: %v", w)
	}
	if n := h.streamMsgs("tenure.hr.>"); n != 2 {
		t.Fatalf("%d events published, want 2 (hire, termination)", n)
	}
	fs, err := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{WorkerId: "E1001"})
	if err != nil || len(fs.Findings) != 1 || fs.Findings[0].Kind != findingEventForLeaver || fs.Findings[0].Count != 5 {
		t.Fatalf("findings %v %v", fs, err)
	}
	hist, err := h.svc.GetHistory(context.Background(), "E1001")
	if err != nil {
		t.Fatal(err)
	}
	if last := hist.Entries[len(hist.Entries)-1]; last.EffectReason == "" {
		t.Fatalf("history does not say why: %v", last)
	}
	// A rehire that starts after the termination brings the worker back.
	a := h.postAt(clock, delivery{id: "rh", secret: acmeSecret, body: `{"type":"rehire","worker":{"worker_id":"E1001","worker_type":"employee","start_date":"` + clock.Now().UTC().Format(time.DateOnly) + `"},"effective_time":"` + now + `"}`})
	if a.Status != http.StatusAccepted || a.Subject != "tenure.hr.joiner.E1001" || a.Effect != "applied" {
		t.Fatalf("rehire: %d %s", a.Status, a.Raw)
	}
	// The operator closes the finding.
	f, err := h.svc.ResolveFinding(context.Background(), fs.Findings[0].FindingId, "user:ops", "checked with HR: re-sent by their relay")
	if err != nil || f.Status != "resolved" || f.ResolvedBy != "user:ops" {
		t.Fatalf("resolve %v %v", f, err)
	}
	if _, err := h.svc.ResolveFinding(context.Background(), fs.Findings[0].FindingId, "user:ops", "again"); err == nil {
		t.Fatal("resolved twice")
	}
}

// Shuffled delivery: a job change that arrives before the worker's hire waits for it and
// then applies in order; the finding it raised closes when the hire arrives.
func TestChangeBeforeHireWaits(t *testing.T) {
	h := newHarness(t)
	a := h.post(delivery{id: "m", secret: acmeSecret, body: `{"type":"job_change","worker":{"worker_id":"E1001","job_code":"RN-3"},"effective_time":"2025-06-01T00:00:00Z"}`})
	if a.Status != http.StatusAccepted || a.State != "held" || a.Subject != "" {
		t.Fatalf("early change: %d %s", a.Status, a.Raw)
	}
	if fs, _ := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{WorkerId: "E1001"}); len(fs.GetFindings()) != 1 {
		t.Fatalf("findings %v", fs)
	}
	mustAccept(t, h.post(delivery{id: "h", secret: acmeSecret, body: hireBody}))
	fireHeld(t, h)
	if w := h.worker("E1001"); w.GetJobCode() != "RN-3" || w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatalf("after the hire: %v", w)
	}
	if fs, _ := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{WorkerId: "E1001"}); len(fs.GetFindings()) != 0 {
		t.Fatalf("open findings after the hire %v", fs)
	}
	if n := h.streamMsgs("tenure.hr.mover.E1001"); n != 1 {
		t.Fatalf("%d movers", n)
	}
}

// Strict input: what encoding/json would let through silently is a 400 naming the key path.
func TestStrictJSONText(t *testing.T) {
	h := newHarness(t)
	for name, c := range map[string]struct{ body, field, msg string }{
		"type twice":      {`{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee"},"type":"termination"}`, "type", "duplicate key"},
		"nested twice":    {`{"type":"hire","worker":{"worker_id":"E1","worker_id":"E2","worker_type":"employee"}}`, "worker.worker_id", "duplicate key"},
		"invalid UTF-8":   {"{\"type\":\"hire\",\"worker\":{\"worker_id\":\"E1\",\"given_name\":\"A\xff\",\"worker_type\":\"employee\"}}", "worker.given_name", "UTF-8"},
		"lone surrogate":  {`{"type":"hire","worker":{"worker_id":"E1","given_name":"\ud800","worker_type":"employee"}}`, "worker.given_name", "surrogate"},
		"surrogate in id": {`{"type":"hire","worker":{"worker_id":"\udc00x","worker_type":"employee"}}`, "worker.worker_id", "surrogate"},
	} {
		a := h.post(delivery{id: "s-" + strings.ReplaceAll(name, " ", "-"), secret: acmeSecret, body: c.body})
		if a.Status != http.StatusBadRequest || a.Field != c.field || !strings.Contains(a.Error, c.msg) {
			t.Errorf("%s: %d %s", name, a.Status, a.Raw)
		}
	}
	if h.count("receipts") != 0 || h.streamMsgs(">") != 0 {
		t.Fatal("a refused body stored something")
	}
}

// Effective times outside the window (default 10 years back, 2 years ahead) are 422.
func TestEffectiveTimeWindow(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.EffectivePast, c.EffectiveFuture = 24*time.Hour, time.Hour })
	for name, eff := range map[string]time.Time{"past": time.Now().Add(-48 * time.Hour), "future": time.Now().Add(2 * time.Hour)} {
		a := h.post(delivery{id: "w-" + name, secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee"},"effective_time":"` + rfc(eff) + `"}`})
		if a.Status != http.StatusUnprocessableEntity || a.Field != "effective_time" || !strings.Contains(a.Error, "in the "+name) {
			t.Errorf("%s: %d %s", name, a.Status, a.Raw)
		}
	}
	d := newHarness(t)
	if d.svc.cfg.EffectivePast != DefaultEffectivePast || d.svc.cfg.EffectiveFuture != DefaultEffectiveFuture {
		t.Fatal("defaults not applied")
	}
	if a := d.post(delivery{id: "w-2062", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee"},"effective_time":"2062-01-01T00:00:00Z"}`}); a.Status != http.StatusUnprocessableEntity {
		t.Errorf("2062: %d %s", a.Status, a.Raw)
	}
}

// The stale-timestamp error says which way the clock is off.
func TestStaleTimestampSaysOldOrFuture(t *testing.T) {
	h := newHarness(t)
	// (A header in seconds: 10m give or take one second, so the check is on the words.)
	for want, ts := range map[string]time.Time{"s old, tolerance": time.Now().Add(-10 * time.Minute), "s in the future, tolerance": time.Now().Add(10 * time.Minute)} {
		a := h.post(delivery{id: "ts", secret: acmeSecret, body: hireBody, ts: ts})
		if a.Status != http.StatusUnauthorized || !strings.Contains(a.Error, want) {
			t.Errorf("want %q: %d %s", want, a.Status, a.Raw)
		}
	}
}

// Thin webhooks: a re-delivered webhook-id is answered without calling the HRIS API; a
// refused credential is 503 with a finding naming it; the 503 names the cause.
func TestThinWebhookAnswers(t *testing.T) {
	h, hris := vendorHarness(t)
	seedWorkers(t, h, "67890")
	body := readTestdata(t, "bamboohr/event_updated.json")
	d := bambooDelivery(body, time.Now())
	mustAccept(t, h.post(d))
	calls := hris.calls.Load()
	hris.failures.Store(100) // the API is down now
	if a := h.post(d); a.Status != http.StatusOK || a.State != "duplicate" {
		t.Fatalf("redelivery: %d %s", a.Status, a.Raw)
	}
	if n := hris.calls.Load(); n != calls {
		t.Fatalf("a redelivery called the API %d times", n-calls)
	}
	other := strings.Replace(string(body), "2026-01-31T18:42:00", "2026-02-01T18:42:00", 1)
	if a := h.post(bambooDelivery([]byte(other), time.Now())); a.Status != http.StatusServiceUnavailable || !strings.Contains(a.Error, "answered HTTP 503") {
		t.Fatalf("API down: %d %s", a.Status, a.Raw)
	}
	hris.failures.Store(0)
	for _, s := range h.svc.sources {
		if c, ok := s.adapter.(*bambooHRAdapter); ok {
			c.api.api.Token = "revoked"
		}
	}
	a := h.post(bambooDelivery([]byte(other), time.Now()))
	if a.Status != http.StatusServiceUnavailable || !strings.Contains(a.Error, "refused tenure's credential (HTTP 401)") || strings.Contains(a.Raw, "revoked") {
		t.Fatalf("credential refused: %d %s", a.Status, a.Raw)
	}
	fs, err := h.svc.ListFindings(context.Background(), &intakev1.ListFindingsRequest{Kind: findingHRISCredential})
	if err != nil || len(fs.Findings) != 1 || fs.Findings[0].Source != "bamboo" || !strings.Contains(fs.Findings[0].Detail, "api token") {
		t.Fatalf("credential finding %v %v", fs, err)
	}
	if strings.Contains(h.logs.String(), "revoked") || strings.Contains(h.logs.String(), bambooAPI) {
		t.Fatal("the credential reached the log")
	}
}

// BambooHR field-based webhooks in both shapes: flat values and value objects, with the
// top-level alias map; errors name the employee index and the field.
func TestBambooHRValueObjectsAndAliases(t *testing.T) {
	h, _ := vendorHarness(t)
	seedWorkers(t, h, "40")
	body := `{"fields":{"fn":"First Name","dept":"Department"},"employees":[{"id":"40","action":"Updated","timestamp":"2026-04-10T15:02:11+0000",
	  "changedFields":["dept"],"fields":{"fn":{"value":"Bryony"},"lastName":{"value":"Gale"},"dept":{"value":"Oncology"},"Job Title":"RN","Hire Date":{"value":"2020-01-06"}}}]}`
	a := h.post(bambooDelivery([]byte(body), time.Now()))
	if a.Status != http.StatusAccepted {
		t.Fatalf("value objects: %d %s", a.Status, a.Raw)
	}
	_, ev := h.lastMsg("tenure.hr.mover.40")
	if w := ev.GetWorker(); ev.GetHrEventType() != "department_change" || w.GetGivenName() != "Bryony" || w.GetFamilyName() != "Gale" || w.GetDepartment() != "Oncology" || w.GetStartDate() != "2020-01-06" {
		t.Fatalf("mapped %v", ev)
	}
	bad := `{"employees":[{"id":"41","action":"Updated","fields":{"firstName":"A"}},{"id":"42","action":"Updated","fields":{"firstName":{"val":"B"}}}]}`
	if a := h.post(bambooDelivery([]byte(bad), time.Now())); a.Status != http.StatusBadRequest || a.Field != "employees[1].fields.firstName" {
		t.Fatalf("bad value: %d %s", a.Status, a.Raw)
	}
}

// A contract end moved into the past by a change makes the leaver (once), although the
// record is newer than the end date.
func TestContractEndMovedIntoThePast(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	end := clock.Now().AddDate(0, 0, 20).UTC().Format(time.DateOnly)
	mustAccept(t, h.postAt(clock, delivery{id: "h", secret: acmeSecret, body: `{"type":"hire","worker":{"worker_id":"V1","worker_type":"vendor","vendor_org":"Acme","end_date":"` + end + `"}}`}))
	yesterday := clock.Now().AddDate(0, 0, -1).UTC().Format(time.DateOnly)
	mustAccept(t, h.postAt(clock, delivery{id: "d", secret: acmeSecret, body: `{"type":"department_change","worker":{"worker_id":"V1","department":"Lab","end_date":"` + yesterday + `"}}`}))
	fireHeld(t, h)
	fireHeld(t, h)
	if w := h.worker("V1"); w.GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED {
		t.Fatalf("after the end date moved into the past: %v", w)
	}
	if n := h.streamMsgs("tenure.hr.leaver.V1"); n != 1 {
		t.Fatalf("%d leavers, want 1", n)
	}
}

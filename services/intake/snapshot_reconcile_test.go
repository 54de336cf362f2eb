package intake

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/events"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// postOK posts a delivery and fails unless it was accepted or scheduled.
func postOK(t *testing.T, h *harness, c *testClock, d delivery) {
	t.Helper()
	if d.secret == "" {
		d.secret = acmeSecret
	}
	if a := h.postAt(c, d); a.Status != http.StatusAccepted {
		t.Fatalf("%s: %d %s", d.id, a.Status, a.Raw)
	}
}

// reconcileHTTP posts a roster to /snapshots/{source} and decodes the ReconcileResponse.
func reconcileHTTP(t *testing.T, h *harness, c *testClock, d delivery) *intakev1.ReconcileResponse {
	t.Helper()
	d.endpoint = "snapshots"
	if d.secret == "" {
		d.secret = acmeSecret
	}
	want := http.StatusAccepted
	if strings.Contains(d.query, "dry_run") {
		want = http.StatusOK
	}
	var a answer
	if c != nil {
		a = h.postAt(c, d)
	} else {
		a = h.post(d)
	}
	if a.Status != want {
		t.Fatalf("snapshot %s: %d %s", d.id, a.Status, a.Raw)
	}
	resp := &intakev1.ReconcileResponse{}
	if err := protojson.Unmarshal([]byte(a.Raw), resp); err != nil {
		t.Fatalf("snapshot %s: %v in %s", d.id, err, a.Raw)
	}
	return resp
}

// changes summarises a ReconcileResponse: worker:type(before→after) by change.
func changes(r *intakev1.ReconcileResponse) string {
	var out []string
	for _, c := range r.GetChanges() {
		from := "-"
		if c.GetBefore() != nil {
			from = statusToken(c.GetBefore().GetStatus())
		}
		out = append(out, fmt.Sprintf("%s:%s(%s→%s)", c.GetWorkerId(), c.GetHrEventType(), from, statusToken(c.GetAfter().GetStatus())))
	}
	return strings.Join(out, " ")
}

// A roster is compared with when tenure learned of each change (updated_at), not with the
// change's effective date: a termination dated before the export but entered after it is
// not undone by a rehire, a hire entered after it is not terminated. A record that takes
// effect after as_of (a held hire that fired) is left alone too.
func TestReconcileSkipsRecordsChangedAfterAsOf(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	t0 := clock.Now().Truncate(time.Second)
	for _, id := range []string{"E1", "E2", "E4"} {
		postOK(t, h, clock, delivery{id: "h-" + id, body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":%q,"worker_type":"employee"},"effective_time":"2025-01-01T00:00:00Z"}`, id)})
	}
	// E6: received at t0, takes effect 90 minutes later (held, fires on the tick below).
	postOK(t, h, clock, delivery{id: "h-E6", body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"E6","worker_type":"employee"},"effective_time":%q}`, rfc(t0.Add(90*time.Minute)))})

	// HR exports the roster at t0+1h: E1, E2 active; E4 has left (a leaver the webhooks missed).
	asOf := t0.Add(time.Hour)
	clock.Advance(2 * time.Hour)
	if err := h.svc.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.worker("E6").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("the held hire of E6 did not fire")
	}
	// After the export, tenure learns of E1's termination (dated a day before t0) and E3's hire
	// (dated a day before t0 too).
	postOK(t, h, clock, delivery{id: "t-E1", body: fmt.Sprintf(`{"type":"termination","worker":{"worker_id":"E1"},"effective_time":%q}`, rfc(t0.Add(-24*time.Hour)))})
	postOK(t, h, clock, delivery{id: "h-E3", body: fmt.Sprintf(`{"type":"hire","worker":{"worker_id":"E3","worker_type":"employee"},"effective_time":%q}`, rfc(t0.Add(-24*time.Hour)))})

	body := fmt.Sprintf(`{"as_of":%q,"workers":[{"worker_id":"E1","status":"active"},{"worker_id":"E2","status":"active"}]}`, rfc(asOf))
	const want = "E4:termination(active→terminated)"
	dry := reconcileHTTP(t, h, clock, delivery{id: "snap", query: "?dry_run=true", body: body})
	// Skipped: E1 (terminated after the export), E3 (hired after it), E6 (effective after it).
	if got := changes(dry); got != want || dry.GetSkippedNewer() != 3 {
		t.Fatalf("dry run: %s, skipped %d; want %s, skipped 3", got, dry.GetSkippedNewer(), want)
	}
	res := reconcileHTTP(t, h, clock, delivery{id: "snap", body: body})
	if got := changes(res); got != want || res.GetSkippedNewer() != 3 {
		t.Fatalf("reconcile: %s, skipped %d", got, res.GetSkippedNewer())
	}
	for id, st := range map[string]eventsv1.WorkerStatus{
		"E1": eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED,
		"E2": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE,
		"E3": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE,
		"E4": eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED,
		"E6": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE,
	} {
		if got := h.worker(id).GetStatus(); got != st {
			t.Errorf("%s: %v, want %v", id, got, st)
		}
	}
}

// gRPC Reconcile (tenurectl hr reconcile) honours the JSON roster's own as_of unless the
// request carries one, like POST /snapshots; the snapshot id follows the as_of used.
func TestReconcileGRPCRosterAsOf(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	client := grpcClients(t, h)("op-token")
	ctx := context.Background()
	roster := []byte(`{"as_of":"2024-12-31T00:00:00Z","workers":[{"worker_id":"E2","status":"active"}]}`)
	req := &intakev1.ReconcileRequest{Roster: roster, Format: intakev1.RosterFormat_ROSTER_FORMAT_JSON, DryRun: true}

	// The roster predates every record: E1, E2 and E5 are newer (E3 is terminated either way).
	res, err := client.Reconcile(ctx, req)
	if err != nil || res.GetSkippedNewer() != 3 || len(res.GetChanges()) != 0 {
		t.Fatalf("roster as_of: %v %v", err, res)
	}
	again, err := client.Reconcile(ctx, req)
	if err != nil || again.GetSnapshotId() != res.GetSnapshotId() {
		t.Fatalf("the snapshot id of the same roster changed: %v %v / %v", err, res.GetSnapshotId(), again.GetSnapshotId())
	}
	// An explicit as_of overrides the roster's: now E1 and E5 are leavers.
	req.AsOf = timestamppb.Now()
	res, err = client.Reconcile(ctx, req)
	if err != nil || res.GetSkippedNewer() != 0 || changes(res) != "E1:termination(active→terminated) E5:termination(active→terminated)" {
		t.Fatalf("explicit as_of: %v %s %v", err, changes(res), res)
	}

	// Applied at the roster's as_of: nothing changes, and the same file again is a duplicate.
	req.AsOf, req.DryRun = nil, false
	if res, err = client.Reconcile(ctx, req); err != nil || len(res.GetChanges()) != 0 {
		t.Fatalf("apply: %v %v", err, res)
	}
	var asOf time.Time
	if err := h.pool.QueryRow(ctx, `SELECT as_of FROM snapshots WHERE snapshot_id = $1`, res.GetSnapshotId()).Scan(&asOf); err != nil ||
		!asOf.Equal(time.Date(2024, 12, 31, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("recorded as_of %v %v", asOf, err)
	}
	if _, err := client.Reconcile(ctx, req); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("the same roster again: %v", err)
	}
	if h.worker("E1").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("a roster older than the registry terminated E1")
	}
}

// A roster speaks for its own source: workers another source owns (by their latest hire or
// rehire, not by their last event) are never terminated by it, though a roster row still
// changes their attributes, and a rehire moves a worker to the roster's source.
func TestReconcileScopedToSource(t *testing.T) {
	clock := &testClock{}
	h := newHarness(t, withClock(clock))
	acme := func(id, body string) { postOK(t, h, clock, delivery{id: id, body: body}) }
	bob := func(id, body string) {
		postOK(t, h, clock, delivery{source: "rotating", secret: newSecret, id: id, body: body})
	}
	for _, id := range []string{"A1", "A2", "A3", "A4"} {
		acme("h-"+id, fmt.Sprintf(`{"type":"hire","worker":{"worker_id":%q,"worker_type":"employee","department":"ICU"}}`, id))
	}
	for _, id := range []string{"B1", "B2", "B3"} {
		bob("h-"+id, fmt.Sprintf(`{"type":"hire","worker":{"worker_id":%q,"worker_type":"contractor"}}`, id))
	}
	// The last events of B2 and A3 come from the other source; their owners stay.
	acme("j-B2", `{"type":"job_change","worker":{"worker_id":"B2","job_code":"X"}}`)
	bob("j-A3", `{"type":"job_change","worker":{"worker_id":"A3","job_code":"Y"}}`)
	acme("t-A4", `{"type":"termination","worker":{"worker_id":"A4"}}`)
	clock.Advance(time.Minute)

	// rotating's roster: B1 unchanged, A1 moved (another source's worker: a mover applies), A2
	// "terminated" (not rotating's to end), A4 back (a rehire, now rotating's); B2, B3 absent
	// (leavers: rotating hired them), A3 absent (acme's: untouched).
	roster := "worker_id,status,department\nB1,active,\nA1,active,Oncology\nA2,terminated,\nA4,active,\n"
	const want = "A1:department_change(active→active) A4:rehire(terminated→active) B2:termination(active→terminated) B3:termination(active→terminated)"
	dry := reconcileHTTP(t, h, clock, delivery{source: "rotating", secret: newSecret, id: "r1", query: "?dry_run=1", body: roster, contentType: "text/csv"})
	if got := changes(dry); got != want || dry.GetRegistryWorkers() != 3 {
		t.Fatalf("dry run: %s (registry %d)\nwant %s (registry 3)", got, dry.GetRegistryWorkers(), want)
	}
	res := reconcileHTTP(t, h, clock, delivery{source: "rotating", secret: newSecret, id: "r1", body: roster, contentType: "text/csv"})
	if got := changes(res); got != want {
		t.Fatalf("reconcile: %s", got)
	}
	for id, st := range map[string]eventsv1.WorkerStatus{
		"A1": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, "A2": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE,
		"A3": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, "A4": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE,
		"B1": eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE, "B2": eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED,
		"B3": eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED,
	} {
		if got := h.worker(id).GetStatus(); got != st {
			t.Errorf("%s: %v, want %v", id, got, st)
		}
	}
	if d := h.worker("A1").GetDepartment(); d != "Oncology" {
		t.Errorf("A1's department %q", d)
	}

	// acme's roster lists only A1: A2 and A3 leave; B1 (rotating's) and A4 (rehired by
	// rotating) stay, though A1's mover made rotating A1's last source.
	clock.Advance(time.Minute)
	res = reconcileHTTP(t, h, clock, delivery{id: "a1", body: `[{"worker_id":"A1"}]`})
	if got := changes(res); got != "A2:termination(active→terminated) A3:termination(active→terminated)" || res.GetRegistryWorkers() != 3 {
		t.Fatalf("acme's roster: %s (registry %d)", got, res.GetRegistryWorkers())
	}
	if h.worker("A4").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || h.worker("B1").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("acme's roster terminated another source's worker")
	}
}

// A new (or returning) worker the roster has on leave ends on leave in one run: the joiner,
// then a leave_start, both published; the diff shows "- → on_leave".
func TestReconcileJoinerOnLeave(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h) // E1, E2, E5 active; E3 terminated.
	roster := "worker_id,worker_type,status\nE1,,active\nE2,,active\nE5,,active\nE6,employee,on_leave\nE3,,on_leave\n"
	const want = "E6:hire(-→on_leave) E3:rehire(terminated→on_leave)"
	dry := reconcileHTTP(t, h, nil, delivery{id: "l1", query: "?dry_run=true", body: roster, contentType: "text/csv"})
	if got := changes(dry); got != want {
		t.Fatalf("dry run: %s, want %s", got, want)
	}
	seeded := h.streamMsgs("tenure.hr.>")
	res := reconcileHTTP(t, h, nil, delivery{id: "l1", body: roster, contentType: "text/csv"})
	if got := changes(res); got != want {
		t.Fatalf("reconcile: %s, want %s", got, want)
	}
	if id := res.GetChanges()[0].GetEventId(); id != "intake:snapshot:acme:l1:E6" {
		t.Fatalf("event id %s", id)
	}
	for _, id := range []string{"E6", "E3"} {
		if st := h.worker(id).GetStatus(); st != eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE {
			t.Fatalf("%s: %v", id, st)
		}
	}
	if _, err := h.svc.relay.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := h.streamMsgs("tenure.hr.>") - seeded; n != 4 {
		t.Fatalf("%d messages, want 4 (two joiners, two leave_starts)", n)
	}
	_, joiner := h.lastMsg("tenure.hr.joiner.E6")
	m, leave := h.lastMsg("tenure.hr.leave_start.E6")
	if joiner.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE || leave.GetWorker().GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE ||
		leave.GetWorker().GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_EMPLOYEE || m.Header.Get(events.HeaderMsgID) != "intake:snapshot:acme:l1:E6:leave_start" ||
		leave.GetHrEventType() != "leave_start" || leave.GetReason() != "snapshot" {
		t.Fatalf("joiner %v\nleave_start %v %v", joiner, m.Header, leave)
	}
	hist, err := h.svc.GetHistory(context.Background(), "E6")
	if err != nil || len(hist.GetEntries()) != 2 || hist.GetEntries()[0].GetHrEventType() != "hire" || hist.GetEntries()[1].GetHrEventType() != "leave_start" {
		t.Fatalf("history %v %v", err, hist)
	}
	// The next run has nothing left to do.
	if res := reconcileHTTP(t, h, nil, delivery{id: "l2", body: roster, contentType: "text/csv"}); len(res.GetChanges()) != 0 {
		t.Fatalf("second run: %s", changes(res))
	}
}

// Errors in a roster row name the row and the roster's own field, alike for CSV and JSON, as
// docs/hr-events.md says.
func TestReconcileRowErrors(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	tests := []struct {
		name, ct, body string
		code           int
		field, msg     string
	}{
		{"CSV email", "text/csv", "worker_id,email\nE1,not-an-email\n", 422, "row 2.email", `row 2.email "not-an-email" is not a bare email address`},
		{"JSON email", "", `{"workers":[{"worker_id":"E1"},{"worker_id":"E2","email":"not-an-email"}]}`, 422, "workers[1].email", `workers[1].email "not-an-email" is not a bare email address`},
		{"CSV value quoting a field name", "text/csv", "worker_id,email\nE1,worker.email\n", 422, "row 2.email", `row 2.email "worker.email" is not`},
		{"CSV end before start", "text/csv", "worker_id,start_date,end_date\nE1,2025-02-01,2025-01-01\n", 422, "row 2.end_date", "row 2.end_date 2025-01-01 is before start_date 2025-02-01"},
		{"JSON own manager", "", `[{"worker_id":"E1","manager_id":"E1"}]`, 422, "workers[0].manager_id", `workers[0].manager_id "E1" is the worker itself`},
		{"CSV bad worker type", "text/csv", "worker_id,worker_type\nE1,robot\n", 422, "row 2.worker_type", `unknown worker_type "robot"`},
		{"JSON wrong type", "", `{"workers":[{"worker_id":"E1"},{"worker_id":2}]}`, 400, "workers[1].worker_id", "workers[1].worker_id must be a string, not a number"},
		{"JSON unknown field", "", `{"workers":[{"worker_id":"E1","shoe":"44"}]}`, 400, "workers[0].shoe", `unknown field "workers[0].shoe"`},
		{"bare array unknown field", "", `[{"worker_id":"E1"},{"worker_id":"E2","shoe":"44"}]`, 400, "workers[1].shoe", `unknown field "workers[1].shoe"`},
		{"JSON row not an object", "", `{"workers":[{"worker_id":"E1"},"E2"]}`, 400, "workers[1]", "workers[1] must be an object, not a string"},
		{"JSON unknown status", "", `{"workers":[{"worker_id":"E1","status":"retired"}]}`, 422, "workers[0].status", `unknown status "retired"`},
		{"JSON duplicate", "", `{"workers":[{"worker_id":"E1"},{"worker_id":"E1"}]}`, 422, "workers[1].worker_id", "also in workers[0]"},
		{"JSON missing id", "", `{"workers":[{"email":"a@example.org"}]}`, 422, "workers[0].worker_id", "worker_id is required"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hh := *h
			hh.t = t
			a := hh.post(delivery{endpoint: "snapshots", id: fmt.Sprintf("e-%d", i), secret: acmeSecret, body: tt.body, contentType: tt.ct})
			if a.Status != tt.code || a.Field != tt.field || !strings.Contains(a.Error, tt.msg) {
				t.Fatalf("got %d field=%q %q; want %d field=%q containing %q", a.Status, a.Field, a.Error, tt.code, tt.field, tt.msg)
			}
			if strings.Contains(a.Error, "worker.") && !strings.Contains(a.Error, `"worker.`) {
				t.Fatalf("the error names the event's field path: %q", a.Error)
			}
		})
	}
	if h.count("snapshots") != 0 || h.count("outbox") != 0 {
		t.Fatal("a rejected roster stored something")
	}
	doc, err := os.ReadFile("../../docs/hr-events.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"`row N.<field>`", "`workers[i].<field>`", "`row 2.email`", "`workers[0].worker_id`"} {
		if !strings.Contains(string(doc), s) {
			t.Errorf("docs/hr-events.md does not mention %s", s)
		}
	}
}

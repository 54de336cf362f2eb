package intake

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/events"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

// seedRegistry: E1 active RN-2, E2 active, E3 terminated, E5 active.
func seedRegistry(t *testing.T, h *harness) {
	t.Helper()
	for id, body := range map[string]string{
		"s1": `{"type":"hire","worker":{"worker_id":"E1","worker_type":"employee","job_code":"RN-2","department":"Cardiology","email":"ada@example.org","manager_id":"E0"},"effective_time":"2025-01-01T00:00:00Z"}`,
		"s2": `{"type":"hire","worker":{"worker_id":"E2","worker_type":"employee","job_code":"MD"},"effective_time":"2025-01-01T00:00:00Z"}`,
		"s3": `{"type":"hire","worker":{"worker_id":"E3","worker_type":"employee","job_code":"MD"},"effective_time":"2025-01-01T00:00:00Z"}`,
		"s4": `{"type":"termination","worker":{"worker_id":"E3"},"effective_time":"2025-06-01T00:00:00Z"}`,
		"s5": `{"type":"hire","worker":{"worker_id":"E5","worker_type":"employee"},"effective_time":"2025-01-01T00:00:00Z"}`,
	} {
		_ = id
		if a := h.post(delivery{id: id, secret: acmeSecret, body: body}); a.Status != http.StatusAccepted {
			t.Fatalf("seed %s: %s", id, a.Raw)
		}
	}
}

type reconcileAnswer struct {
	Changes []struct {
		WorkerID      string   `json:"worker_id"`
		Kind          string   `json:"kind"`
		HrEventType   string   `json:"hr_event_type"`
		ChangedFields []string `json:"changed_fields"`
		EventID       string   `json:"event_id"`
	} `json:"changes"`
	DryRun bool `json:"dry_run"`
}

func (r reconcileAnswer) summary() string {
	var out []string
	for _, c := range r.Changes {
		out = append(out, c.WorkerID+":"+c.HrEventType+strings.Join(c.ChangedFields, "+"))
	}
	return strings.Join(out, " ")
}

func TestSnapshotReconcile(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	roster := string(readTestdata(t, "snapshot/roster.csv"))
	seeded := h.streamMsgs("tenure.hr.>")
	// E1 changed job (mover), E2 absent (leaver), E3 back (rehire), E4 new (joiner), E5 terminated (leaver).
	const want = "E1:job_changegiven_name+family_name+job_code E3:rehire E4:hire E5:termination E2:termination"

	a := h.post(delivery{endpoint: "snapshots", query: "?dry_run=true", id: "snap-1", secret: acmeSecret, body: roster, contentType: "text/csv"})
	var dry reconcileAnswer
	json.Unmarshal([]byte(a.Raw), &dry)
	if a.Status != http.StatusOK || !dry.DryRun || dry.summary() != want {
		t.Fatalf("dry run: %d %s\n got %s", a.Status, a.Raw, dry.summary())
	}
	if h.count("snapshots") != 0 || h.count("outbox") != 0 || h.worker("E2").GetStatus() != eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE {
		t.Fatal("a dry run changed something")
	}

	a = h.post(delivery{endpoint: "snapshots", id: "snap-1", secret: acmeSecret, body: roster, contentType: "text/csv; charset=utf-8"})
	var got reconcileAnswer
	json.Unmarshal([]byte(a.Raw), &got)
	if a.Status != http.StatusAccepted || got.summary() != want || got.Changes[4].EventID != "intake:snapshot:acme:snap-1:E2" {
		t.Fatalf("reconcile: %d %s", a.Status, a.Raw)
	}
	if _, err := h.svc.relay.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := h.streamMsgs("tenure.hr.>"); n != seeded+5 {
		t.Fatalf("%d new messages, want 5", n-seeded)
	}
	m, ev := h.lastMsg("tenure.hr.leaver.E2")
	if m.Header.Get(events.HeaderMsgID) != "intake:snapshot:acme:snap-1:E2" || ev.GetHrEventType() != "termination" || ev.GetWorker().GetJobCode() != "MD" {
		t.Fatalf("leaver %v %v", m.Header, ev)
	}
	_, ev = h.lastMsg("tenure.hr.joiner.E4")
	if ev.GetWorker().GetWorkerType() != eventsv1.WorkerType_WORKER_TYPE_CONTRACTOR || ev.GetWorker().GetEmail() != "barbara@vendor.example" {
		t.Fatalf("joiner %v", ev)
	}
	hist, _ := h.svc.GetHistory(context.Background(), "E2")
	if r := hist.Entries[len(hist.Entries)-1].GetReason(); r != "snapshot" {
		t.Fatalf("reason %q", r)
	}
	// The same snapshot again: a duplicate. The same roster under a new id: nothing to do.
	if a := h.post(delivery{endpoint: "snapshots", id: "snap-1", secret: acmeSecret, body: roster, contentType: "text/csv", ts: time.Now().Add(time.Second)}); a.Status != http.StatusOK || a.State != "duplicate" {
		t.Fatalf("replay: %d %s", a.Status, a.Raw)
	}
	a = h.post(delivery{endpoint: "snapshots", id: "snap-2", secret: acmeSecret, body: roster, contentType: "text/csv"})
	got = reconcileAnswer{}
	json.Unmarshal([]byte(a.Raw), &got)
	if a.Status != http.StatusAccepted || len(got.Changes) != 0 {
		t.Fatalf("second run: %d %s", a.Status, a.Raw)
	}
}

func TestSnapshotAsOfSkipsNewer(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	// A roster taken before E1's hire was recorded as effective leaves E1 alone, and one older
	// than E5's record too.
	body := `{"as_of":"2024-12-31T00:00:00Z","workers":[{"worker_id":"E2","status":"active"}]}`
	a := h.post(delivery{endpoint: "snapshots", query: "?dry_run=1", id: "old", secret: acmeSecret, body: body})
	var got struct {
		SkippedNewer int `json:"skipped_newer"`
		Changes      []any
	}
	json.Unmarshal([]byte(a.Raw), &got)
	if a.Status != http.StatusOK || got.SkippedNewer != 3 || len(got.Changes) != 0 {
		t.Fatalf("old roster: %d %s", a.Status, a.Raw)
	}
}

func TestSnapshotBadInput(t *testing.T) {
	h := newHarness(t)
	seedRegistry(t, h)
	tests := []struct {
		name  string
		d     delivery
		code  int
		field string
		msg   string
	}{
		{"unknown source", delivery{source: "nope", body: "worker_id\nE1\n", contentType: "text/csv", secret: acmeSecret}, 404, "source", "unknown webhook source"},
		{"wrong content type", delivery{body: "worker_id\nE1\n", contentType: "text/plain", secret: acmeSecret}, 415, "Content-Type", "text/csv or application/json"},
		{"unsigned", delivery{body: "worker_id\nE1\n", contentType: "text/csv"}, 401, "webhook-id", "missing"},
		{"bad signature", delivery{body: "worker_id\nE1\n", contentType: "text/csv", secret: newSecret}, 401, "webhook-signature", "no webhook-signature matches"},
		{"unknown column", delivery{body: "worker_id,shoe_size\nE1,44\n", contentType: "text/csv", secret: acmeSecret}, 400, "column shoe_size", `unknown column "shoe_size"`},
		{"no worker_id column", delivery{body: "email\na@b.org\n", contentType: "text/csv", secret: acmeSecret}, 400, "column worker_id", "no worker_id column"},
		{"empty roster", delivery{body: "worker_id\n", contentType: "text/csv", secret: acmeSecret}, 422, "workers", "refusing to terminate everyone"},
		{"bad email", delivery{body: "worker_id,email\nE1,not-an-email\n", contentType: "text/csv", secret: acmeSecret}, 422, "row 2.email", "not a bare email"},
		{"unknown status", delivery{body: "worker_id,status\nE1,retired\n", contentType: "text/csv", secret: acmeSecret}, 422, "row 2.status", `unknown status "retired"`},
		{"duplicate worker", delivery{body: "worker_id\nE1\nE1\n", contentType: "text/csv", secret: acmeSecret}, 422, "row 3.worker_id", "also in row 2"},
		{"new worker without type", delivery{body: "worker_id\nE1\nE9\n", contentType: "text/csv", secret: acmeSecret}, 422, "row 3.worker_type", "needs a worker_type"},
		{"JSON unknown field", delivery{body: `{"workers":[{"worker_id":"E1","shoe":"44"}]}`, secret: acmeSecret}, 400, "workers[0].shoe", `unknown field "workers[0].shoe"`},
		{"JSON wrong type", delivery{body: `{"workers":[{"worker_id":1}]}`, secret: acmeSecret}, 400, "workers[0].worker_id", "must be a string"},
		{"bad dry_run", delivery{query: "?dry_run=maybe", body: "worker_id\nE1\n", contentType: "text/csv", secret: acmeSecret}, 400, "dry_run", "true or false"},
		{"oversized", delivery{body: "worker_id\n" + strings.Repeat("E1234567\n", 5<<20/9), contentType: "text/csv", secret: acmeSecret}, 413, "body", "larger than"},
	}
	h.svc.cfg.MaxSnapshotBytes = 4 << 20
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hh := *h
			hh.t = t
			tt.d.endpoint = "snapshots"
			tt.d.id = fmt.Sprintf("bad-%d", i)
			a := hh.post(tt.d)
			if a.Status != tt.code || a.Field != tt.field || !strings.Contains(a.Error, tt.msg) {
				t.Fatalf("got %d field=%q %q; want %d field=%q containing %q", a.Status, a.Field, a.Error, tt.code, tt.field, tt.msg)
			}
		})
	}
	if h.count("snapshots") != 0 || h.count("outbox") != 0 {
		t.Fatal("a rejected roster stored something")
	}
	_ = intakev1.RosterFormat_ROSTER_FORMAT_CSV
}

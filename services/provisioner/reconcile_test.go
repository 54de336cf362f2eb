package provisioner

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func off() *time.Duration { d := time.Duration(0); return &d }

// findingKeys renders findings as "kind:username" in order.
func findingKeys(fs []*eventsv1.ReconcileFinding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Kind+":"+f.Username)
	}
	sort.Strings(out)
	return out
}

// findingEvents decodes every finding published for the connector so far.
func (h *host) findingEvents(t *testing.T, conn string) []*eventsv1.ReconcileFinding {
	t.Helper()
	ctx := context.Background()
	c, err := h.js.OrderedConsumer(ctx, natsx.EventsStream, jetstreamFilter("tenure.reconcile.finding."+conn))
	if err != nil {
		t.Fatal(err)
	}
	var out []*eventsv1.ReconcileFinding
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			var f eventsv1.ReconcileFinding
			if err := proto.Unmarshal(m.Data(), &f); err != nil {
				t.Fatal(err)
			}
			out = append(out, &f)
		}
		if n == 0 {
			return out
		}
	}
}

// Reconciliation against a real PostgreSQL target: accounts made behind tenure's back are
// orphans (and a generic name is a shared account), a leaver's account someone re-enabled is
// an orphan, a group nobody granted is drift; findings are stored, published once, and
// resolve when a later run no longer sees them.
func TestReconcileReportsOrphansSharedAndDrift(t *testing.T) {
	ctx := context.Background()
	pg := newPGTarget(t)
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{ReconcileInterval: off()})}})
	h.joiner(t, "w-ok", time.Now().Add(-time.Hour))
	h.grant(t, "w-ok", "g-ok", "ehr", pg.group)
	h.joiner(t, "w-gone", time.Now().Add(-time.Hour))
	h.grant(t, "w-gone", "g-gone", "ehr", pg.group)
	h.waitVerified(t, "w-ok", 1)
	h.waitVerified(t, "w-gone", 1)
	h.fire(t, "w-gone")
	h.waitCase(t, "w-gone", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	extra := pg.extra
	for _, r := range []string{"frontdesk", "stray", "oldtemp"} {
		pg.exec(t, `CREATE ROLE "`+pg.prefix+r+`" LOGIN`)
		t.Cleanup(func() { pg.pool.Exec(context.Background(), `DROP ROLE IF EXISTS "`+pg.prefix+r+`"`) })
	}
	pg.exec(t, `ALTER ROLE "`+pg.prefix+`oldtemp" NOLOGIN`) // disabled, still unlinked
	pg.exec(t, `ALTER ROLE "`+pg.prefix+`w-gone" LOGIN`)    // someone re-enabled a leaver
	pg.exec(t, `GRANT "`+extra+`" TO "`+pg.prefix+`w-ok"`)  // access nobody granted

	if _, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "connector is required") {
		t.Fatalf("Reconcile without connector: %v", err)
	}
	if _, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "nope"}); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Reconcile unknown connector: %v", err)
	}
	res, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"drift:w-ok", "orphan:frontdesk", "orphan:oldtemp", "orphan:stray", "orphan:w-gone", "shared:frontdesk"}
	if got := findingKeys(res.Findings); !slices.Equal(got, want) {
		t.Fatalf("findings %v, want %v", got, want)
	}
	if r := res.Run; r.Accounts != 5 || r.Findings != 6 || r.NewFindings != 6 || r.Resolved != 0 || r.Disabled != 0 || r.Trigger != TriggerManual || r.FinishedAt == nil {
		t.Fatalf("run %v", r)
	}
	for _, f := range res.Findings {
		switch f.Kind + ":" + f.Username {
		case "drift:w-ok":
			if !slices.Equal(f.Entitlements, []string{extra}) || !slices.Equal(f.WorkerIds, []string{"w-ok"}) {
				t.Errorf("drift %v", f)
			}
		case "orphan:w-gone":
			if !strings.Contains(f.Detail, "w-gone (TERMINATED)") || f.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
				t.Errorf("orphan %v", f)
			}
		case "shared:frontdesk":
			if !strings.Contains(f.Detail, "frontdesk*") {
				t.Errorf("shared %v", f)
			}
		case "orphan:oldtemp":
			if f.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED || f.DisableIssued {
				t.Errorf("orphan %v", f)
			}
		}
		if f.Status != "open" || f.System != "ehr" || f.RunId != res.Run.RunId {
			t.Errorf("finding %v", f)
		}
	}
	eventually(t, "six finding events", func() error {
		if n := len(h.findingEvents(t, "ehr")); n != 6 {
			return fmt.Errorf("%d events", n)
		}
		return nil
	})

	// Seen again: nothing new, nothing published.
	again, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Run.NewFindings != 0 || again.Run.Findings != 6 || again.Run.Resolved != 0 {
		t.Fatalf("second run %v", again.Run)
	}
	for i := range again.Findings {
		if again.Findings[i].FindingId != findByKey(res.Findings, again.Findings[i]).FindingId {
			t.Fatalf("finding %v got a new id", again.Findings[i])
		}
	}

	// Fixed at the target: the findings resolve.
	pg.exec(t, `DROP ROLE "`+pg.prefix+`stray"`)
	pg.exec(t, `REVOKE "`+extra+`" FROM "`+pg.prefix+`w-ok"`)
	third, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	if third.Run.Resolved != 2 || third.Run.Findings != 4 {
		t.Fatalf("third run %v", third.Run)
	}
	resolved, err := h.svc.ListFindings(ctx, &provisionerv1.ListFindingsRequest{Connector: "ehr", Status: "resolved"})
	if err != nil {
		t.Fatal(err)
	}
	if got := findingKeys(resolved.Findings); !slices.Equal(got, []string{"drift:w-ok", "orphan:stray"}) {
		t.Fatalf("resolved %v", got)
	}
	for _, f := range resolved.Findings {
		if f.ResolvedAt == nil || f.RunId != third.Run.RunId {
			t.Errorf("resolved finding %v", f)
		}
	}
	eventually(t, "resolutions published", func() error {
		evs := h.findingEvents(t, "ehr")
		if len(evs) != 8 || evs[6].Status != "resolved" || evs[7].Status != "resolved" {
			return fmt.Errorf("%d events", len(evs))
		}
		return nil
	})

	for _, tc := range []struct {
		req  *provisionerv1.ListFindingsRequest
		want []string
		err  string
	}{
		{&provisionerv1.ListFindingsRequest{Kind: "shared"}, []string{"shared:frontdesk"}, ""},
		{&provisionerv1.ListFindingsRequest{Connector: "ehr", Kind: "orphan", Status: "all"}, []string{"orphan:frontdesk", "orphan:oldtemp", "orphan:stray", "orphan:w-gone"}, ""},
		{&provisionerv1.ListFindingsRequest{Kind: "drift", Status: "open"}, nil, ""},
		{&provisionerv1.ListFindingsRequest{Kind: "ghost"}, nil, `kind "ghost"`},
		{&provisionerv1.ListFindingsRequest{Status: "closed"}, nil, `status "closed"`},
		{&provisionerv1.ListFindingsRequest{Connector: "nope"}, nil, `connector "nope"`},
	} {
		got, err := h.svc.ListFindings(ctx, tc.req)
		if tc.err != "" {
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ListFindings(%v) = %v, want InvalidArgument with %q", tc.req, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(findingKeys(got.GetFindings()), tc.want) {
			t.Errorf("ListFindings(%v) = %v, %v; want %v", tc.req, findingKeys(got.GetFindings()), err, tc.want)
		}
	}
}

func findByKey(fs []*eventsv1.ReconcileFinding, f *eventsv1.ReconcileFinding) *eventsv1.ReconcileFinding {
	for _, x := range fs {
		if x.Kind == f.Kind && x.Username == f.Username {
			return x
		}
	}
	return &eventsv1.ReconcileFinding{}
}

// With disable_orphans, enabled orphans are disabled through the ordinary command path and
// read back; the username of an account tenure never made becomes a tombstone.
func TestReconcileDisablesOrphansByPolicy(t *testing.T) {
	ctx := context.Background()
	pg := newPGTarget(t)
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{ReconcileInterval: off(), DisableOrphans: true})}})
	h.joiner(t, "w-x", time.Now().Add(-time.Hour))
	h.grant(t, "w-x", "g-x", "ehr", pg.group)
	h.joiner(t, "w-ok", time.Now().Add(-time.Hour))
	h.grant(t, "w-ok", "g-ok", "ehr", pg.group)
	h.waitVerified(t, "w-x", 1)
	h.waitVerified(t, "w-ok", 1)
	h.fire(t, "w-x")
	h.waitCase(t, "w-x", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	pg.exec(t, `ALTER ROLE "`+pg.prefix+`w-x" LOGIN`)
	pg.exec(t, `CREATE ROLE "`+pg.prefix+`stray" LOGIN`)
	t.Cleanup(func() { pg.pool.Exec(context.Background(), `DROP ROLE IF EXISTS "`+pg.prefix+`stray"`) })

	res, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Run.Disabled != 2 || !slices.Equal(findingKeys(res.Findings), []string{"orphan:stray", "orphan:w-x"}) {
		t.Fatalf("run %v, findings %v", res.Run, findingKeys(res.Findings))
	}
	for _, f := range res.Findings {
		if !f.DisableIssued {
			t.Errorf("finding %v: want disable_issued", f)
		}
	}
	eventually(t, "orphans disabled at the target", func() error {
		for _, r := range []string{"w-x", "stray"} {
			if on, ok := pg.login(t, r); !ok || on {
				return fmt.Errorf("%s: exists %v, can log in %v", r, ok, on)
			}
		}
		return nil
	})
	if on, _ := pg.login(t, "w-ok"); !on {
		t.Fatal("an active worker's account was disabled")
	}
	// The read-back is recorded after the target changed (with other finished commands).
	eventually(t, "stray's link recorded, disabled and verified", func() error {
		var linked string
		if err := pg.pool.QueryRow(ctx, "SELECT origin || '/' || desired_state || '/' || observed_state FROM links WHERE connector = 'ehr' AND username = 'stray'").Scan(&linked); err != nil {
			return err
		}
		if linked != "reconciled/disabled/disabled" {
			return fmt.Errorf("link %s", linked)
		}
		return nil
	})
	h.hasMessage(t, "tenure.revocation.account_disabled.w-x")

	// The re-disabled leaver is no longer a finding; the stray account stays one (nobody's).
	next, err := h.svc.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	if got := findingKeys(next.Findings); !slices.Equal(got, []string{"orphan:stray"}) || next.Run.Disabled != 0 || next.Run.Resolved != 1 {
		t.Fatalf("second run %v, findings %v", next.Run, got)
	}
	if !next.Findings[0].DisableIssued {
		t.Fatal("the stray finding forgot it was disabled")
	}
}

// Scheduled runs: each target is reconciled every reconcile_interval, and ListConnectors
// shows when it last ran.
func TestReconcileRunsOnSchedule(t *testing.T) {
	ctx := context.Background()
	pg := newPGTarget(t)
	every := 300 * time.Millisecond
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{ReconcileInterval: &every})}})
	pg.exec(t, `CREATE ROLE "`+pg.prefix+`kiosk1" LOGIN`)
	t.Cleanup(func() { pg.pool.Exec(context.Background(), `DROP ROLE IF EXISTS "`+pg.prefix+`kiosk1"`) })
	eventually(t, "two scheduled runs", func() error {
		var n int
		if err := pg.pool.QueryRow(ctx, "SELECT count(*) FROM reconcile_runs WHERE connector = 'ehr' AND trigger = 'schedule' AND finished_at IS NOT NULL AND error = ''").Scan(&n); err != nil {
			return err
		}
		if n < 2 {
			return fmt.Errorf("%d runs", n)
		}
		return nil
	})
	fs, err := h.svc.ListFindings(ctx, &provisionerv1.ListFindingsRequest{Connector: "ehr"})
	if err != nil {
		t.Fatal(err)
	}
	if got := findingKeys(fs.Findings); !slices.Equal(got, []string{"orphan:kiosk1", "shared:kiosk1"}) {
		t.Fatalf("findings %v", got)
	}
	var first, last time.Time
	if err := pg.pool.QueryRow(ctx, "SELECT min(started_at), max(started_at) FROM reconcile_runs").Scan(&first, &last); err != nil {
		t.Fatal(err)
	}
	if last.Sub(first) < every {
		t.Fatalf("runs %s apart, want at least %s", last.Sub(first), every)
	}
	cs, err := h.svc.ListConnectors(ctx, &provisionerv1.ListConnectorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if c := cs.Connectors[0]; c.LastReconciledAt == nil || c.NextReconcileAt == nil || c.Policy.ReconcileInterval.AsDuration() != every {
		t.Fatalf("connector %v", c)
	}
}

func jetstreamFilter(subject string) jetstream.OrderedConsumerConfig {
	return jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}}
}

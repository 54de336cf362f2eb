package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/manual"
	"github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// pgTarget is a real PostgreSQL-roles target: accounts are login roles named prefix+username,
// the entitlement group is group.
type pgTarget struct {
	url, prefix, group string
	// extra is a second group the connector manages but no test grants (drift).
	extra string
	pool  *pgxpool.Pool // the provisioner's pool on the same database, for direct checks
}

func newPGTarget(t *testing.T) *pgTarget {
	t.Helper()
	url := pgtest.NewDatabase(t)
	pool, err := pgstore.Connect(context.Background(), url, schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	prefix := fmt.Sprintf("l%d_%d_", os.Getpid()%10000, prefixN.Add(1))
	return &pgTarget{url: url, prefix: prefix, group: "g" + prefix + "readers", extra: "g" + prefix + "billing", pool: pool}
}

// target opens a fresh connector on the database (as a restarted provisioner would).
func (p *pgTarget) target(t *testing.T, name string, lc connector.Lifecycle) Target {
	t.Helper()
	conn, err := pgrole.New(context.Background(), pgrole.Config{URL: connector.SecretValue(p.url), RolePrefix: p.prefix, Groups: []string{p.group, p.extra}, CreateGroups: true})
	if err != nil {
		t.Fatal(err)
	}
	return Target{Name: name, Type: "postgres", System: name, Conn: conn,
		Policy: connector.Policy{BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, MaxAttempts: 1000, Lifecycle: lc}}
}

// login reports the role's rolcanlogin, or false, false when the role does not exist, read
// from pg_roles directly, not through tenure.
func (p *pgTarget) login(t *testing.T, username string) (canLogin, exists bool) {
	t.Helper()
	err := p.pool.QueryRow(context.Background(), "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", p.prefix+username).Scan(&canLogin)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return canLogin, true
}

func (p *pgTarget) exec(t *testing.T, sql string) {
	t.Helper()
	if _, err := p.pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// startOn runs a provisioner with cfg on pool and a fresh embedded NATS server; stop ends it
// (and waits) before the test does, like a restart.
func startOn(t *testing.T, pool *pgxpool.Pool, cfg Config) (h *host, stop func()) {
	t.Helper()
	ns := natstest.Start(t)
	if cfg.BackOff == nil {
		cfg.BackOff, cfg.MaxDeliver = []time.Duration{50 * time.Millisecond}, 1000
	}
	if cfg.SchedulerInterval == 0 {
		cfg.SchedulerInterval = 50 * time.Millisecond
	}
	svc, err := New(context.Background(), cfg, Deps{Pool: pool, JS: ns.JS})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	var once bool
	stop = func() {
		if !once {
			once = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return &host{svc: svc, js: ns.JS, pool: pool}, stop
}

func (h *host) grant(t *testing.T, worker, grantID, conn string, ents ...string) {
	h.publish(t, events.Subject("tenure.access", "grant", worker), worker, &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
		WorkerId: worker, GrantId: grantID, Connector: conn, System: conn, Entitlements: ents})
}

func (h *host) joiner(t *testing.T, worker string, effective time.Time) {
	h.publish(t, events.Subject("tenure.hr", "joiner", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
		HrEventType: "hire", Worker: &eventsv1.Worker{WorkerId: worker, Email: worker + "@hospital.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		EffectiveTime: timestamppb.New(effective)})
}

// rehire is what intake publishes for a rehire: a joiner whose HR type says the worker who
// left comes back (a hire alone never brings a leaver back).
func (h *host) rehire(t *testing.T, worker string, effective time.Time) {
	h.publish(t, events.Subject("tenure.hr", "joiner", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
		HrEventType: "rehire", Worker: &eventsv1.Worker{WorkerId: worker, Email: worker + "@hospital.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		EffectiveTime: timestamppb.New(effective)})
}

// rescind is what intake publishes for a termination_rescinded.
func (h *host) rescind(t *testing.T, worker string) {
	h.publish(t, events.Subject("tenure.hr", "rescind", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND,
		HrEventType: "termination_rescinded", Worker: &eventsv1.Worker{WorkerId: worker, Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		EffectiveTime: timestamppb.Now()})
}

// lastPayload decodes the newest message on subject.
func (h *host) lastPayload(t *testing.T, subject string, m proto.Message) {
	t.Helper()
	h.hasMessage(t, subject)
	st, err := h.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := st.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatal(err)
	}
	if err := proto.Unmarshal(raw.Data, m); err != nil {
		t.Fatal(err)
	}
}

func (h *host) accounts(t *testing.T, worker string) []*provisionerv1.Account {
	t.Helper()
	res, err := h.svc.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
	if err != nil {
		t.Fatal(err)
	}
	return res.Accounts
}

// A leaver's account in a target whose policy says delete_after is disabled at once, deleted
// after the grace period (confirmed by the role being gone from pg_roles), and its username
// is never handed out again, not even to the same worker when rehired.
func TestDisableThenDeleteAfterGracePeriod(t *testing.T) {
	pg := newPGTarget(t)
	const grace = 1500 * time.Millisecond
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{DeleteAfter: grace})}})
	h.joiner(t, "w-del", time.Now().Add(-time.Hour))
	h.grant(t, "w-del", "g1", "ehr", pg.group)
	h.waitVerified(t, "w-del", 1)
	user := h.accounts(t, "w-del")[0].Username

	h.fire(t, "w-del")
	c := h.waitCase(t, "w-del", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if on, ok := pg.login(t, user); !ok || on {
		t.Fatalf("after the leaver: role exists %v, can log in %v; want disabled and kept during the grace period", ok, on)
	}
	if len(c.Deletions) != 1 || c.Deletions[0].Status != "scheduled" || c.Deletions[0].Username != user {
		t.Fatalf("deletions after the leaver: %v", c.Deletions)
	}
	if due := c.Deletions[0].DueAt.AsTime().Sub(c.OpenedAt.AsTime()); due != grace {
		t.Fatalf("deletion due %s after the case opened, want %s", due, grace)
	}
	h.hasMessage(t, "tenure.case.deletion_scheduled.w-del")

	eventually(t, "role dropped and deletion confirmed", func() error {
		if _, ok := pg.login(t, user); ok {
			return errors.New("role still exists")
		}
		c := h.leaverCase(t, "w-del")
		if d := c.Deletions[0]; d.Status != "deleted" || d.CompletedAt == nil {
			return fmt.Errorf("deletion %v", d)
		}
		a := h.accounts(t, "w-del")[0]
		if a.DesiredState != eventsv1.AccountState_ACCOUNT_STATE_ABSENT || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ABSENT || a.ObservedGeneration != a.Generation {
			return fmt.Errorf("account %v", a)
		}
		return nil
	})
	if time.Since(c.OpenedAt.AsTime()) < grace {
		t.Fatal("deleted before the grace period ended")
	}
	var del eventsv1.AccountDeletion
	h.lastPayload(t, "tenure.case.deletion_deleted.w-del", &del)
	if del.Username != user || del.Connector != "ehr" || del.CaseId != c.CaseId || del.Status != "deleted" {
		t.Fatalf("deletion event %v", &del)
	}
	h.hasMessage(t, "tenure.provision.ehr.delete")
	var res eventsv1.ProvisionResult
	h.lastPayload(t, "tenure.result.ehr.verified", &res)
	if res.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ABSENT {
		t.Fatalf("last verified result %v, want the deletion read back as absent", &res)
	}

	// Rehired: a new account under a username nobody had; the old name stays unused.
	h.rehire(t, "w-del", time.Now())
	h.grant(t, "w-del", "g2", "ehr", pg.group)
	eventually(t, "rehire provisioned", func() error {
		for _, a := range h.accounts(t, "w-del") {
			if a.DesiredState == eventsv1.AccountState_ACCOUNT_STATE_ENABLED && a.ObservedState == eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
				if a.Username == user {
					return fmt.Errorf("username %s reused", user)
				}
				return nil
			}
		}
		return fmt.Errorf("accounts %v", h.accounts(t, "w-del"))
	})
	if _, ok := pg.login(t, user); ok {
		t.Fatalf("the deleted role %s came back", user)
	}
	if n := len(h.accounts(t, "w-del")); n != 2 {
		t.Fatalf("%d links, want the tombstone and the new one", n)
	}
}

// The due time is stored: a provisioner stopped during the grace period deletes the account
// after a restart, at the time first set.
func TestScheduledDeletionSurvivesRestart(t *testing.T) {
	pg := newPGTarget(t)
	const grace = 2 * time.Second
	h, stop := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{DeleteAfter: grace})}})
	h.joiner(t, "w-rs", time.Now().Add(-time.Hour))
	h.grant(t, "w-rs", "g1", "ehr", pg.group)
	h.waitVerified(t, "w-rs", 1)
	user := h.accounts(t, "w-rs")[0].Username
	h.fire(t, "w-rs")
	c := h.waitCase(t, "w-rs", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	due := c.Deletions[0].DueAt.AsTime()
	stop()
	if time.Now().After(due) {
		t.Fatal("the test was too slow to stop before the deletion was due")
	}
	if _, ok := pg.login(t, user); !ok {
		t.Fatal("deleted before the restart")
	}

	h2, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{DeleteAfter: grace})}})
	eventually(t, "deleted after the restart", func() error {
		if _, ok := pg.login(t, user); ok {
			return errors.New("role still exists")
		}
		if d := h2.leaverCase(t, "w-rs").Deletions[0]; d.Status != "deleted" {
			return fmt.Errorf("deletion %v", d)
		}
		return nil
	})
	if d := h2.leaverCase(t, "w-rs").Deletions[0]; !d.DueAt.AsTime().Equal(due) || d.CompletedAt.AsTime().Before(due) {
		t.Fatalf("deletion %v: want it done at or after the stored due time %s", d, due)
	}
}

// HR rescinds the termination within the grace period: the account the leaver disabled can
// log in again, the pending deletion is cancelled and stays cancelled past its due time.
func TestRescindWithinGraceReenablesAndCancelsDeletion(t *testing.T) {
	ctx := context.Background()
	pg := newPGTarget(t)
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{DeleteAfter: time.Hour})}})
	h.joiner(t, "w-rc", time.Now().Add(-time.Hour))
	h.grant(t, "w-rc", "g1", "ehr", pg.group)
	h.waitVerified(t, "w-rc", 1)
	user := h.accounts(t, "w-rc")[0].Username
	h.fire(t, "w-rc")
	h.waitCase(t, "w-rc", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if on, _ := pg.login(t, user); on {
		t.Fatal("leaver's role can still log in")
	}

	h.rescind(t, "w-rc")
	eventually(t, "account re-enabled", func() error {
		if on, ok := pg.login(t, user); !ok || !on {
			return fmt.Errorf("role exists %v, can log in %v", ok, on)
		}
		a := h.accounts(t, "w-rc")[0]
		if a.DesiredState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED || a.ObservedGeneration != a.Generation {
			return fmt.Errorf("account %v", a)
		}
		return nil
	})
	c := h.leaverCase(t, "w-rc")
	if c.RescindedAt == nil || len(c.Deletions) != 1 || c.Deletions[0].Status != "cancelled" || c.Deletions[0].Reason != "termination rescinded" {
		t.Fatalf("case after rescind: %v", c)
	}
	var ce eventsv1.CaseEvent
	h.lastPayload(t, "tenure.case.rescinded.w-rc", &ce)
	if ce.CaseId != c.CaseId || ce.Accounts != 1 {
		t.Fatalf("rescinded event %v", &ce)
	}
	h.hasMessage(t, "tenure.case.deletion_cancelled.w-rc")

	// Past the original due time nothing is deleted.
	if _, err := pg.pool.Exec(ctx, "UPDATE deletions SET due_at = now() - interval '1 minute'"); err != nil {
		t.Fatal(err)
	}
	if n, err := h.svc.issueDueDeletions(ctx); err != nil || n != 0 {
		t.Fatalf("issueDueDeletions = %d, %v; want nothing issued", n, err)
	}
	time.Sleep(200 * time.Millisecond)
	if on, ok := pg.login(t, user); !ok || !on {
		t.Fatalf("after the old due time: role exists %v, can log in %v", ok, on)
	}
}

// A rescind while the case is still open (the target has not confirmed the disable) closes
// the case as rescinded: it raises no overdue alert and the account ends enabled.
func TestRescindClosesAnOpenCase(t *testing.T) {
	ctx := context.Background()
	e := start(t)
	e.join(t, "w-oc")
	state := func() (connector.AccountState, error) {
		a, err := e.target.GetAccount(ctx, connector.AccountRef{Username: "w-oc"})
		return a.State, err
	}
	eventually(t, "account verified", func() error {
		if st, err := state(); err != nil || st != connector.StateEnabled {
			return fmt.Errorf("state %v, %v", st, err)
		}
		return nil
	})
	e.target.lie.Store(true) // the disable is never confirmed
	e.leave(t, "w-oc")
	eventually(t, "case open with a failing account", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-oc"})
		if err != nil {
			return err
		}
		if a := res.LeaverCase.Accounts; len(a) != 1 || a[0].Attempts == 0 {
			return fmt.Errorf("case %v", res.LeaverCase)
		}
		return nil
	})
	e.publish(t, events.Subject("tenure.hr", "rescind", "w-oc"), "w-oc", &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_RESCIND,
		HrEventType: "termination_rescinded", Worker: &eventsv1.Worker{WorkerId: "w-oc", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, EffectiveTime: timestamppb.Now()})
	eventually(t, "case closed as rescinded", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-oc"})
		if err != nil {
			return err
		}
		if c := res.LeaverCase; c.RescindedAt == nil || c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	e.target.lie.Store(false)
	eventually(t, "account enabled", func() error {
		if st, err := state(); err != nil || st != connector.StateEnabled {
			return fmt.Errorf("state %v, %v", st, err)
		}
		return nil
	})
	if _, err := e.pool.Exec(ctx, "UPDATE cases SET deadline = now() - interval '1 hour'"); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.alertOverdue(ctx); err != nil {
		t.Fatal(err)
	}
	var alerted int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM cases WHERE overdue_alerted_at IS NOT NULL").Scan(&alerted); err != nil || alerted != 0 {
		t.Fatalf("overdue alerts on a rescinded case: %d, %v", alerted, err)
	}
}

// getOnly is a target that can read and disable accounts, nothing more.
type getOnly struct{ connector.Connector }

func (getOnly) DisableAccount(context.Context, connector.AccountRef) error { return nil }

func TestLifecyclePolicyNeedsTheCapabilities(t *testing.T) {
	pg := newPGTarget(t)
	base := pg.target(t, "ehr", connector.Lifecycle{})
	day := 24 * time.Hour
	for _, tc := range []struct {
		name string
		lc   connector.Lifecycle
		want string
	}{
		{"delete", connector.Lifecycle{DeleteAfter: time.Hour}, "policy.delete_after: connector type postgres cannot delete accounts"},
		{"reconcile", connector.Lifecycle{ReconcileInterval: &day}, "policy.reconcile_interval: connector type postgres cannot list accounts"},
		{"orphans", connector.Lifecycle{DisableOrphans: true}, "policy.disable_orphans: connector type postgres cannot list and disable accounts"},
		{"negative", connector.Lifecycle{DeleteAfter: -time.Hour}, "policy.delete_after: must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := base
			tg.Conn = getOnly{base.Conn}
			tg.Policy.Lifecycle = tc.lc
			_, err := New(context.Background(), Config{Targets: []Target{tg}}, Deps{Pool: pg.pool, JS: natstest.Start(t).JS})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `target "ehr"`) {
				t.Fatalf("New = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// A manual target deletes by a person too: the due deletion becomes a delete task, and only
// the operator's attestation confirms it.
func TestManualDeletionWaitsForTheAttestation(t *testing.T) {
	ctx := context.Background()
	legacy, err := manual.New(manual.Config{Instructions: "LabSys console"})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	h, _ := startOn(t, pool, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, System: "lab", Conn: legacy,
		Policy: connector.Policy{Lifecycle: connector.Lifecycle{DeleteAfter: 300 * time.Millisecond}}}}})
	op := asOperator("op-ann")
	h.hire(t, "w-md", "legacy")
	complete := func(task *provisionerv1.ManualTask) {
		t.Helper()
		if _, err := h.svc.CompleteManualTask(op, &provisionerv1.CompleteManualTaskRequest{TaskId: task.TaskId, Evidence: task.Operation + " done, CHG-7"}); err != nil {
			t.Fatal(err)
		}
	}
	complete(h.openTask(t, "w-md", connector.CapCreate))
	h.waitVerified(t, "w-md", 1)
	h.fire(t, "w-md")
	complete(h.openTask(t, "w-md", connector.CapDisable))
	h.waitCase(t, "w-md", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	del := h.openTask(t, "w-md", connector.CapDelete)
	time.Sleep(200 * time.Millisecond)
	if d := h.leaverCase(t, "w-md").Deletions[0]; d.Status != "issued" {
		t.Fatalf("deletion before the attestation: %v", d)
	}
	complete(del)
	eventually(t, "deletion confirmed by the attestation", func() error {
		if d := h.leaverCase(t, "w-md").Deletions[0]; d.Status != "deleted" {
			return fmt.Errorf("deletion %v", d)
		}
		if a := h.accounts(t, "w-md")[0]; a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ABSENT {
			return fmt.Errorf("account %v", a)
		}
		return nil
	})
}

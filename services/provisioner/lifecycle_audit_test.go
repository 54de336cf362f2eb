package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/manual"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// Lifecycle audit: a rescind, a leave of absence and the manual tasks and deadlines of a
// leaver case, each against the decisions tenure made before it.

func (h *host) revokeGrant(t *testing.T, worker, grantID, conn string) {
	h.publish(t, events.Subject("tenure.access", "revoke", worker), worker, &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_REVOKE,
		WorkerId: worker, GrantId: grantID, Connector: conn, System: conn})
}

// hrEvent publishes an HR event of kind for the worker, now in status st.
func (h *host) hrEvent(t *testing.T, worker string, kind eventsv1.WorkerEventKind, st eventsv1.WorkerStatus) {
	token := strings.ToLower(strings.TrimPrefix(kind.String(), "WORKER_EVENT_KIND_"))
	h.publish(t, events.Subject("tenure.hr", token, worker), worker, &eventsv1.WorkerEvent{Kind: kind,
		Worker: &eventsv1.Worker{WorkerId: worker, Status: st}, EffectiveTime: timestamppb.Now()})
}

// desired is a link's desired state as tenure stores it.
type desired struct {
	state        string
	entitlements []string
	generation   int64
}

func (h *host) desiredLink(t *testing.T, worker, conn string) desired {
	t.Helper()
	var d desired
	if err := h.pool.QueryRow(context.Background(), `SELECT desired_state, desired_entitlements, generation FROM links
		WHERE worker_id = $1 AND connector = $2`, worker, conn).Scan(&d.state, &d.entitlements, &d.generation); err != nil {
		t.Fatalf("link of %s in %s: %v", worker, conn, err)
	}
	return d
}

func memState(mem *connectortest.Memory, username string) (connector.AccountState, error) {
	a, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: username})
	return a.State, err
}

func waitMemState(t *testing.T, what string, mem *connectortest.Memory, username string, want connector.AccountState) {
	t.Helper()
	eventually(t, what, func() error {
		st, err := memState(mem, username)
		if err != nil || st != want {
			return fmt.Errorf("%s is %v (%v), want %v", username, st, err, want)
		}
		return nil
	})
}

// alertCount is how many messages the events stream holds on subject.
func (h *host) alertCount(t *testing.T, subject string) uint64 {
	t.Helper()
	st, err := h.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

// A rescinded termination re-enables only the accounts a grant still explains: one whose
// grants were all revoked before the termination (an access review) stays disabled.
func TestRescindKeepsRevokedAccountDisabled(t *testing.T) {
	revoked, kept := connectortest.NewMemory("readers"), connectortest.NewMemory("readers")
	h := startHost(t, Config{Targets: []Target{{Name: "a", Type: "memory", Conn: revoked}, {Name: "b", Type: "memory", Conn: kept}}})
	h.hire(t, "w-rr", "a", "b")
	h.waitVerified(t, "w-rr", 2)
	h.revokeGrant(t, "w-rr", "g-w-rr-a", "a")
	waitMemState(t, "revoked account disabled", revoked, "w-rr", connector.StateDisabled)
	h.fire(t, "w-rr")
	h.waitCase(t, "w-rr", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	waitMemState(t, "leaver's granted account disabled", kept, "w-rr", connector.StateDisabled)

	h.rescind(t, "w-rr")
	waitMemState(t, "granted account re-enabled after the rescind", kept, "w-rr", connector.StateEnabled)
	// The rescind decided both links in one transaction: the revoked one was not touched.
	if d := h.desiredLink(t, "w-rr", "a"); d.state != stateDisabled {
		t.Fatalf("link without an active grant wants %v after the rescind", d)
	}
	time.Sleep(300 * time.Millisecond) // a command for it would have run by now
	if st, err := memState(revoked, "w-rr"); err != nil || st != connector.StateDisabled {
		t.Fatalf("account with no active grant is %v (%v) after the rescind", st, err)
	}
	var ce eventsv1.CaseEvent
	h.lastPayload(t, "tenure.case.rescinded.w-rr", &ce)
	if ce.Accounts != 1 {
		t.Fatalf("rescinded event counts %d re-enabled accounts, want 1", ce.Accounts)
	}
}

// A worker on leave keeps every account disabled: revoking one of two grants does not
// re-enable the suspended account, a new grant is recorded (in a target the worker had no
// account in too) and takes effect when the leave ends.
func TestLeaveKeepsAccountsDisabledUntilItEnds(t *testing.T) {
	mem, other := connectortest.NewMemory("readers", "writers", "admins"), connectortest.NewMemory("readers")
	h := startHost(t, Config{Targets: []Target{{Name: "a", Type: "memory", Conn: mem}, {Name: "b", Type: "memory", Conn: other}}})
	h.hire(t, "w-lv", "a")
	h.grant(t, "w-lv", "g2", "a", "writers")
	eventually(t, "two entitlements", func() error {
		a, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: "w-lv"})
		if err != nil || len(a.Entitlements) != 2 {
			return fmt.Errorf("account %v, %v", a, err)
		}
		return nil
	})
	h.hrEvent(t, "w-lv", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE)
	waitMemState(t, "suspended", mem, "w-lv", connector.StateDisabled)
	suspended := h.desiredLink(t, "w-lv", "a")

	h.revokeGrant(t, "w-lv", "g2", "a")
	h.grant(t, "w-lv", "g3", "a", "admins")
	h.grant(t, "w-lv", "g4", "b", "readers")
	eventually(t, "decisions recorded", func() error {
		d := h.desiredLink(t, "w-lv", "a")
		if !slices.Equal(d.entitlements, []string{"admins", "readers"}) {
			return fmt.Errorf("link a wants %v", d)
		}
		var n int
		if err := h.pool.QueryRow(context.Background(), "SELECT count(*) FROM links WHERE worker_id = 'w-lv' AND connector = 'b'").Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%d links in b, %v", n, err)
		}
		return nil
	})
	if d := h.desiredLink(t, "w-lv", "a"); d.state != stateDisabled {
		t.Fatalf("on leave, after a revoke and a grant, link a wants %v (suspended at %v)", d, suspended)
	}
	if d := h.desiredLink(t, "w-lv", "b"); d.state != stateDisabled {
		t.Fatalf("on leave, a grant in a new target wants %v", d)
	}
	// The revoke takes its entitlement away at once, the account staying disabled; the new
	// grant waits for the leave's end.
	eventually(t, "the revoked entitlement gone from the disabled account", func() error {
		a, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: "w-lv"})
		if err != nil || a.State != connector.StateDisabled || !slices.Equal(a.Entitlements, []string{"readers"}) {
			return fmt.Errorf("account %+v, %v", a, err)
		}
		return nil
	})
	if _, err := other.GetAccount(context.Background(), connector.AccountRef{Username: "w-lv"}); !errors.Is(err, connector.ErrNotFound) {
		t.Fatalf("a grant during the leave created an account: %v", err)
	}

	h.hrEvent(t, "w-lv", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE)
	h.waitVerified(t, "w-lv", 2)
	a, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: "w-lv"})
	if err != nil || a.State != connector.StateEnabled || !slices.Equal(slices.Sorted(slices.Values(a.Entitlements)), []string{"admins", "readers"}) {
		t.Fatalf("after the leave: %+v, %v", a, err)
	}
	if st, err := memState(other, "w-lv"); err != nil || st != connector.StateEnabled {
		t.Fatalf("account granted during the leave is %v (%v) after it", st, err)
	}
}

// A manual disable task opened for a leave of absence is superseded, with its reason, when the
// worker returns before an operator did it: it is no longer listed and never alerts overdue.
func TestLeaveEndSupersedesManualDisableTask(t *testing.T) {
	legacy, err := manual.New(manual.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, System: "lab", Conn: legacy}}, OverdueInterval: time.Hour})
	ctx := context.Background()
	h.hire(t, "w-st", "legacy")
	create := h.openTask(t, "w-st", connector.CapCreate)
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "CHG-1"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-st", 1)
	h.hrEvent(t, "w-st", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE)
	disable := h.openTask(t, "w-st", connector.CapDisable)
	h.hrEvent(t, "w-st", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE)
	h.waitVerified(t, "w-st", 1)

	res, err := h.svc.ListTasks(ctx, &provisionerv1.ListTasksRequest{WorkerId: "w-st"})
	if err != nil || len(res.Tasks) != 0 {
		t.Fatalf("open tasks after the worker returned and the account verified enabled: %v, %v", res.GetTasks(), err)
	}
	var st, reason string
	if err := h.pool.QueryRow(ctx, "SELECT status, superseded_reason FROM tasks WHERE task_id = $1", disable.TaskId).Scan(&st, &reason); err != nil {
		t.Fatal(err)
	}
	if st != "superseded" || !strings.Contains(reason, "leave of absence ended") || !strings.Contains(reason, "enabled") {
		t.Fatalf("disable task is %s (%q)", st, reason)
	}
	// Past its deadline it raises nothing.
	if _, err := h.pool.Exec(ctx, "UPDATE tasks SET deadline = now() - interval '1 minute' WHERE task_id = $1", disable.TaskId); err != nil {
		t.Fatal(err)
	}
	if err := h.svc.alertOverdueTasks(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := h.alertCount(t, "tenure.alert.task_overdue.w-st"); n != 0 {
		t.Fatalf("%d overdue alerts for a superseded task", n)
	}
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, Evidence: "CHG-2"}); err == nil {
		t.Fatal("a superseded task was completed")
	}
}

// A task for entitlements the account should no longer get is replaced: the open create task
// asks for the entitlements of the latest decision, the old one records why it was closed.
func TestEntitlementChangeSupersedesOpenTask(t *testing.T) {
	legacy, err := manual.New(manual.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, Conn: legacy}}})
	ctx := context.Background()
	h.hire(t, "w-en", "legacy")
	first := h.openTask(t, "w-en", connector.CapCreate)
	h.grant(t, "w-en", "g2", "legacy", "writers")
	var second *provisionerv1.ManualTask
	eventually(t, "create task for both entitlements", func() error {
		res, err := h.svc.ListTasks(ctx, &provisionerv1.ListTasksRequest{WorkerId: "w-en"})
		if err != nil || len(res.Tasks) != 1 || res.Tasks[0].TaskId == first.TaskId {
			return fmt.Errorf("open tasks %v, %v", res.GetTasks(), err)
		}
		second = res.Tasks[0]
		return nil
	})
	var reason string
	var ents []string
	if err := h.pool.QueryRow(ctx, "SELECT superseded_reason FROM tasks WHERE task_id = $1", first.TaskId).Scan(&reason); err != nil || !strings.Contains(reason, "grant g2") {
		t.Fatalf("first task's reason %q, %v", reason, err)
	}
	if err := h.pool.QueryRow(ctx, "SELECT desired_entitlements FROM tasks WHERE task_id = $1", second.TaskId).Scan(&ents); err != nil || !slices.Equal(ents, []string{"readers", "writers"}) {
		t.Fatalf("second task asks for %v, %v", ents, err)
	}
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: second.TaskId, Evidence: "CHG-3"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-en", 1)
}

// A command older than its link's desired state opens no task: the decision that changed the
// state closed the old tasks, so a late command must not open one for the old state.
func TestOpenTaskRefusesAnOperationTheLinkNoLongerWants(t *testing.T) {
	legacy, err := manual.New(manual.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, Conn: legacy}}})
	ctx := context.Background()
	h.hire(t, "w-late-cmd", "legacy")
	create := h.openTask(t, "w-late-cmd", connector.CapCreate)
	q := &taskQueue{s: h.svc, target: h.svc.targets["legacy"]}
	_, err = q.OpenTask(ctx, connector.TaskRequest{Op: connector.CapDisable, Ref: connector.AccountRef{Username: create.Username}})
	if !errors.Is(err, errSuperseded) {
		t.Fatalf("disable task for an account that should be enabled: %v", err)
	}
	if id, err := q.OpenTask(ctx, connector.TaskRequest{Op: connector.CapCreate, Ref: connector.AccountRef{Username: create.Username}}); err != nil || id != create.TaskId {
		t.Fatalf("OpenTask for the wanted operation = %q, %v; want the open task %s", id, err, create.TaskId)
	}
}

// A rescind supersedes the case's open task of an account it re-enables.
func TestRescindSupersedesTheDisableTask(t *testing.T) {
	legacy, err := manual.New(manual.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, Conn: legacy}}})
	ctx := context.Background()
	h.hire(t, "w-rs", "legacy")
	create := h.openTask(t, "w-rs", connector.CapCreate)
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "CHG-1"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-rs", 1)
	h.fire(t, "w-rs")
	disable := h.openTask(t, "w-rs", connector.CapDisable)
	h.rescind(t, "w-rs")
	h.waitVerified(t, "w-rs", 1)
	var st, reason string
	if err := h.pool.QueryRow(ctx, "SELECT status, superseded_reason FROM tasks WHERE task_id = $1", disable.TaskId).Scan(&st, &reason); err != nil {
		t.Fatal(err)
	}
	if st != "superseded" || !strings.HasPrefix(reason, "termination rescinded") {
		t.Fatalf("disable task after the rescind: %s (%q)", st, reason)
	}
	if c := h.leaverCase(t, "w-rs"); c.RescindedAt == nil {
		t.Fatalf("case %v", c)
	}
}

// failingDisableTarget is a memory target whose disables fail (retryably) for ever.
func failingDisableTarget() (*connectortest.Memory, connector.Policy) {
	mem := connectortest.NewMemory("readers")
	mem.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapDisable {
			return connector.Retryable(errors.New("503"))
		}
		return nil
	}
	return mem, connector.Policy{BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxAttempts: 1000}
}

// A leaver's automatic disable that keeps failing raises tenure.alert.deprovision_overdue
// once, past the deadline.
func TestDeprovisionOverdueAlertForAutomaticDisable(t *testing.T) {
	mem, policy := failingDisableTarget()
	h := startHost(t, Config{Targets: []Target{{Name: "ehr", Type: "memory", Conn: mem, Policy: policy}},
		CaseDeadline: 500 * time.Millisecond, OverdueInterval: 50 * time.Millisecond})
	h.hire(t, "w-oa", "ehr")
	h.waitVerified(t, "w-oa", 1)
	h.fire(t, "w-oa")
	var alert eventsv1.CaseEvent
	h.lastPayload(t, "tenure.alert.deprovision_overdue.w-oa", &alert)
	c := h.leaverCase(t, "w-oa")
	if alert.CaseId != c.CaseId || alert.WorkerId != "w-oa" || alert.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN ||
		!alert.Deadline.AsTime().Equal(c.Deadline.AsTime()) || time.Now().Before(c.Deadline.AsTime()) {
		t.Fatalf("alert %v for case %v", &alert, c)
	}
	if d := c.Deadline.AsTime().Sub(c.OpenedAt.AsTime()); d != 500*time.Millisecond {
		t.Fatalf("case deadline %v after it opened, want the automatic 500ms", d)
	}
	time.Sleep(300 * time.Millisecond) // several more checks
	if n := h.alertCount(t, "tenure.alert.deprovision_overdue.w-oa"); n != 1 {
		t.Fatalf("%d overdue alerts, want 1", n)
	}
	if len(alert.OverdueAccounts) != 1 || !strings.HasPrefix(alert.OverdueAccounts[0], "ehr/") {
		t.Fatalf("alert names %v, want the EHR account", alert.OverdueAccounts)
	}
}

// Each account of a case has its own deadline from its target; the case's is the latest.
func TestCaseAccountsHaveTheirOwnDeadlines(t *testing.T) {
	mem, policy := failingDisableTarget()
	legacy, err := manual.New(manual.Config{Deadline: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "ehr", Type: "memory", Conn: mem, Policy: policy}, {Name: "legacy", Type: manual.TypeName, Conn: legacy}},
		CaseDeadline: 500 * time.Millisecond})
	h.hire(t, "w-dl", "ehr", "legacy")
	create := h.openTask(t, "w-dl", connector.CapCreate)
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "CHG-1"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-dl", 2)
	h.fire(t, "w-dl")
	c := h.waitCase(t, "w-dl", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN)
	opened := c.OpenedAt.AsTime()
	if d := c.Deadline.AsTime().Sub(opened); d != time.Minute {
		t.Fatalf("case deadline %v after it opened, want the latest account's (1m)", d)
	}
	rows, err := h.pool.Query(context.Background(), `SELECT l.connector, a.deadline FROM case_accounts a JOIN links l USING (link_id) WHERE a.case_id = $1`, c.CaseId)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]time.Duration{}
	for rows.Next() {
		var conn string
		var dl time.Time
		if err := rows.Scan(&conn, &dl); err != nil {
			t.Fatal(err)
		}
		got[conn] = dl.Sub(opened)
	}
	if rows.Err() != nil || len(got) != 2 || got["ehr"] != 500*time.Millisecond || got["legacy"] != time.Minute {
		t.Fatalf("account deadlines after the case opened: %v, %v", got, rows.Err())
	}
}

// With a manual account in the case, an automatic disable that keeps failing still raises
// tenure.alert.deprovision_overdue at its own (automatic) deadline, naming that account.
func TestOverdueAutomaticDisableNotHiddenByManualAccount(t *testing.T) {
	mem, policy := failingDisableTarget()
	legacy, err := manual.New(manual.Config{Deadline: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "ehr", Type: "memory", Conn: mem, Policy: policy}, {Name: "legacy", Type: manual.TypeName, Conn: legacy}},
		CaseDeadline: 500 * time.Millisecond, OverdueInterval: 50 * time.Millisecond})
	h.hire(t, "w-om", "ehr", "legacy")
	create := h.openTask(t, "w-om", connector.CapCreate)
	if _, err := h.svc.CompleteManualTask(asOperator("op"), &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "CHG-1"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-om", 2)
	h.fire(t, "w-om")
	time.Sleep(3 * time.Second)
	if h.alertCount(t, "tenure.alert.deprovision_overdue.w-om") == 0 {
		c := h.leaverCase(t, "w-om")
		t.Fatalf("EHR disable failing for 3s past the 500ms automatic deadline, no deprovision_overdue (case deadline %v after open)", c.Deadline.AsTime().Sub(c.OpenedAt.AsTime()))
	}
	var alert eventsv1.CaseEvent
	h.lastPayload(t, "tenure.alert.deprovision_overdue.w-om", &alert)
	if len(alert.OverdueAccounts) != 1 || !strings.HasPrefix(alert.OverdueAccounts[0], "ehr/") {
		t.Fatalf("alert names %v, want only the EHR account (the manual one is within its hour)", alert.OverdueAccounts)
	}
}

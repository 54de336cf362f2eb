package provisioner

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/manual"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func (h *host) openTask(t *testing.T, worker, op string) *provisionerv1.ManualTask {
	t.Helper()
	var task *provisionerv1.ManualTask
	eventually(t, worker+": open "+op+" task", func() error {
		res, err := h.svc.ListTasks(context.Background(), &provisionerv1.ListTasksRequest{WorkerId: worker, Connector: "legacy"})
		if err != nil {
			return err
		}
		if len(res.Tasks) != 1 || res.Tasks[0].Operation != op {
			return fmt.Errorf("open tasks %v", res.Tasks)
		}
		task = res.Tasks[0]
		return nil
	})
	return task
}

// A manual account is created and disabled by an operator; its state counts only once the
// operator attested it, so the leaver case waits for the attestation.
func TestManualTasksCompleteOnlyWithAnAttestation(t *testing.T) {
	legacy, err := manual.New(manual.Config{Instructions: "LabSys console → Users"})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{
		Targets: []Target{
			{Name: "legacy", Type: manual.TypeName, System: "lab", Conn: legacy},
			{Name: "saas", Type: "memory", Conn: connectortest.NewMemory("readers")},
		},
		CaseDeadline:    5 * time.Minute,
		OverdueInterval: 50 * time.Millisecond,
	})
	ctx := context.Background()
	op := asOperator("op-ann")
	h.hire(t, "w-m", "legacy", "saas")

	create := h.openTask(t, "w-m", connector.CapCreate)
	if create.System != "lab" || create.Username != "w-m" || create.Instructions != "LabSys console → Users" || create.Overdue ||
		create.Deadline.AsTime().Sub(create.CreatedAt.AsTime()) != manual.DefaultDeadline {
		t.Fatalf("create task %v", create)
	}
	h.hasMessage(t, "tenure.case.task_opened.w-m")
	if _, err := h.svc.CompleteManualTask(op, &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "created in LabSys, ticket CHG-1"}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-m", 2)

	h.fire(t, "w-m")
	disable := h.openTask(t, "w-m", connector.CapDisable)
	var c *provisionerv1.LeaverCase
	eventually(t, "saas verified, legacy waiting", func() error {
		res, err := h.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-m"})
		if err != nil {
			return err
		}
		c = res.LeaverCase
		st := map[string]string{}
		for _, a := range c.Accounts {
			st[a.Connector] = a.Status
		}
		if st["saas"] != "verified" || st["legacy"] != "waiting" {
			return fmt.Errorf("accounts %v", c.Accounts)
		}
		return nil
	})
	if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN || disable.CaseId != c.CaseId {
		t.Fatalf("case %v, task %v", c, disable)
	}
	// A case with a manual account gets the manual deadline, not the 5-minute automatic one.
	if d := c.Deadline.AsTime().Sub(c.OpenedAt.AsTime()); d != manual.DefaultDeadline {
		t.Fatalf("case deadline %s after opening, want %s", d, manual.DefaultDeadline)
	}

	// Nothing but an operator's well-formed attestation completes it.
	sum := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		ctx  context.Context
		req  *provisionerv1.CompleteManualTaskRequest
		code codes.Code
	}{
		{ctx, &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, Evidence: "done"}, codes.Unauthenticated},
		{authn.WithPrincipal(ctx, authn.Principal{Name: "aud", Roles: []authn.Role{authn.RoleAuditor}}), &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, Evidence: "done"}, codes.PermissionDenied},
		{op, &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId}, codes.InvalidArgument},
		{op, &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, EvidenceSha256: "not-hex"}, codes.InvalidArgument},
		{op, &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, Evidence: "x", EvidenceFileName: "shot.png"}, codes.InvalidArgument},
		{op, &provisionerv1.CompleteManualTaskRequest{TaskId: "nope", Evidence: "done"}, codes.NotFound},
		{op, &provisionerv1.CompleteManualTaskRequest{TaskId: create.TaskId, Evidence: "again"}, codes.FailedPrecondition},
	} {
		if _, err := h.svc.CompleteManualTask(tc.ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("CompleteTask(%v) = %v, want %v", tc.req, err, tc.code)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if c := h.leaverCase(t, "w-m"); c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN {
		t.Fatalf("case completed without an attestation: %v", c)
	}

	res, err := h.svc.CompleteManualTask(op, &provisionerv1.CompleteManualTaskRequest{TaskId: disable.TaskId, Evidence: "disabled in LabSys; screenshot attached to CHG-2",
		EvidenceSha256: sum, EvidenceFileName: "labsys-disabled.png"})
	if err != nil {
		t.Fatal(err)
	}
	at := res.Task.Attestation
	if res.Task.Status != "completed" || at.CompletedBy != "op-ann" || at.EvidenceSha256 != sum || at.CompletedAt == nil {
		t.Fatalf("completed task %v", res.Task)
	}
	c = h.waitCase(t, "w-m", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	for _, a := range c.Accounts {
		if a.Status != "verified" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
			t.Errorf("case account %v", a)
		}
	}
	h.hasMessage(t, "tenure.case.task_completed.w-m")
	h.hasMessage(t, "tenure.revocation.account_disabled.w-m")
	done, err := h.svc.ListTasks(ctx, &provisionerv1.ListTasksRequest{Status: "completed", WorkerId: "w-m"})
	if err != nil || len(done.Tasks) != 2 || done.Tasks[0].Operation != connector.CapDisable || done.Tasks[0].Attestation.EvidenceFileName != "labsys-disabled.png" {
		t.Fatalf("completed tasks %v, %v", done, err)
	}
	if _, err := h.svc.ListTasks(ctx, &provisionerv1.ListTasksRequest{Status: "someday"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ListTasks with a bad status = %v", err)
	}
}

// A task past its deadline alerts once.
func TestOverdueTaskAlertsOnce(t *testing.T) {
	legacy, err := manual.New(manual.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "legacy", Type: manual.TypeName, Conn: legacy}}, OverdueInterval: 50 * time.Millisecond})
	h.hire(t, "w-late", "legacy")
	task := h.openTask(t, "w-late", connector.CapCreate)
	if _, err := h.pool.Exec(context.Background(), "UPDATE tasks SET deadline = now() - interval '1 second' WHERE task_id = $1", task.TaskId); err != nil {
		t.Fatal(err)
	}
	h.hasMessage(t, "tenure.alert.task_overdue.w-late")
	overdue, err := h.svc.ListTasks(context.Background(), &provisionerv1.ListTasksRequest{Status: "overdue"})
	if err != nil || len(overdue.Tasks) != 1 || !overdue.Tasks[0].Overdue {
		t.Fatalf("overdue tasks %v, %v", overdue, err)
	}
	time.Sleep(300 * time.Millisecond) // several more overdue checks
	st, err := h.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter("tenure.alert.task_overdue.w-late"))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects["tenure.alert.task_overdue.w-late"]; n != 1 {
		t.Fatalf("%d overdue alerts, want exactly 1", n)
	}
	msg, err := st.GetLastMsgForSubject(context.Background(), "tenure.alert.task_overdue.w-late")
	if err != nil {
		t.Fatal(err)
	}
	var alert provisionerv1.ManualTask
	if err := proto.Unmarshal(msg.Data, &alert); err != nil || alert.TaskId != task.TaskId {
		t.Fatalf("alert payload %v, %v", &alert, err)
	}
}

package provisioner

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// Every ProvisioningService method has an authorization rule: a method without one would be
// refused to everyone (or, worse, allowed), and reconciling (it may disable accounts) is an
// operator's alone.
func TestEveryMethodHasAnAuthRule(t *testing.T) {
	rules := (&Service{}).AuthRules()
	for _, m := range provisionerv1.ProvisioningService_ServiceDesc.Methods {
		name := "/" + provisionerv1.ProvisioningService_ServiceDesc.ServiceName + "/" + m.MethodName
		if len(rules[name]) == 0 {
			t.Errorf("no authorization rule for %s", name)
		}
	}
	for _, m := range []string{provisionerv1.ProvisioningService_Reconcile_FullMethodName, provisionerv1.ProvisioningService_RetryTask_FullMethodName,
		provisionerv1.ProvisioningService_CompleteManualTask_FullMethodName} {
		if r := rules[m]; len(r) != 1 || r[0] != "operator" {
			t.Errorf("%s: roles %v, want operator only", m, r)
		}
	}
}

// ListQueues shows a queue that is stuck: the command in flight, how old it is, and the
// account failing; all of it clears once the target behaves. The age comes from the stream
// where the NATS user may read it, and otherwise from the commands the provisioner holds.
func TestListQueuesShowsBacklogAgeAndFailures(t *testing.T) {
	for _, mode := range []string{"stream read", "held commands"} {
		t.Run(mode, func(t *testing.T) { listQueuesStuck(t, mode == "held commands") })
	}
}

func listQueuesStuck(t *testing.T, held bool) {
	ctx := context.Background()
	e := start(t)
	e.svc.rawReadDenied.Store(held)
	e.join(t, "w-q")
	eventually(t, "account verified", func() error {
		res, err := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w-q"})
		if err != nil || len(res.Accounts) != 1 || res.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v, %v", res.GetAccounts(), err)
		}
		return nil
	})
	queue := func() *provisionerv1.Queue {
		t.Helper()
		res, err := e.svc.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil || len(res.Queues) != 1 {
			t.Fatalf("ListQueues = %v, %v", res, err)
		}
		return res.Queues[0]
	}
	eventually(t, "queue drained", func() error {
		if q := queue(); q.InFlight != 0 || q.Pending != 0 || q.OldestAge.AsDuration() != 0 || q.Failed != 0 {
			return fmt.Errorf("queue %v", q)
		}
		return nil
	})
	e.target.lie.Store(true)
	e.leave(t, "w-q")
	eventually(t, "stuck command visible", func() error {
		q := queue()
		if q.InFlight != 1 || q.Failed != 1 || q.OldestAge.AsDuration() < 300*time.Millisecond || q.Connector != "demo" || q.ConnectorType != "postgres" {
			return fmt.Errorf("queue %v", q)
		}
		return nil
	})
	// The age is the stuck command's: it grows while the command stays.
	first := queue().OldestAge.AsDuration()
	time.Sleep(200 * time.Millisecond)
	if later := queue().OldestAge.AsDuration(); later < first+150*time.Millisecond {
		t.Fatalf("oldest age %v, then %v after 200 ms", first, later)
	}
	if e.svc.rawReadDenied.Load() != held {
		t.Fatalf("raw reads denied = %v, want %v (the test server lets every user read)", !held, held)
	}
	e.target.lie.Store(false)
	eventually(t, "queue clear again", func() error {
		if q := queue(); q.InFlight != 0 || q.Failed != 0 || q.OldestAge.AsDuration() != 0 {
			return fmt.Errorf("queue %v", q)
		}
		return nil
	})
}

// ListConnectors probes each target: a webhook receiver answering 503 is down with its error
// and time, a healthy PostgreSQL target is up; the last error stays after recovery.
func TestListConnectorsProbesHealth(t *testing.T) {
	ctx := context.Background()
	var down atomic.Bool
	down.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		http.Error(w, "no such account", http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	hook, err := webhook.New(webhook.Config{URL: srv.URL, Secret: connector.SecretValue("whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef01234567")))})
	if err != nil {
		t.Fatal(err)
	}
	pg := newPGTarget(t)
	week := 7 * 24 * time.Hour
	ehr := pg.target(t, "ehr", connector.Lifecycle{DeleteAfter: week, DisableOrphans: true, SharedPatterns: []string{"desk*"}})
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{ehr,
		{Name: "roster", Type: webhook.TypeName, System: "rostering", Conn: hook, Policy: connector.Policy{MaxAttempts: 1}}}})

	list := func() map[string]*provisionerv1.ConnectorInfo {
		t.Helper()
		res, err := h.svc.ListConnectors(ctx, &provisionerv1.ListConnectorsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*provisionerv1.ConnectorInfo{}
		for _, c := range res.Connectors {
			out[c.Name] = c
		}
		return out
	}
	cs := list()
	if len(cs) != 2 {
		t.Fatalf("connectors %v", cs)
	}
	e, r := cs["ehr"], cs["roster"]
	if !e.Health.Healthy || e.Health.LastError != "" || e.Health.CheckedAt == nil || e.Type != "postgres" || e.System != "ehr" {
		t.Fatalf("ehr %v", e)
	}
	if p := e.Policy; p.DeleteAfter.AsDuration() != week || !p.DisableOrphans || p.ReconcileInterval.AsDuration() != connector.DefaultReconcileInterval ||
		strings.Join(p.SharedPatterns, ",") != "desk*" || p.Concurrency != connector.DefaultConcurrency || p.MaxAttempts != 1000 {
		t.Fatalf("ehr policy %v", p)
	}
	for _, c := range []string{"get", "create", "disable", "enable", "delete", "entitlements", "sessions", "list"} {
		if !strings.Contains(strings.Join(e.Capabilities, ","), c) {
			t.Errorf("ehr capabilities %v lack %s", e.Capabilities, c)
		}
	}
	if e.NextReconcileAt == nil || e.LastReconciledAt != nil {
		t.Errorf("ehr schedule: next %v, last %v", e.NextReconcileAt, e.LastReconciledAt)
	}
	if r.Health.Healthy || !strings.Contains(r.Health.LastError, "503") || r.Health.LastErrorAt == nil || r.Type != "webhook" || r.System != "rostering" {
		t.Fatalf("roster while down %v", r)
	}
	failedAt := r.Health.LastErrorAt.AsTime()

	down.Store(false)
	r = list()["roster"]
	if !r.Health.Healthy || !r.Health.LastErrorAt.AsTime().Equal(failedAt) || !r.Health.CheckedAt.AsTime().After(failedAt) {
		t.Fatalf("roster after recovery %v", r)
	}
}

// RetryTask re-drives failed work, one account or a whole case; bad requests are named.
func TestRetryTaskRedrivesAFailedCase(t *testing.T) {
	ctx := context.Background()
	var broken atomic.Bool
	mem := connectortest.NewMemory("readers")
	mem.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapDisable && broken.Load() {
			return connector.Permanent(fmt.Errorf("403 Forbidden"))
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	h.hire(t, "w-rt", "saas")
	h.waitVerified(t, "w-rt", 1)
	broken.Store(true)
	h.fire(t, "w-rt")
	var caseID string
	eventually(t, "case account failed", func() error {
		res, err := h.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w-rt"})
		if err != nil {
			return err
		}
		c := res.LeaverCase
		if len(c.Accounts) != 1 || c.Accounts[0].Status != "failed" {
			return fmt.Errorf("case %v", c)
		}
		caseID = c.CaseId
		return nil
	})
	for _, tc := range []struct {
		req  *provisionerv1.RetryTaskRequest
		code codes.Code
		want string
	}{
		{&provisionerv1.RetryTaskRequest{}, codes.InvalidArgument, "exactly one of link_id and case_id"},
		{&provisionerv1.RetryTaskRequest{LinkId: "a", CaseId: "b"}, codes.InvalidArgument, "exactly one of link_id and case_id"},
		{&provisionerv1.RetryTaskRequest{CaseId: "nope"}, codes.NotFound, `"nope"`},
		{&provisionerv1.RetryTaskRequest{LinkId: "nope"}, codes.NotFound, `"nope"`},
	} {
		if _, err := h.svc.RetryTask(asOperator("op-ann"), tc.req); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RetryTask(%v) = %v, want %v with %q", tc.req, err, tc.code, tc.want)
		}
	}
	if _, err := h.svc.RetryTask(ctx, &provisionerv1.RetryTaskRequest{CaseId: caseID}); status.Code(err) != codes.Unauthenticated && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("RetryTask without a principal: %v", err)
	}
	broken.Store(false)
	res, err := h.svc.RetryTask(asOperator("op-ann"), &provisionerv1.RetryTaskRequest{CaseId: caseID})
	if err != nil || len(res.CommandIds) != 1 {
		t.Fatalf("RetryTask = %v, %v", res, err)
	}
	h.waitCase(t, "w-rt", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if _, err := h.svc.RetryTask(asOperator("op-ann"), &provisionerv1.RetryTaskRequest{CaseId: caseID}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("RetryTask on a completed case: %v", err)
	}
}

package provisioner

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var prefixN atomic.Int32

// lyingConnector answers "ok" to a disable but leaves the account enabled, like a SaaS
// target that accepts a PATCH and ignores it.
type lyingConnector struct {
	*pgrole.Connector
	lie atomic.Bool
}

func (l *lyingConnector) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	if l.lie.Load() {
		return nil
	}
	return l.Connector.DisableAccount(ctx, ref)
}

type env struct {
	svc    *Service
	pool   *pgxpool.Pool
	js     jetstream.JetStream
	target *lyingConnector
	prefix string
	url    string // superuser URL of the target database
}

func start(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	prefix := fmt.Sprintf("p%d_%d_", os.Getpid()%10000, prefixN.Add(1))
	conn, err := pgrole.New(ctx, pgrole.Config{URL: connector.SecretValue(url), RolePrefix: prefix, Groups: []string{"g" + prefix + "readers"}, CreateGroups: true})
	if err != nil {
		t.Fatal(err)
	}
	target := &lyingConnector{Connector: conn}
	pool, err := pgstore.Connect(ctx, url, schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	// A lying target is retried until it behaves: attempts are cheap and many here.
	fast := connector.Policy{BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, MaxAttempts: 1000}
	svc, js := run(t, pool, Config{Targets: []Target{{Name: "demo", Type: "postgres", System: "reporting", Conn: target, Policy: fast}}})
	return &env{svc: svc, pool: pool, js: js, target: target, prefix: prefix, url: url}
}

// run starts a provisioner with cfg on a fresh embedded NATS server until the test ends.
func run(t *testing.T, pool *pgxpool.Pool, cfg Config) (*Service, jetstream.JetStream) {
	t.Helper()
	ns := natstest.Start(t)
	if cfg.BackOff == nil {
		cfg.BackOff, cfg.MaxDeliver = []time.Duration{50 * time.Millisecond}, 1000
	}
	svc, err := New(context.Background(), cfg, Deps{Pool: pool, JS: ns.JS})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return svc, ns.JS
}

func (e *env) publish(t *testing.T, subject, worker string, payload proto.Message) {
	t.Helper()
	id := events.NewID()
	msg, err := events.Msg(context.Background(), events.Event{ID: id, Subject: subject, Source: "test", WorkerID: worker, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func (e *env) join(t *testing.T, worker string) {
	e.publish(t, events.Subject("tenure.hr", "joiner", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
		Worker: &eventsv1.Worker{WorkerId: worker, Email: worker + "@hospital.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, EffectiveTime: timestamppb.New(time.Now().Add(-time.Hour))})
	e.publish(t, events.Subject("tenure.access", "grant", worker), worker, &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
		WorkerId: worker, GrantId: "g-" + worker, Connector: "demo", System: "reporting", Entitlements: []string{"g" + e.prefix + "readers"}})
}

func (e *env) leave(t *testing.T, worker string) {
	e.publish(t, events.Subject("tenure.hr", "leaver", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER,
		Worker: &eventsv1.Worker{WorkerId: worker, Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED}, EffectiveTime: timestamppb.Now()})
}

func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

func (e *env) account(t *testing.T, worker string) connector.Account {
	t.Helper()
	res, err := e.svc.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
	if err != nil || len(res.Accounts) != 1 {
		t.Fatalf("ListAccounts = %v, %v", res, err)
	}
	a, err := e.target.GetAccount(context.Background(), connector.AccountRef{Username: res.Accounts[0].Username})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestGrantCreatesVerifiedAccountAndLeaverDisablesIt(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.join(t, "w1")
	eventually(t, "account verified enabled", func() error {
		res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w1"})
		if len(res.GetAccounts()) != 1 || res.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
	a := e.account(t, "w1")
	if a.State != connector.StateEnabled || a.Username != "w1" || len(a.Entitlements) != 1 {
		t.Fatalf("target account %+v", a)
	}

	e.leave(t, "w1")
	eventually(t, "case completed", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w1"})
		if err != nil {
			return err
		}
		c := res.LeaverCase
		if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED || len(c.Accounts) != 1 || c.Accounts[0].Status != "verified" {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	if a := e.account(t, "w1"); a.State != connector.StateDisabled {
		t.Fatalf("target account after leaver: %v", a.State)
	}
	// The revocation stream carries the termination, the disable and the completion.
	// The outbox relay publishes after the commit the case status came from: wait for it.
	st, _ := e.js.Stream(ctx, natsx.EventsStream)
	for _, subj := range []string{"tenure.revocation.worker_terminated.w1", "tenure.revocation.account_disabled.w1", "tenure.revocation.session_revoked.w1",
		"tenure.revocation.case_completed.w1", "tenure.case.opened.w1", "tenure.case.completed.w1", "tenure.result.demo.verified"} {
		eventually(t, "message on "+subj, func() error {
			_, err := st.GetLastMsgForSubject(ctx, subj)
			return err
		})
	}
	// A grant arriving after the termination never re-enables the account.
	e.publish(t, events.Subject("tenure.access", "grant", "w1"), "w1", &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
		WorkerId: "w1", GrantId: "late", Connector: "demo", System: "reporting"})
	time.Sleep(500 * time.Millisecond)
	if a := e.account(t, "w1"); a.State != connector.StateDisabled {
		t.Fatal("late grant re-enabled a leaver's account")
	}
}

// A target that says "ok" and does nothing is caught at read-back; the case stays open with
// the error visible and completes once the target behaves.
func TestReadBackCatchesIgnoredDisable(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.join(t, "w2")
	eventually(t, "account created", func() error {
		res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w2"})
		if len(res.GetAccounts()) != 1 || res.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	e.target.lie.Store(true)
	e.leave(t, "w2")
	eventually(t, "failure visible", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w2"})
		if err != nil {
			return err
		}
		a := res.LeaverCase.Accounts[0]
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN || a.Attempts < 2 || !strings.Contains(a.LastError, "read-back") {
			return fmt.Errorf("case %v", res.LeaverCase)
		}
		return nil
	})
	e.target.lie.Store(false)
	eventually(t, "case completes after the target behaves", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w2"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", res.LeaverCase.Status)
		}
		return nil
	})
	if a := e.account(t, "w2"); a.State != connector.StateDisabled {
		t.Fatal("account still enabled")
	}
}

// Accounts found outside tenure join the case too.
func TestLeaverCoversReconciledAccounts(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	// An account someone made by hand, found by reconciliation.
	acct, err := e.target.CreateAccount(ctx, connector.AccountSpec{Username: "w3-admin", WorkerID: "w3"})
	if err != nil {
		t.Fatal(err)
	}
	e.join(t, "w3")
	e.join(t, "w4")
	// Both known to the provisioner: their joiner accounts exist.
	eventually(t, "joiners", func() error {
		for _, w := range []string{"w3", "w4"} {
			if res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: w}); len(res.GetAccounts()) != 1 {
				return fmt.Errorf("%s: accounts %v", w, res.GetAccounts())
			}
		}
		return nil
	})
	op := asOperator("op-lin")
	link := func(ctx context.Context, worker, username, reason string) (*provisionerv1.LinkAccountResponse, error) {
		return e.svc.LinkAccount(ctx, &provisionerv1.LinkAccountRequest{Connector: "demo", WorkerId: worker, Username: username, Reason: reason})
	}
	// Refused, each with a reason an operator can act on, and nothing linked.
	for _, c := range []struct {
		ctx                      context.Context
		worker, username, reason string
		code                     codes.Code
		says                     string
	}{
		{ctx, "w3", "w3-admin", "CHG-7", codes.Unauthenticated, "authenticated"},
		{op, "w3", "w3-admin", " ", codes.InvalidArgument, "reason is required"},
		{op, "", "w3-admin", "CHG-7", codes.InvalidArgument, "worker_id is required"},
		{op, "w-nobody", "w3-admin", "CHG-7", codes.NotFound, "not known to tenure"},
		{op, "w3", "no-such-account", "CHG-7", codes.NotFound, "has no account"},
	} {
		if _, err := link(c.ctx, c.worker, c.username, c.reason); status.Code(err) != c.code || !strings.Contains(err.Error(), c.says) {
			t.Errorf("LinkAccount(%q, %q, %q) = %v; want %v saying %q", c.worker, c.username, c.reason, err, c.code, c.says)
		}
	}
	res, err := link(op, "w3", "w3-admin", "CHG-7: the admin account of w3, confirmed with their manager")
	if err != nil {
		t.Fatal(err)
	}
	if res.Account.GetWorkerId() != "w3" || res.Account.GetUsername() != "w3-admin" || res.CaseId != "" {
		t.Fatalf("LinkAccount = %v", res)
	}
	var linked eventsv1.AccountLinked
	eventually(t, "tenure.reconcile.linked published", func() error {
		st, err := e.js.Stream(ctx, natsx.EventsStream)
		if err != nil {
			return err
		}
		raw, err := st.GetLastMsgForSubject(ctx, "tenure.reconcile.linked.w3")
		if err != nil {
			return err
		}
		return proto.Unmarshal(raw.Data, &linked)
	})
	if linked.LinkedBy != "op-lin" || linked.AccountId != acct.ID || !strings.HasPrefix(linked.Reason, "CHG-7") {
		t.Fatalf("ledger event %v", &linked)
	}
	// Linked to w3, it is not w4's.
	if _, err := link(op, "w4", "w3-admin", "CHG-8"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), `"w3"`) {
		t.Fatalf("linking w3's account to w4: %v", err)
	}
	// An orphan that disable_orphans holds with a worker-less link takes its worker.
	if _, err := e.target.CreateAccount(ctx, connector.AccountSpec{Username: "w4-old"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.pool.Exec(ctx, `INSERT INTO links (link_id, worker_id, connector, username, origin, desired_state, observed_state)
		VALUES ('lk-orphan', '', 'demo', 'w4-old', 'reconciled', 'disabled', 'enabled')`); err != nil {
		t.Fatal(err)
	}
	if res, err := link(op, "w4", "w4-old", "CHG-9"); err != nil || res.Account.GetLinkId() != "lk-orphan" || res.Account.GetWorkerId() != "w4" {
		t.Fatalf("linking an orphan's worker-less link: %v, %v", res, err)
	}
	eventually(t, "joiner account", func() error {
		res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w3"})
		if len(res.GetAccounts()) != 2 {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
	e.leave(t, "w3")
	eventually(t, "both disabled", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "w3"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED || len(res.LeaverCase.Accounts) != 2 {
			return fmt.Errorf("case %v", res.LeaverCase)
		}
		return nil
	})
	a, _ := e.target.GetAccount(ctx, connector.AccountRef{Username: "w3-admin"})
	if a.State != connector.StateDisabled {
		t.Fatal("reconciled account not disabled")
	}
	// One found after the case completed is disabled too: the worker has left.
	if _, err := e.target.CreateAccount(ctx, connector.AccountSpec{Username: "w3-late", WorkerID: "w3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := link(op, "w3", "w3-late", "CHG-10: found after the case"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "late account disabled", func() error {
		if a, err := e.target.GetAccount(ctx, connector.AccountRef{Username: "w3-late"}); err != nil || a.State != connector.StateDisabled {
			return fmt.Errorf("w3-late: %v, %v", a, err)
		}
		return nil
	})
	q, err := e.svc.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
	if err != nil || len(q.Queues) != 1 || q.Queues[0].Connector != "demo" {
		t.Fatalf("ListQueues = %v, %v", q, err)
	}
}

// A leaver with no accounts completes at once.
func TestLeaverWithoutAccounts(t *testing.T) {
	e := start(t)
	e.leave(t, "w4")
	eventually(t, "empty case completes", func() error {
		res, err := e.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: "w4"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("status %v", res.LeaverCase.Status)
		}
		return nil
	})
}

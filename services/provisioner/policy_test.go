package provisioner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// host is a provisioner with arbitrary targets, driven by published events.
type host struct {
	svc  *Service
	js   jetstream.JetStream
	pool *pgxpool.Pool
}

func startHost(t *testing.T, cfg Config) *host {
	t.Helper()
	pool, err := pgstore.Connect(context.Background(), pgtest.NewDatabase(t), schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	svc, js := run(t, pool, cfg)
	return &host{svc: svc, js: js, pool: pool}
}

func (h *host) publish(t *testing.T, subject, worker string, payload proto.Message) {
	t.Helper()
	msg, err := events.Msg(context.Background(), events.Event{ID: events.NewID(), Subject: subject, Source: "test", WorkerID: worker, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// hire makes the worker active and grants it access in each connector.
func (h *host) hire(t *testing.T, worker string, conns ...string) {
	h.publish(t, events.Subject("tenure.hr", "joiner", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
		Worker:        &eventsv1.Worker{WorkerId: worker, Email: worker + "@hospital.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE},
		EffectiveTime: timestamppb.New(time.Now().Add(-time.Hour))})
	for _, c := range conns {
		h.publish(t, events.Subject("tenure.access", "grant", worker), worker, &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
			WorkerId: worker, GrantId: "g-" + worker + "-" + c, Connector: c, System: c, Entitlements: []string{"readers"}})
	}
}

func (h *host) fire(t *testing.T, worker string) {
	h.publish(t, events.Subject("tenure.hr", "leaver", worker), worker, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVER,
		Worker: &eventsv1.Worker{WorkerId: worker, Status: eventsv1.WorkerStatus_WORKER_STATUS_TERMINATED}, EffectiveTime: timestamppb.Now()})
}

func (h *host) waitVerified(t *testing.T, worker string, n int) {
	t.Helper()
	eventually(t, worker+": accounts verified enabled", func() error {
		res, err := h.svc.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if len(res.Accounts) != n {
			return fmt.Errorf("%d accounts", len(res.Accounts))
		}
		for _, a := range res.Accounts {
			if a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED || a.ObservedGeneration != a.Generation {
				return fmt.Errorf("account %v", a)
			}
		}
		return nil
	})
}

func (h *host) leaverCase(t *testing.T, worker string) *provisionerv1.LeaverCase {
	t.Helper()
	res, err := h.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
	if err != nil {
		t.Fatal(err)
	}
	return res.LeaverCase
}

func (h *host) waitCase(t *testing.T, worker string, want eventsv1.LeaverCaseStatus) *provisionerv1.LeaverCase {
	t.Helper()
	var c *provisionerv1.LeaverCase
	eventually(t, worker+": case "+want.String(), func() error {
		res, err := h.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if c = res.LeaverCase; c.Status != want {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	return c
}

func (h *host) hasMessage(t *testing.T, subject string) {
	t.Helper()
	st, err := h.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "message on "+subject, func() error {
		_, err := st.GetLastMsgForSubject(context.Background(), subject)
		return err
	})
}

type call struct {
	op, user string
	at       time.Time
}

// calls records every operation a Memory target sees.
type calls struct {
	mu  sync.Mutex
	all []call
}

func (c *calls) add(op string, ref connector.AccountRef) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all = append(c.all, call{op: op, user: ref.Username, at: time.Now()})
	n := 0
	for _, x := range c.all {
		if x.op == op && x.user == ref.Username {
			n++
		}
	}
	return n
}

func (c *calls) of(op, user string) []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []time.Time
	for _, x := range c.all {
		if x.op == op && x.user == user {
			out = append(out, x.at)
		}
	}
	return out
}

// A target that answers 429 with Retry-After is left alone for as long as it asked, every call
// respects the target's rate limit, and the disable still ends verified.
func TestRetryAfterAndRateLimitAreHonoured(t *testing.T) {
	const retryAfter = 500 * time.Millisecond
	var rec calls
	mem := connectortest.NewMemory("readers")
	mem.Inject = func(op string, ref connector.AccountRef) error {
		if n := rec.add(op, ref); op == connector.CapDisable && n <= 2 {
			return connector.RetryableAfter(errors.New("429 Too Many Requests"), retryAfter)
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem,
		Policy: connector.Policy{Rate: 10, Burst: 1, BackoffInitial: 10 * time.Millisecond, MaxAttempts: 10}}}})
	h.hire(t, "w-ra", "saas")
	h.waitVerified(t, "w-ra", 1)
	h.fire(t, "w-ra")
	c := h.waitCase(t, "w-ra", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	disables := rec.of(connector.CapDisable, "w-ra")
	if len(disables) != 3 {
		t.Fatalf("%d disable calls, want 3 (two 429s, then success)", len(disables))
	}
	for i := 1; i < len(disables); i++ {
		if gap := disables[i].Sub(disables[i-1]); gap < retryAfter {
			t.Errorf("disable %d came %s after the 429, Retry-After was %s", i+1, gap, retryAfter)
		}
	}
	rec.mu.Lock()
	for i := 1; i < len(rec.all); i++ {
		// Rate 10/s with burst 1: calls are at least 100ms apart (a little slack for timers).
		if gap := rec.all[i].at.Sub(rec.all[i-1].at); gap < 90*time.Millisecond {
			t.Errorf("calls %d and %d (%s, %s) only %s apart under a 10/s limit", i, i+1, rec.all[i-1].op, rec.all[i].op, gap)
		}
	}
	rec.mu.Unlock()
	if a := c.Accounts[0]; a.Status != "verified" || a.Attempts < 3 {
		t.Fatalf("case account %v: want verified after 3 attempts", a)
	}
	h.hasMessage(t, "tenure.result.saas.failed")
	h.hasMessage(t, "tenure.revocation.account_disabled.w-ra")
}

func asOperator(name string) context.Context {
	return authn.WithPrincipal(context.Background(), authn.Principal{Name: name, Roles: []authn.Role{authn.RoleOperator}})
}

// Permanent errors are not retried, and exhausted retries stop: both land in the dead letters
// and on the case as failed, and an operator re-drives them.
func TestFailuresAreDeadLetteredAndOperatorsRedriveThem(t *testing.T) {
	var rec calls
	var broken atomic.Bool
	broken.Store(true)
	mem := connectortest.NewMemory("readers")
	mem.Inject = func(op string, ref connector.AccountRef) error {
		rec.add(op, ref)
		if op != connector.CapDisable || !broken.Load() {
			return nil
		}
		if ref.Username == "w-perm" {
			return connector.Permanent(errors.New("403 Forbidden: token lacks users:write"))
		}
		return connector.Retryable(errors.New("503 Service Unavailable"))
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem,
		Policy: connector.Policy{BackoffInitial: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond, MaxAttempts: 3}}}})
	ctx := context.Background()
	for _, w := range []string{"w-perm", "w-exh"} {
		h.hire(t, w, "saas")
		h.waitVerified(t, w, 1)
		h.fire(t, w)
	}
	for w, want := range map[string]string{"w-perm": "403 Forbidden", "w-exh": "attempts exhausted after 3 attempts"} {
		eventually(t, w+": case account failed", func() error {
			res, err := h.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: w})
			if err != nil {
				return err
			}
			c := res.LeaverCase
			if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN || len(c.Accounts) != 1 || c.Accounts[0].Status != "failed" ||
				!strings.Contains(c.Accounts[0].LastError, want) {
				return fmt.Errorf("case %v", c)
			}
			return nil
		})
	}
	if n := len(rec.of(connector.CapDisable, "w-perm")); n != 1 {
		t.Errorf("a permanent error was tried %d times", n)
	}
	if n := len(rec.of(connector.CapDisable, "w-exh")); n != 3 {
		t.Errorf("a retryable error was tried %d times, max_attempts is 3", n)
	}

	var dead []*provisionerv1.DeadLetter
	eventually(t, "dead letters listed", func() error {
		res, err := h.svc.ListDeadLetters(ctx, &provisionerv1.ListDeadLettersRequest{Connector: "saas"})
		if err != nil {
			return err
		}
		if dead = res.DeadLetters; len(dead) != 2 {
			return fmt.Errorf("dead letters %v", dead)
		}
		return nil
	})
	byWorker := map[string]*provisionerv1.DeadLetter{}
	for _, d := range dead {
		byWorker[d.WorkerId] = d
		if d.Status != "open" || d.LinkId == "" || d.Consumer != "provisioner-saas" || !strings.HasPrefix(d.Subject, "tenure.provision.saas.") {
			t.Errorf("dead letter %v", d)
		}
	}
	q, err := h.svc.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
	if err != nil || q.Queues[0].DeadLetters != 2 {
		t.Fatalf("ListQueues = %v, %v; want 2 dead letters", q, err)
	}

	// Only an authenticated operator re-drives.
	_, err = h.svc.RetryDeadLetter(ctx, &provisionerv1.RetryDeadLetterRequest{Id: byWorker["w-perm"].Id})
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("RetryDeadLetter without a caller = %v", err)
	}
	auditor := authn.WithPrincipal(ctx, authn.Principal{Name: "aud", Roles: []authn.Role{authn.RoleAuditor}})
	if _, err := h.svc.RetryDeadLetter(auditor, &provisionerv1.RetryDeadLetterRequest{Id: byWorker["w-perm"].Id}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("RetryDeadLetter as auditor = %v", err)
	}
	if _, err := h.svc.RetryDeadLetter(asOperator("op-ann"), &provisionerv1.RetryDeadLetterRequest{Id: 999999}); status.Code(err) != codes.NotFound {
		t.Errorf("RetryDeadLetter of an unknown id = %v", err)
	}
	if _, err := h.svc.RetryDeadLetter(asOperator("op-ann"), &provisionerv1.RetryDeadLetterRequest{}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "id is required") {
		t.Errorf("RetryDeadLetter without an id = %v", err)
	}

	broken.Store(false)
	res, err := h.svc.RetryDeadLetter(asOperator("op-ann"), &provisionerv1.RetryDeadLetterRequest{Id: byWorker["w-perm"].Id})
	if err != nil || res.CommandId == "" || res.DeadLetter.Status != "retried" || res.DeadLetter.RetriedBy != "op-ann" {
		t.Fatalf("RetryDeadLetter = %v, %v", res, err)
	}
	if _, err := h.svc.RetryDeadLetter(asOperator("op-ann"), &provisionerv1.RetryDeadLetterRequest{Id: byWorker["w-perm"].Id}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("second RetryDeadLetter = %v", err)
	}
	h.waitCase(t, "w-perm", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	// The other one by account, as from `tenurectl case`.
	link := h.leaverCase(t, "w-exh").Accounts[0].LinkId
	if _, err := h.svc.RetryAccount(asOperator("op-ann"), &provisionerv1.RetryAccountRequest{LinkId: link}); err != nil {
		t.Fatal(err)
	}
	h.waitCase(t, "w-exh", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	for _, w := range []string{"w-perm", "w-exh"} {
		if a, err := mem.GetAccount(ctx, connector.AccountRef{Username: w}); err != nil || a.State != connector.StateDisabled {
			t.Errorf("%s in the target: %v, %v", w, a.State, err)
		}
	}
	left, err := h.svc.ListDeadLetters(ctx, &provisionerv1.ListDeadLettersRequest{})
	if err != nil || len(left.DeadLetters) != 0 {
		t.Fatalf("open dead letters after the re-drives: %v, %v", left, err)
	}
}

// A target that cannot end sessions (a webhook receiver answering 501) is still disabled; the
// revocation stream then carries no session revocation for it.
func TestUnsupportedSessionRevocationStillDisables(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	mem.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapSessions {
			return fmt.Errorf("%w: webhook revoke_sessions: HTTP 501", connector.ErrUnsupported)
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "nosess", Type: "memory", Conn: mem}}})
	h.hire(t, "w-ns", "nosess")
	h.waitVerified(t, "w-ns", 1)
	h.fire(t, "w-ns")
	h.waitCase(t, "w-ns", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	h.hasMessage(t, "tenure.revocation.account_disabled.w-ns")
	st, err := h.js.Stream(context.Background(), natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(context.Background(), "tenure.revocation.session_revoked.w-ns"); err == nil {
		t.Fatal("a session revocation was reported for a target that cannot revoke sessions")
	}
}

// A leaver's account is disabled before its sessions are ended, so no sign-in between the two
// leaves a live session behind; credentials go after the disable too.
func TestDisableComesBeforeSessionRevocation(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	var mu sync.Mutex
	var ops []string
	record := false
	mem.Inject = func(op string, _ connector.AccountRef) error {
		mu.Lock()
		defer mu.Unlock()
		if record {
			ops = append(ops, op)
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "order", Type: "memory", Conn: mem}}})
	h.hire(t, "w-ord", "order")
	h.waitVerified(t, "w-ord", 1)
	mu.Lock()
	record = true
	mu.Unlock()
	h.fire(t, "w-ord")
	h.waitCase(t, "w-ord", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	mu.Lock()
	defer mu.Unlock()
	at := func(op string) int { return slices.Index(ops, op) }
	if at(connector.CapDisable) < 0 || at(connector.CapSessions) < at(connector.CapDisable) || at(connector.CapCredentials) < at(connector.CapDisable) {
		t.Fatalf("calls in order %v: want disable, then sessions and credentials", ops)
	}
}

// An account the target recreated under the same name with a new id (a restore, a
// re-import) is the one a leaver's disable reaches: the name does not stay enabled because the
// old id is gone. No session is reported revoked for the account that was not there.
func TestDisableFindsAnAccountRecreatedUnderItsName(t *testing.T) {
	ctx := context.Background()
	mem := connectortest.NewMemory("readers")
	h := startHost(t, Config{Targets: []Target{{Name: "restored", Type: "memory", Conn: mem}}})
	h.hire(t, "w-rc", "restored")
	h.waitVerified(t, "w-rc", 1)
	old, err := mem.GetAccount(ctx, connector.AccountRef{Username: h.accounts(t, "w-rc")[0].Username})
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.DeleteAccount(ctx, connector.AccountRef{ID: old.ID}); err != nil {
		t.Fatal(err)
	}
	again, err := mem.CreateAccount(ctx, connector.AccountSpec{Username: old.Username})
	if err != nil || again.ID == old.ID || again.State != connector.StateEnabled {
		t.Fatalf("recreated %v, %v", again, err)
	}
	h.fire(t, "w-rc")
	h.waitCase(t, "w-rc", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if a, err := mem.GetAccount(ctx, connector.AccountRef{Username: old.Username}); err != nil || a.State != connector.StateDisabled {
		t.Fatalf("the recreated account after the leaver's case: %v, %v", a, err)
	}
	var id string
	if err := h.pool.QueryRow(ctx, "SELECT account_id FROM links WHERE worker_id = 'w-rc'").Scan(&id); err != nil || id != again.ID {
		t.Fatalf("link's account id %q, %v; want the new %q", id, err, again.ID)
	}
	h.hasMessage(t, "tenure.revocation.account_disabled.w-rc")
}

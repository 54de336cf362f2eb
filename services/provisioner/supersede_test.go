package provisioner

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// gate blocks the first operation op on a Memory target once armed, until released.
type gate struct {
	armed   atomic.Bool
	once    sync.Once
	blocked chan struct{}
	release chan struct{}
	opened  sync.Once
	// calls counts the operations the target saw, by op.
	mu    sync.Mutex
	calls map[string]int
}

func newGate(mem *connectortest.Memory, op string) *gate {
	g := &gate{blocked: make(chan struct{}), release: make(chan struct{}), calls: map[string]int{}}
	mem.Inject = func(o string, _ connector.AccountRef) error {
		g.mu.Lock()
		g.calls[o]++
		g.mu.Unlock()
		if o == op && g.armed.Load() {
			fired := false
			g.once.Do(func() { fired = true })
			if fired {
				close(g.blocked)
				<-g.release
			}
		}
		return nil
	}
	return g
}

// open lets the blocked operation go on.
func (g *gate) open() { g.opened.Do(func() { close(g.release) }) }

// openAtEnd opens the gate when the test ends, before the provisioner is stopped (which
// waits for the blocked command): call it after startHost.
func (g *gate) openAtEnd(t *testing.T) { t.Cleanup(g.open) }

func (g *gate) count(op string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[op]
}

func (h *host) sendWorkerEvent(t *testing.T, worker string, kind eventsv1.WorkerEventKind, st eventsv1.WorkerStatus) {
	h.publish(t, events.Subject("tenure.hr", "x", worker), worker, &eventsv1.WorkerEvent{Kind: kind,
		Worker: &eventsv1.Worker{WorkerId: worker, Status: st}, EffectiveTime: timestamppb.Now()})
}

// messagesOn returns the messages on subject in the events stream, oldest first.
func (h *host) messagesOn(t *testing.T, subject string) []*jetstream.RawStreamMsg {
	t.Helper()
	return subjectMsgs(t, h.js, subject)
}

// results are the provision results of the worker's link at generation gen on subject.
func (h *host) results(t *testing.T, subject, worker string, gen int64) []*eventsv1.ProvisionResult {
	t.Helper()
	var out []*eventsv1.ProvisionResult
	for _, m := range h.messagesOn(t, subject) {
		var r eventsv1.ProvisionResult
		if err := proto.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		if r.WorkerId == worker && r.Generation == gen {
			out = append(out, &r)
		}
	}
	return out
}

func targetAccount(t *testing.T, mem *connectortest.Memory, ref connector.AccountRef) connector.Account {
	t.Helper()
	a, err := mem.GetAccount(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func waitAccount(t *testing.T, mem *connectortest.Memory, username string, want connector.AccountState) {
	t.Helper()
	eventually(t, username+" "+want.String()+" in the target", func() error {
		a, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: username})
		if err != nil {
			return err
		}
		if a.State != want {
			return fmt.Errorf("state %v", a.State)
		}
		return nil
	})
}

// waitLink waits until the worker's only link is verified in state want at its generation.
func (h *host) waitLink(t *testing.T, worker string, want eventsv1.AccountState) *provisionerv1.Account {
	t.Helper()
	var a *provisionerv1.Account
	eventually(t, worker+": link verified "+want.String(), func() error {
		res, err := h.svc.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if len(res.Accounts) != 1 {
			return fmt.Errorf("accounts %v", res.Accounts)
		}
		if a = res.Accounts[0]; a.DesiredState != want || a.ObservedState != want || a.ObservedGeneration != a.Generation {
			return fmt.Errorf("link %v", a)
		}
		return nil
	})
	return a
}

// The auditor's repro, with the two commands of the link on two replicas (no shared lane):
// an ensure issued before the leaver, already past its generation check when the leaver's
// disable runs, re-enables the account after the case completed. Its read-back is no longer
// current when it finishes, so it is recorded as superseded (not verified) and the leaver's
// disable is issued again: the account ends disabled.
func TestLateEnsureOnAnotherReplicaIsReconverged(t *testing.T) {
	mem := connectortest.NewMemory("readers", "writers")
	g := newGate(mem, "get")
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	g.openAtEnd(t)
	h.svc.lanes.off = true // as if each command ran on a replica of its own
	h.hire(t, "w-race", "saas")
	h.waitVerified(t, "w-race", 1)
	g.armed.Store(true)
	h.grant(t, "w-race", "g2", "saas", "writers") // generation 2: ensure
	<-g.blocked                                   // its first read is under way
	h.fire(t, "w-race")                           // generation 3: disable
	h.waitCase(t, "w-race", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	g.open() // the late ensure enables the account and grants writers
	eventually(t, "the late ensure's result", func() error {
		if len(h.results(t, "tenure.result.saas.superseded", "w-race", 2))+len(h.results(t, "tenure.result.saas.verified", "w-race", 2)) == 0 {
			return fmt.Errorf("no result for generation 2")
		}
		return nil
	})
	if r := h.results(t, "tenure.result.saas.verified", "w-race", 2); len(r) != 0 {
		t.Fatalf("the superseded ensure published a verified result: %v", r)
	}
	waitAccount(t, mem, "w-race", connector.StateDisabled)
	l := h.waitLink(t, "w-race", eventsv1.AccountState_ACCOUNT_STATE_DISABLED)
	if l.Generation != 3 {
		t.Fatalf("link %v: the re-converge must not be a new decision", l)
	}
	sup := h.results(t, "tenure.result.saas.superseded", "w-race", 2)[0]
	if sup.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
		t.Fatalf("superseded result %v: want the read-back it saw (enabled)", sup)
	}
	// The disable issued again carries the case, so the credentials are revoked again too.
	eventually(t, "disable of generation 3 verified twice", func() error {
		if r := h.results(t, "tenure.result.saas.verified", "w-race", 3); len(r) != 2 || r[1].CaseId == "" {
			return fmt.Errorf("results %v", r)
		}
		return nil
	})
	if c := h.leaverCase(t, "w-race"); c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
		t.Fatalf("case %v", c)
	}
	// Both verifications of generation 3 report one revocation: security teams get
	// account_disabled (and session_revoked) once, under the id of that decision.
	eventually(t, "the outbox drained", func() error {
		if n, err := pgstore.Pending(context.Background(), h.svc.pool); err != nil || n > 0 {
			return fmt.Errorf("%d pending (%v)", n, err)
		}
		return nil
	})
	for _, kind := range []string{"account_disabled", "session_revoked"} {
		msgs := h.messagesOn(t, events.Subject("tenure.revocation", kind, "w-race"))
		if len(msgs) != 1 {
			t.Fatalf("%s published %d times for one disable decision", kind, len(msgs))
		}
		var r eventsv1.Revocation
		if err := proto.Unmarshal(msgs[0].Data, &r); err != nil {
			t.Fatal(err)
		}
		if want := accountRevocationID(kind, l.LinkId, 3); r.RevocationId != want || msgs[0].Header.Get(jetstream.MsgIDHeader) != want {
			t.Fatalf("%s: revocation_id %q, Nats-Msg-Id %q: want %q", kind, r.RevocationId, msgs[0].Header.Get(jetstream.MsgIDHeader), want)
		}
	}
}

// The mirror case: a disable for a leave of absence, late on another replica, lands after
// the return from leave was verified. It must not publish account_disabled (or a verified
// result) as if it were the current decision, and the return is carried out again.
func TestLateDisableOnAnotherReplicaPublishesNoRevocation(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	g := newGate(mem, connector.CapDisable)
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	g.openAtEnd(t)
	h.svc.lanes.off = true
	h.hire(t, "w-lv", "saas")
	h.waitVerified(t, "w-lv", 1)
	g.armed.Store(true)
	h.sendWorkerEvent(t, "w-lv", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE) // generation 2
	<-g.blocked
	h.sendWorkerEvent(t, "w-lv", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE) // generation 3
	h.waitLink(t, "w-lv", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	g.open() // the late disable disables the account
	eventually(t, "the late disable's result", func() error {
		if len(h.results(t, "tenure.result.saas.superseded", "w-lv", 2))+len(h.results(t, "tenure.result.saas.verified", "w-lv", 2)) == 0 {
			return fmt.Errorf("no result for generation 2")
		}
		return nil
	})
	if r := h.results(t, "tenure.result.saas.verified", "w-lv", 2); len(r) != 0 {
		t.Fatalf("the superseded disable published a verified result: %v", r)
	}
	waitAccount(t, mem, "w-lv", connector.StateEnabled)
	if l := h.waitLink(t, "w-lv", eventsv1.AccountState_ACCOUNT_STATE_ENABLED); l.Generation != 3 {
		t.Fatalf("link %v", l)
	}
	time.Sleep(300 * time.Millisecond) // let the outbox drain
	for _, kind := range []string{"account_disabled", "session_revoked"} {
		if m := h.messagesOn(t, events.Subject("tenure.revocation", kind, "w-lv")); len(m) != 0 {
			t.Fatalf("the superseded disable published %s", kind)
		}
	}
	if r := h.results(t, "tenure.result.saas.verified", "w-lv", 2); len(r) != 0 {
		t.Fatalf("the superseded disable published a verified result: %v", r)
	}
}

// Within one provisioner, commands of a link take turns: the leaver's disable waits while the
// older ensure is under way, runs after it, and is not issued a second time, since it is
// known to run after the ensure's last call.
func TestCommandsOfALinkTakeTurns(t *testing.T) {
	mem := connectortest.NewMemory("readers", "writers")
	g := newGate(mem, "get")
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	g.openAtEnd(t)
	h.hire(t, "w-turn", "saas")
	h.waitVerified(t, "w-turn", 1)
	linkID := h.accounts(t, "w-turn")[0].LinkId
	g.armed.Store(true)
	h.grant(t, "w-turn", "g2", "saas", "writers")
	<-g.blocked
	h.fire(t, "w-turn")
	eventually(t, "the disable waits for the link's lane", func() error {
		if !h.svc.lanes.waiting(linkID, 3) {
			return fmt.Errorf("not waiting")
		}
		return nil
	})
	time.Sleep(200 * time.Millisecond)
	if n := g.count(connector.CapDisable); n != 0 {
		t.Fatalf("the disable ran %d times while the ensure was under way", n)
	}
	if c := h.leaverCase(t, "w-turn"); c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN {
		t.Fatalf("case %v", c)
	}
	g.open()
	h.waitCase(t, "w-turn", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	waitAccount(t, mem, "w-turn", connector.StateDisabled)
	h.waitLink(t, "w-turn", eventsv1.AccountState_ACCOUNT_STATE_DISABLED)
	if r := h.results(t, "tenure.result.saas.superseded", "w-turn", 2); len(r) != 1 {
		t.Fatalf("superseded results of the ensure: %v", r)
	}
	time.Sleep(300 * time.Millisecond)
	if n := g.count(connector.CapDisable); n != 1 {
		t.Fatalf("%d disables, want 1", n)
	}
	if r := h.results(t, "tenure.result.saas.verified", "w-turn", 3); len(r) != 1 {
		t.Fatalf("verified results of the disable: %v", r)
	}
}

// A newer command of the link does not wait out an older one's back-off: the older stops at
// once and the leaver's disable runs.
func TestNewerCommandPreemptsABackoff(t *testing.T) {
	mem := connectortest.NewMemory("readers", "writers")
	var failGrant atomic.Bool
	mem.Inject = func(op string, _ connector.AccountRef) error {
		if op == connector.CapEntitlements && failGrant.Load() {
			return connector.Retryable(fmt.Errorf("503"))
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem,
		Policy: connector.Policy{BackoffInitial: 2 * time.Minute, BackoffMax: 2 * time.Minute, MaxAttempts: 5}}}})
	h.hire(t, "w-bo", "saas")
	h.waitVerified(t, "w-bo", 1)
	failGrant.Store(true)
	h.grant(t, "w-bo", "g2", "saas", "writers")
	eventually(t, "the ensure failed once", func() error {
		if a := h.accounts(t, "w-bo"); len(a) != 1 || a[0].Generation != 2 {
			return fmt.Errorf("accounts %v", a)
		}
		var last string
		if err := h.pool.QueryRow(context.Background(), "SELECT last_error FROM links WHERE worker_id = 'w-bo'").Scan(&last); err != nil {
			return err
		}
		if last == "" {
			return fmt.Errorf("no failure yet")
		}
		return nil
	})
	start := time.Now()
	h.fire(t, "w-bo")
	h.waitCase(t, "w-bo", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("the disable waited %v", d)
	}
	waitAccount(t, mem, "w-bo", connector.StateDisabled)
	eventually(t, "the ensure superseded", func() error {
		if len(h.results(t, "tenure.result.saas.superseded", "w-bo", 2)) != 1 {
			return fmt.Errorf("no superseded result")
		}
		return nil
	})
}

// The auditor's repro: a username that exists in the target but is no account tenure links
// (a former employee's, disabled; one made by hand, enabled) is never handed to a new hire,
// who gets the next free username instead; the old accounts are left as they were.
func TestExistingTargetAccountIsNotAdopted(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	ctx := context.Background()
	former, err := mem.CreateAccount(ctx, connector.AccountSpec{WorkerID: "former-employee", Username: "w-new", Email: "old@hospital.example"})
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.DisableAccount(ctx, connector.AccountRef{ID: former.ID}); err != nil {
		t.Fatal(err)
	}
	byHand, err := mem.CreateAccount(ctx, connector.AccountSpec{Username: "w-adm"})
	if err != nil {
		t.Fatal(err)
	}
	// w-adm2 is taken in the target too.
	if _, err := mem.CreateAccount(ctx, connector.AccountSpec{Username: "w-adm2"}); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	h.hire(t, "w-new", "saas")
	h.hire(t, "w-adm", "saas")
	h.waitVerified(t, "w-new", 1)
	h.waitVerified(t, "w-adm", 1)
	for _, c := range []struct {
		worker, want string
		old          connector.Account
		oldState     connector.AccountState
	}{{"w-new", "w-new2", former, connector.StateDisabled}, {"w-adm", "w-adm3", byHand, connector.StateEnabled}} {
		if a := h.accounts(t, c.worker)[0]; a.Username != c.want {
			t.Fatalf("%s: link %v, want username %s", c.worker, a, c.want)
		}
		if a := targetAccount(t, mem, connector.AccountRef{Username: c.want}); a.State != connector.StateEnabled || !slices.Equal(a.Entitlements, []string{"readers"}) || a.ID == c.old.ID {
			t.Fatalf("%s: new account %v", c.worker, a)
		}
		if a := targetAccount(t, mem, connector.AccountRef{ID: c.old.ID}); a.State != c.oldState || len(a.Entitlements) != 0 {
			t.Fatalf("%s: the existing account %s (%s) was changed for a new hire: %v", c.worker, a.Username, a.Email, a)
		}
	}
	// Later commands keep to the new hire's own account.
	h.grant(t, "w-new", "g-new-2", "saas", "readers")
	h.fire(t, "w-new")
	h.waitCase(t, "w-new", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	if a := targetAccount(t, mem, connector.AccountRef{Username: "w-new2"}); a.State != connector.StateDisabled {
		t.Fatalf("new hire's account after the leaver: %v", a)
	}
	if a := h.accounts(t, "w-new"); len(a) != 1 || a[0].Username != "w-new2" {
		t.Fatalf("links %v", a)
	}
}

// The account a command created is the link's from then on, even before its first verified
// read-back: a command re-driven after the first one failed for good does not take it for
// someone else's.
func TestCreatedAccountStaysTheLinks(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	var created atomic.Bool
	mem.Inject = func(op string, _ connector.AccountRef) error {
		switch {
		case op == connector.CapCreate:
			created.Store(true)
		case op == "get" && created.Load():
			// The read-back after the create fails for good.
			if created.CompareAndSwap(true, false) {
				return connector.Permanent(fmt.Errorf("403 on read"))
			}
		}
		return nil
	}
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	h.hire(t, "w-cr", "saas")
	var linkID string
	eventually(t, "the command failed for good", func() error {
		var n int
		if err := h.pool.QueryRow(context.Background(), "SELECT count(*), coalesce(min(link_id), '') FROM dead_letters WHERE worker_id = 'w-cr' AND status = 'open'").Scan(&n, &linkID); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("no dead letter")
		}
		return nil
	})
	if _, err := h.svc.RetryAccount(asOperator("op"), &provisionerv1.RetryAccountRequest{LinkId: linkID}); err != nil {
		t.Fatal(err)
	}
	h.waitVerified(t, "w-cr", 1)
	if a := h.accounts(t, "w-cr"); a[0].Username != "w-cr" {
		t.Fatalf("link %v: the link's own account was taken for someone else's", a[0])
	}
	if _, err := mem.GetAccount(context.Background(), connector.AccountRef{Username: "w-cr2"}); err == nil {
		t.Fatal("a second account was created")
	}
}

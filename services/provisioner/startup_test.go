package provisioner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connectors/pgrole"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// failingDisables fails every disable (retryably) while down is set, counting the calls.
type failingDisables struct {
	*pgrole.Connector
	down  atomic.Bool
	calls atomic.Int32
}

func (f *failingDisables) DisableAccount(ctx context.Context, ref connector.AccountRef) error {
	if f.down.Load() {
		f.calls.Add(1)
		return &connector.Error{Kind: connector.KindRetryable, Err: errors.New("target unavailable")}
	}
	return f.Connector.DisableAccount(ctx, ref)
}

// A target failing through a restart gets the policy's attempts in all, not that many per
// process: the budget is stored. The restarted provisioner also re-drives the leaver's
// unverified account at once (level-triggered), and the two runs of the generation (the
// redelivered command and the re-drive) together stay within the budget.
func TestAttemptBudgetSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	prefix := fmt.Sprintf("b%d_%d_", os.Getpid()%10000, prefixN.Add(1))
	pr, err := pgrole.New(ctx, pgrole.Config{URL: connector.SecretValue(url), RolePrefix: prefix, Groups: []string{"g" + prefix + "readers"}, CreateGroups: true})
	if err != nil {
		t.Fatal(err)
	}
	target := &failingDisables{Connector: pr}
	pool, err := pgstore.Connect(ctx, url, schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ns := natstest.Start(t)
	const budget = 4
	policy := connector.Policy{BackoffInitial: 50 * time.Millisecond, BackoffMax: 50 * time.Millisecond, MaxAttempts: budget}
	cfg := Config{Targets: []Target{{Name: "demo", Type: "postgres", System: "reporting", Conn: target, Policy: policy}},
		BackOff: []time.Duration{20 * time.Millisecond}, MaxDeliver: 100}
	startSvc := func() (*Service, func()) {
		svc, err := New(ctx, cfg, Deps{Pool: pool, JS: ns.JS})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { svc.Run(rctx); close(done) }()
		return svc, func() { cancel(); <-done }
	}
	e := &env{pool: pool, js: ns.JS, prefix: prefix, url: url}
	svc, stop := startSvc()
	e.svc = svc
	e.join(t, "wb")
	eventually(t, "account verified enabled", func() error {
		res, _ := svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "wb"})
		if len(res.GetAccounts()) != 1 || res.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
	target.down.Store(true)
	e.leave(t, "wb")
	eventually(t, "two failed disables", func() error {
		if n := target.calls.Load(); n < 2 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})
	stop()
	before := target.calls.Load()
	if before >= budget {
		t.Fatalf("%d attempts before the restart; the test needs fewer than %d", before, budget)
	}

	svc, stop = startSvc()
	defer stop()
	eventually(t, "the disable dead-lettered", func() error {
		res, err := svc.ListDeadLetters(ctx, &provisionerv1.ListDeadLettersRequest{})
		if err != nil {
			return err
		}
		for _, d := range res.DeadLetters {
			if d.WorkerId == "wb" {
				return nil
			}
		}
		return fmt.Errorf("dead letters %v", res.DeadLetters)
	})
	// Nothing else may still be trying: every command of the generation has ended.
	eventually(t, "no command of the link in hand", func() error {
		q, err := svc.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil {
			return err
		}
		for _, c := range q.Queues {
			if c.InFlight > 0 || c.Pending > 0 {
				return fmt.Errorf("queue %v", c)
			}
		}
		return nil
	})
	if got := target.calls.Load(); got != budget {
		t.Fatalf("disable attempts across the restart: %d (%d before it), want the budget %d", got, before, budget)
	}
}

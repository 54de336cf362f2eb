package provisioner

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// Many leavers at once, each with an account in three real PostgreSQL targets: their
// commands finish in shared transactions, and every case completes exactly once, after each
// of its accounts was read back disabled; each account gets its revocations once.
func TestConcurrentLeaversFinishTogether(t *testing.T) {
	targets := []*pgTarget{newPGTarget(t), newPGTarget(t), newPGTarget(t)}
	var cfg Config
	for i, p := range targets {
		cfg.Targets = append(cfg.Targets, p.target(t, fmt.Sprintf("t%d", i), connector.Lifecycle{}))
	}
	h, _ := startOn(t, targets[0].pool, cfg)
	const n = 24
	worker := func(i int) string { return fmt.Sprintf("gc%d", i) }
	for i := 0; i < n; i++ {
		h.joiner(t, worker(i), time.Now().Add(-time.Hour))
		for j, p := range targets {
			h.grant(t, worker(i), fmt.Sprintf("g-%s-t%d", worker(i), j), fmt.Sprintf("t%d", j), p.group)
		}
	}
	for i := 0; i < n; i++ {
		h.waitVerified(t, worker(i), len(targets))
	}
	for i := 0; i < n; i++ {
		h.fire(t, worker(i))
	}
	for i := 0; i < n; i++ {
		c := h.waitCase(t, worker(i), eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
		if len(c.Accounts) != len(targets) {
			t.Fatalf("%s: case covers %d accounts, want %d", worker(i), len(c.Accounts), len(targets))
		}
		for _, p := range targets {
			if login, exists := p.login(t, worker(i)); !exists || login {
				t.Fatalf("%s: role in pg_roles: exists %v, can log in %v", worker(i), exists, login)
			}
		}
	}
	// Exactly one completion per case and one account_disabled per account, however the
	// commands were grouped. The completions are the last events written, so once they are
	// all there the counts are final.
	counts := func(filter string) uint64 {
		st, err := h.js.Stream(context.Background(), natsx.EventsStream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(filter))
		if err != nil {
			t.Fatal(err)
		}
		var total uint64
		for _, c := range info.State.Subjects {
			total += c
		}
		return total
	}
	eventually(t, "case_completed revocations", func() error {
		if got := counts("tenure.revocation.case_completed.>"); got != n {
			return fmt.Errorf("%d of %d", got, n)
		}
		return nil
	})
	if got := counts("tenure.case.completed.>"); got != n {
		t.Fatalf("%d tenure.case.completed events for %d cases", got, n)
	}
	if got := counts("tenure.revocation.account_disabled.>"); got != n*uint64(len(targets)) {
		t.Fatalf("%d account_disabled revocations for %d accounts", got, n*len(targets))
	}
}

// A batch takes queued commands in order up to its size, several of one worker together,
// and leaves the workers a batch in flight holds for a later batch.
func TestFinisherTakesFreeWorkersInOrder(t *testing.T) {
	item := func(worker string) *finishItem { return &finishItem{l: link{worker: worker}} }
	a1, b1, a2, c1 := item("a"), item("b"), item("a"), item("c")
	f := &finisher{queue: []*finishItem{a1, b1, a2, c1}, busy: map[string]bool{"b": true}}
	batch := f.takeLocked()
	if len(batch) != 3 || batch[0] != a1 || batch[1] != a2 || batch[2] != c1 {
		t.Fatalf("batch %v, want a1 a2 c1", batch)
	}
	if len(f.queue) != 1 || f.queue[0] != b1 {
		t.Fatalf("left %v, want b1", f.queue)
	}
	if !f.busy["a"] || !f.busy["c"] {
		t.Fatalf("busy %v: the batch's workers are held", f.busy)
	}
	if got := f.takeLocked(); len(got) != 0 {
		t.Fatalf("took %v while b is held", got)
	}
	delete(f.busy, "b")
	if got := f.takeLocked(); len(got) != 1 || got[0] != b1 {
		t.Fatalf("took %v, want b1", got)
	}

	f = &finisher{}
	for i := 0; i < maxFinishGroup+5; i++ {
		f.queue = append(f.queue, item(fmt.Sprint(i)))
	}
	if got := f.takeLocked(); len(got) != maxFinishGroup || len(f.queue) != 5 {
		t.Fatalf("took %d and left %d, want %d and 5", len(got), len(f.queue), maxFinishGroup)
	}
}

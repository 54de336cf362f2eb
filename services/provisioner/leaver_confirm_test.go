package provisioner

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/events"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// waitLockWaiters waits until n sessions of the test's database wait for a lock.
func waitLockWaiters(t *testing.T, pool *pgxpool.Pool, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d sessions waiting for a lock", n), func() error {
		var got int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`).Scan(&got); err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("%d waiting", got)
		}
		return nil
	})
}

// A leaver's revoke and the read-back of the leaver's disable, committed at the same moment,
// still confirm the revoke once (issue 16, point 4). Each transaction reads what the other
// writes: the revoke confirms at once only if the link's read-back is already current, and
// the read-back confirms only the grants it sees revoked. The test holds the link's row so
// that both queue for it, the revoke first, with the read-back's statement started before
// the revoke commits: the interleaving that lost 3 of 41 confirmations on `tenure dev`.
func TestLeaverRevokeRacingTheDisableIsConfirmed(t *testing.T) {
	mem := connectortest.NewMemory("readers")
	g := newGate(mem, "disable")
	h := startHost(t, Config{Targets: []Target{{Name: "saas", Type: "memory", Conn: mem}}})
	g.openAtEnd(t)
	ctx := context.Background()
	const worker, grant = "w-conf", "g-w-conf-saas"
	h.hire(t, worker, "saas")
	h.waitVerified(t, worker, 1)

	g.armed.Store(true)
	h.fire(t, worker)
	<-g.blocked // the leaver's disable is at the target
	hold, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, "SELECT 1 FROM links WHERE worker_id = $1 FOR UPDATE", worker); err != nil {
		t.Fatal(err)
	}
	h.revokeGrant(t, worker, grant, "saas") // approval's revoke on the leaver
	waitLockWaiters(t, h.pool, 1)           // it has revoked the grant and waits for the link
	g.open()
	waitLockWaiters(t, h.pool, 2) // the disable's read-back is being recorded and waits too
	if err := hold.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	h.waitCase(t, worker, eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)
	eventually(t, "the provisioner confirms the revoke", func() error {
		var confirmed *time.Time
		if err := h.pool.QueryRow(ctx, "SELECT revoke_confirmed_at FROM link_grants WHERE grant_id = $1", grant).Scan(&confirmed); err != nil {
			return err
		}
		if confirmed == nil {
			return fmt.Errorf("grant %s: revoke_confirmed_at empty", grant)
		}
		return nil
	})
	// Approval's confirmation: a verified result naming the grant as revoked.
	eventually(t, "a verified result carries the revoked grant", func() error {
		for _, m := range h.messagesOn(t, "tenure.result.saas.verified") {
			var r eventsv1.ProvisionResult
			if err := proto.Unmarshal(m.Data, &r); err != nil {
				return err
			}
			if r.WorkerId == worker && slices.Contains(r.RevokedGrantIds, grant) {
				return nil
			}
		}
		return fmt.Errorf("no verified result names %s", grant)
	})
	// Security teams' confirmation: one grant_revoked revocation.
	eventually(t, "one grant_revoked revocation", func() error {
		msgs := h.messagesOn(t, events.Subject("tenure.revocation", "grant_revoked", worker))
		if len(msgs) != 1 {
			return fmt.Errorf("%d grant_revoked revocations", len(msgs))
		}
		var r eventsv1.Revocation
		if err := proto.Unmarshal(msgs[0].Data, &r); err != nil {
			return err
		}
		if r.GrantId != grant || !r.Verified {
			return fmt.Errorf("revocation %v", &r)
		}
		return nil
	})
}

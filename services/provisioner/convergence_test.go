package provisioner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tenure-dev/tenure/pkg/connector"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// groupsOf lists the groups the role is a member of, read from pg_roles, not through tenure.
func (p *pgTarget) groupsOf(t *testing.T, username string) []string {
	t.Helper()
	rows, err := p.pool.Query(context.Background(), `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1`, p.prefix+username)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		out = append(out, g)
	}
	return out
}

// A mover never keeps the old role's entitlement with its login on. RN → CLERK, where the
// CLERK package grants a group the connector does not manage: the account was disabled at
// the move (its only grant revoked), and the ensure for the CLERK grant fails for good. The
// stale RN group must be revoked before anything widens access, the account must stay
// disabled, and `accounts` must show what the target holds, with the reason. Read from
// pg_roles itself.
func TestFailedEnsureNeverWidensAccess(t *testing.T) {
	pg := newPGTarget(t)
	tg := pg.target(t, "ehr", connector.Lifecycle{})
	tg.Policy.MaxAttempts = 2
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{tg}})
	const w = "w-mover"
	h.joiner(t, w, time.Now().Add(-time.Hour))
	h.grant(t, w, "g-rn", "ehr", pg.group)
	h.waitVerified(t, w, 1)
	user := h.accounts(t, w)[0].Username
	if on, _ := pg.login(t, user); !on || !slices.Contains(pg.groupsOf(t, user), pg.group) {
		t.Fatalf("RN: login %v, groups %v", on, pg.groupsOf(t, user))
	}
	// The move: the RN grant goes (the account is disabled), the CLERK grant names a group
	// the connector does not manage.
	h.revokeGrant(t, w, "g-rn", "ehr")
	eventually(t, "disabled after the move", func() error {
		if on, _ := pg.login(t, user); on {
			return fmt.Errorf("%s can still log in", user)
		}
		return nil
	})
	h.grant(t, w, "g-clerk", "ehr", "gnot_configured_front_desk")
	eventually(t, "the failed ensure on record", func() error {
		a := h.accounts(t, w)[0]
		if a.LastError == "" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
			return fmt.Errorf("account %v", a)
		}
		return nil
	})
	if on, _ := pg.login(t, user); on {
		t.Errorf("%s can log in after the failed ensure", user)
	}
	if gs := pg.groupsOf(t, user); len(gs) != 0 {
		t.Errorf("%s is still in %v, which no grant explains", user, gs)
	}
	a := h.accounts(t, w)[0]
	if len(a.Entitlements) != 0 || !slices.Equal(a.DesiredEntitlements, []string{"gnot_configured_front_desk"}) || !strings.Contains(a.LastError, "gnot_configured_front_desk") {
		t.Errorf("accounts shows %v; want the target's truth (disabled, no entitlements) and why", a)
	}
}

// A disabled account holds only what its grants explain. A revoked last grant, a leaver's
// revoked grants and a grant revoked during a leave of absence each take the group away in
// the target too, not only the login: an auditor reading pg_auth_members finds no member
// nobody granted, a revoke is confirmed only once the target reflects it, and nothing comes
// back if the account is enabled again. A leave of absence alone keeps the groups (its
// grants stand; ending the leave is enabling alone). Read from pg_roles itself.
func TestDisabledAccountHoldsOnlyWhatGrantsExplain(t *testing.T) {
	pg := newPGTarget(t)
	h, _ := startOn(t, pg.pool, Config{Targets: []Target{pg.target(t, "ehr", connector.Lifecycle{})}})
	wantTarget := func(user string, login bool, groups ...string) {
		t.Helper()
		eventually(t, fmt.Sprintf("%s: login %v, groups %v", user, login, groups), func() error {
			on, _ := pg.login(t, user)
			if gs := pg.groupsOf(t, user); on != login || !slices.Equal(gs, groups) {
				return fmt.Errorf("login %v, groups %v", on, gs)
			}
			return nil
		})
	}
	for _, w := range []string{"w-last", "w-leaver", "w-leave"} {
		h.joiner(t, w, time.Now().Add(-time.Hour))
		h.grant(t, w, "g-"+w, "ehr", pg.group)
		h.waitVerified(t, w, 1)
	}
	user := func(w string) string { return h.accounts(t, w)[0].Username }

	// The last grant revoked: disabled, and out of the group.
	h.revokeGrant(t, "w-last", "g-w-last", "ehr")
	wantTarget(user("w-last"), false)

	// A leaver, then the approval service's revoke of their grant.
	h.fire(t, "w-leaver")
	h.revokeGrant(t, "w-leaver", "g-w-leaver", "ehr")
	wantTarget(user("w-leaver"), false)
	h.waitCase(t, "w-leaver", eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED)

	// A leave of absence keeps the group while the grant stands; a revoke during it takes it.
	h.hrEvent(t, "w-leave", eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, eventsv1.WorkerStatus_WORKER_STATUS_ON_LEAVE)
	wantTarget(user("w-leave"), false, pg.group)
	h.revokeGrant(t, "w-leave", "g-w-leave", "ehr")
	wantTarget(user("w-leave"), false)
	for _, w := range []string{"w-last", "w-leaver", "w-leave"} {
		eventually(t, w+": read back at the last generation", func() error {
			a := h.accounts(t, w)[0]
			if a.ObservedGeneration != a.Generation || len(a.Entitlements) != 0 {
				return fmt.Errorf("account %v", a)
			}
			return nil
		})
	}
}

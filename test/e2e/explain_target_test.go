package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// explain tells the truth about the target: when a DBA takes the granted group away from a
// worker's PostgreSQL role behind tenure's back, the next reconciliation reads it, and
// explain answers target_matches false, naming the group the grant gives and the target
// lacks; `accounts` shows what the target holds. A group added by hand is named as one no
// grant explains. Put right by hand, explain matches again. Read and changed in PostgreSQL
// itself, not through tenure.
func TestExplainReportsTargetChangedBehindTenuresBack(t *testing.T) {
	ctx := context.Background()
	prefix := fmt.Sprintf("ex%d_", time.Now().UnixNano()%1_000_000)
	read, write := "g"+prefix+"read", "g"+prefix+"write"
	env := startStack(t, stackOptions{
		Policy: fmt.Sprintf("systems:\n  - {name: wiki, holds_ephi: false, connector: wiki}\n"+
			"packages:\n  - {name: wiki-reader, system: wiki, entitlements: [%s], auto_approve: true}\n"+
			"roles:\n  - {job_code: RN, packages: [wiki-reader]}\n", read),
		ConnectorsFor: func(adminURL string) string {
			return fmt.Sprintf("connectors:\n  - name: wiki\n    type: postgres\n    config: {url: %q, role_prefix: %s, groups: [%s, %s], create_groups: true}\n",
				adminURL, prefix, read, write)
		},
	})
	conn := dial(t, env.GRPCAddr, env.OperatorToken)
	gov, prov := approvalv1.NewGovernanceServiceClient(conn), provisionerv1.NewProvisioningServiceClient(conn)
	db, err := pgx.Connect(ctx, env.AdminURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })
	const worker = "ex-1"
	if code, res := postWebhook(t, env.Hook, env.HRSecret, "ex-hire", hrEvent("hire", worker, "RN", "ex.one@clinic.example")); code/100 != 2 {
		t.Fatalf("hire: %d %v", code, res)
	}
	role := prefix + "ex.one"
	explain := func() (*approvalv1.ExplainAccessResponse, error) {
		return gov.ExplainAccess(ctx, &approvalv1.ExplainAccessRequest{WorkerId: worker, System: "wiki"})
	}
	groups := func() []string {
		t.Helper()
		rows, err := db.Query(ctx, `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
			JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 ORDER BY 1`, role)
		if err != nil {
			t.Fatal(err)
		}
		gs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return gs
	}
	matches := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error {
			ex, err := explain()
			if err != nil {
				return err // the hire may still be on its way
			}
			if !ex.GetTargetMatches() || !ex.GetHasAccess() {
				return fmt.Errorf("target_matches %v, has_access %v: %s", ex.GetTargetMatches(), ex.GetHasAccess(), ex.GetSummary())
			}
			return nil
		})
	}
	matches("the birthright grant in effect")
	if gs := groups(); !slices.Equal(gs, []string{read}) {
		t.Fatalf("%s is in %v, want [%s]", role, gs, read)
	}
	reconcile := func() {
		t.Helper()
		if _, err := prov.Reconcile(ctx, &provisionerv1.ReconcileRequest{Connector: "wiki"}); err != nil {
			t.Fatal(err)
		}
	}
	mismatch := func(what, note string) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() error {
			ex, err := explain()
			if err != nil {
				t.Fatal(err)
			}
			if ex.GetTargetMatches() || !slices.ContainsFunc(ex.GetNotes(), func(n string) bool { return strings.Contains(n, note) }) ||
				!strings.Contains(ex.GetSummary(), "the target differs from the grants") {
				return fmt.Errorf("target_matches %v, notes %q: %s", ex.GetTargetMatches(), ex.GetNotes(), ex.GetSummary())
			}
			return nil
		})
	}
	accountHolds := func(want ...string) {
		t.Helper()
		res, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil || len(res.GetAccounts()) != 1 {
			t.Fatalf("accounts: %v, %v", res, err)
		}
		if got := slices.Sorted(slices.Values(res.GetAccounts()[0].GetEntitlements())); !slices.Equal(got, want) {
			t.Errorf("accounts says the target holds %v; PostgreSQL holds %v", got, want)
		}
	}

	// A DBA takes the group away by hand.
	if _, err := db.Exec(ctx, fmt.Sprintf("REVOKE %s FROM %s", pgx.Identifier{read}.Sanitize(), pgx.Identifier{role}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	reconcile()
	mismatch("explain names the group the target lacks", "lacks "+read+", which the grants give")
	accountHolds()

	// Put back, and another group added by hand.
	if _, err := db.Exec(ctx, fmt.Sprintf("GRANT %s, %s TO %s", pgx.Identifier{read}.Sanitize(), pgx.Identifier{write}.Sanitize(), pgx.Identifier{role}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	reconcile()
	mismatch("explain names the group no grant explains", "holds "+write+", which no grant explains")
	accountHolds(read, write)

	// Put right by hand: explain matches again.
	if _, err := db.Exec(ctx, fmt.Sprintf("REVOKE %s FROM %s", pgx.Identifier{write}.Sanitize(), pgx.Identifier{role}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	reconcile()
	matches("the target as the grants say again")
	accountHolds(read)
}

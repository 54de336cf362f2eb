package provisioner

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/tenure-dev/tenure/pkg/connector"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// While a target's read-back disagrees (it accepted the disable and left the account
// enabled), the case's account shows what the target answered and why it is not done; once
// verified, it no longer shows the error that is now history.
func TestCaseAccountShowsTheReadBackAndNoStaleError(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	e.join(t, "wr")
	eventually(t, "account verified enabled", func() error {
		res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "wr"})
		if len(res.GetAccounts()) != 1 || res.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
	e.target.lie.Store(true)
	e.leave(t, "wr")
	eventually(t, "the disagreeing read-back on the case", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "wr"})
		if err != nil {
			return err
		}
		a := res.LeaverCase.Accounts[0]
		if a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED || !strings.Contains(a.LastError, "read-back") {
			return fmt.Errorf("case account %v", a)
		}
		return nil
	})
	e.target.lie.Store(false)
	eventually(t, "case completed", func() error {
		res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "wr"})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", res.LeaverCase)
		}
		return nil
	})
	res, err := e.svc.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: "wr"})
	if err != nil {
		t.Fatal(err)
	}
	if a := res.LeaverCase.Accounts[0]; a.Status != "verified" || a.LastError != "" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
		t.Fatalf("verified case account %v: want no last error and read back disabled", a)
	}
}

// Linking an orphan to its worker closes its finding at once.
func TestLinkingAnOrphanClosesItsFinding(t *testing.T) {
	e := start(t)
	ctx := context.Background()
	if _, err := e.target.CreateAccount(ctx, connector.AccountSpec{Username: "wo-admin"}); err != nil {
		t.Fatal(err)
	}
	e.join(t, "wo")
	eventually(t, "joiner", func() error {
		if res, _ := e.svc.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "wo"}); len(res.GetAccounts()) != 1 {
			return fmt.Errorf("accounts %v", res.GetAccounts())
		}
		return nil
	})
	op := asOperator("op-orphan")
	if _, err := e.svc.Reconcile(op, &provisionerv1.ReconcileRequest{Connector: "demo"}); err != nil {
		t.Fatal(err)
	}
	open := func() []string {
		t.Helper()
		res, err := e.svc.ListFindings(ctx, &provisionerv1.ListFindingsRequest{Connector: "demo", Kind: "orphan"})
		if err != nil {
			t.Fatal(err)
		}
		return findingKeys(res.Findings)
	}
	if got := open(); !slices.Contains(got, "orphan:wo-admin") {
		t.Fatalf("open findings after reconciling: %v", got)
	}
	if _, err := e.svc.LinkAccount(op, &provisionerv1.LinkAccountRequest{Connector: "demo", WorkerId: "wo", Username: "wo-admin", Reason: "CHG-1: wo's admin account"}); err != nil {
		t.Fatal(err)
	}
	if got := open(); slices.Contains(got, "orphan:wo-admin") {
		t.Fatalf("the linked orphan's finding is still open: %v", got)
	}
	res, err := e.svc.ListFindings(ctx, &provisionerv1.ListFindingsRequest{Connector: "demo", Kind: "orphan", Status: "resolved"})
	if err != nil || !slices.Contains(findingKeys(res.Findings), "orphan:wo-admin") {
		t.Fatalf("resolved findings: %v, %v", res, err)
	}
}

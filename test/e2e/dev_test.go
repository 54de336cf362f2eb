package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/cmd/app"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// One leaver, end to end through all four services on the embedded default: a signed joiner
// creates accounts in the demo targets, a signed termination opens a case that disables and
// reads back every account, and the ledger holds an entry for each step.
func TestDevLeaverEndToEnd(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: dir, HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			d.Stop()
		}
	})
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	conn := dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"])
	prov := provisionerv1.NewProvisioningServiceClient(conn)
	led := ledgerv1.NewLedgerServiceClient(conn)
	worker := "w-e2e-1"

	// (c) A repeated webhook id yields one event.
	body := hrEvent("hire", worker, "RN", "grace.hopper@clinic.example")
	code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-1", body)
	if code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	code, res = postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-1", body)
	if code != 200 || res["status"] != "duplicate" {
		t.Fatalf("repeated joiner: %d %v", code, res)
	}
	w, err := intakev1.NewWorkforceServiceClient(conn).GetWorker(ctx, &intakev1.GetWorkerRequest{WorkerId: worker})
	if err != nil || w.Worker.JobCode != "RN" {
		t.Fatalf("GetWorker = %v, %v", w, err)
	}

	eventually(t, 30*time.Second, "four demo accounts verified enabled", func() error {
		r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		n := verifiedEnabled(r.Accounts)
		if n != 4 {
			return fmt.Errorf("%d verified of %v", n, r.Accounts)
		}
		return nil
	})
	// The accounts are real logins in the dev cluster.
	if got := canLogin(t, d.DatabaseURL, "wiki_grace.hopper"); !got {
		t.Fatal("demo account wiki_grace.hopper cannot log in after the joiner")
	}

	code, res = postWebhook(t, hook, d.Secrets.WebhookSecret, "term-1", hrEvent("termination", worker, "", ""))
	if code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	var c *provisionerv1.LeaverCase
	eventually(t, 30*time.Second, "leaver case completed", func() error {
		r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		c = r.LeaverCase
		if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", c)
		}
		return nil
	})
	if len(c.Accounts) != 4 {
		t.Fatalf("case covers %d accounts, want 4", len(c.Accounts))
	}
	for _, a := range c.Accounts {
		if a.Status != "verified" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED || a.VerifiedAt == nil {
			t.Errorf("case account %v", a)
		}
	}
	if canLogin(t, d.DatabaseURL, "wiki_grace.hopper") {
		t.Fatal("demo account can still log in after the leaver case completed")
	}

	// The ledger holds an entry for each step.
	var subjects []string
	eventually(t, 10*time.Second, "ledger has the case completion", func() error {
		q, err := led.Query(ctx, &ledgerv1.QueryRequest{WorkerId: worker, Limit: 1000})
		if err != nil {
			return err
		}
		subjects = subjects[:0]
		for _, e := range q.Entries {
			subjects = append(subjects, e.Subject)
		}
		if !slices.Contains(subjects, "tenure.revocation.case_completed."+worker) {
			return fmt.Errorf("entries %v", subjects)
		}
		return nil
	})
	count := func(s string) int {
		n := 0
		for _, x := range subjects {
			if x == s {
				n++
			}
		}
		return n
	}
	want := map[string]int{
		"tenure.hr.joiner." + worker: 1, "tenure.hr.leaver." + worker: 1, "tenure.access.grant." + worker: 4,
		"tenure.case.opened." + worker: 1, "tenure.case.completed." + worker: 1,
		"tenure.revocation.worker_terminated." + worker: 1, "tenure.revocation.account_disabled." + worker: 4,
		"tenure.revocation.case_completed." + worker: 1,
	}
	for s, n := range want {
		if got := count(s); got != n {
			t.Errorf("ledger has %d × %s, want %d", got, s, n)
		}
	}
	for _, target := range []string{"demo-wiki", "demo-chat", "demo-intranet", "demo-ticketing"} {
		if count("tenure.provision."+target+".disable") < 1 || count("tenure.result."+target+".verified") < 2 {
			t.Errorf("ledger lacks the disable command or its verified result for %s", target)
		}
	}
	v, err := led.Verify(ctx, &ledgerv1.VerifyRequest{})
	if err != nil || !v.Ok {
		t.Fatalf("ledger verify = %v, %v", v, err)
	}

	// Shutting down stops the Postgres cluster tenure dev started.
	d.Stop()
	stopped = true
	if _, err := os.Stat(filepath.Join(dir, "postgres", "data", "postmaster.pid")); !os.IsNotExist(err) {
		t.Fatalf("postgres still running after Stop: %v", err)
	}
}

func canLogin(t *testing.T, dbURL, role string) bool {
	t.Helper()
	// Demo accounts may connect to the "postgres" database; tenure's own database is closed
	// to everyone but the service roles.
	u := strings.Replace(strings.Replace(dbURL, "postgres://postgres@", "postgres://"+role+"@", 1), "/tenure?", "/postgres?", 1)
	conn, err := pgx.Connect(context.Background(), u)
	if err != nil {
		return false
	}
	conn.Close(context.Background())
	return true
}

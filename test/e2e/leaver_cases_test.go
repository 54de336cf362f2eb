package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tenure-dev/tenure/cmd/app"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// Every grant a leaver loses is confirmed, in the provisioner and in approval, with one
// grant_revoked revocation each, and an access review waiting for those confirmations closes.
// Six RN hires, then six terminations back to back, on `tenure dev` with the demo policy:
// each termination's revokes (from approval) race the disables' read-backs (in the
// provisioner), which is where confirmations used to go missing (issue 16, point 4).
func TestDevLeaverRevocationsAllConfirmed(t *testing.T) {
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	gov := approvalv1.NewGovernanceServiceClient(dial(t, d.GRPCAddr, d.Secrets.Tokens["security"]))
	conn := dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"])
	prov := provisionerv1.NewProvisioningServiceClient(conn)
	led := ledgerv1.NewLedgerServiceClient(conn)

	const leavers = 6
	workers := make([]string, leavers)
	for i := range workers {
		workers[i] = fmt.Sprintf("w-conf-%d", i)
		if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-"+workers[i],
			hrEvent("hire", workers[i], "RN", fmt.Sprintf("rn%d@clinic.example", i))); code != 202 {
			t.Fatalf("hire %s: %d %v", workers[i], code, res)
		}
	}
	for _, w := range workers {
		waitAccountsEnabled(t, d, w, 4)
	}
	// A review of every system the leavers lose access to, before anyone decides: it can
	// only close through the leavers' revokes and their confirmations.
	campaigns := map[string]string{}
	for _, system := range []string{"wiki", "chat", "intranet", "ticketing"} {
		res, err := gov.StartReview(ctx, &approvalv1.StartReviewRequest{System: system})
		if err != nil {
			t.Fatalf("StartReview %s: %v", system, err)
		}
		if res.Campaign.Items != leavers {
			t.Fatalf("campaign on %s has %d items, want %d", system, res.Campaign.Items, leavers)
		}
		campaigns[system] = res.Campaign.CampaignId
	}

	for _, w := range workers {
		if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "term-"+w, hrEvent("termination", w, "", "")); code != 202 {
			t.Fatalf("termination %s: %d %v", w, code, res)
		}
	}
	for _, w := range workers {
		eventually(t, 60*time.Second, "leaver case of "+w+" completed", func() error {
			r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: w})
			if err != nil {
				return err
			}
			if r.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
				return fmt.Errorf("case %v", r.LeaverCase)
			}
			return nil
		})
	}

	// Approval: every grant revoked, and every revoke confirmed by a read-back.
	for _, w := range workers {
		eventually(t, 20*time.Second, "approval confirms every revoke of "+w, func() error {
			res, err := gov.ListGrants(ctx, &approvalv1.ListGrantsRequest{WorkerId: w, IncludeRevoked: true})
			if err != nil {
				return err
			}
			n := 0
			for _, g := range res.Grants {
				if g.RevokedAt == nil {
					return fmt.Errorf("grant %s (%s) not revoked", g.GrantId, g.System)
				}
				if g.RevokeConfirmedAt == nil {
					return fmt.Errorf("revoke of grant %s (%s) not confirmed", g.GrantId, g.System)
				}
				n++
			}
			if n != 4 {
				return fmt.Errorf("%d grants, want 4", n)
			}
			return nil
		})
	}
	// The provisioner: every revoked grant confirmed.
	db, err := pgx.Connect(ctx, d.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	var unconfirmed []string
	rows, _ := db.Query(ctx, `SELECT g.grant_id FROM provisioner.link_grants g JOIN provisioner.links l USING (link_id)
		WHERE l.worker_id = ANY($1) AND (g.active OR g.revoke_confirmed_at IS NULL)`, workers)
	unconfirmed, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(unconfirmed) > 0 {
		t.Errorf("provisioner grants active or unconfirmed: %v %v", unconfirmed, err)
	}
	// One grant_revoked revocation per grant on the revocation stream (the ledger's copy).
	for _, w := range workers {
		eventually(t, 20*time.Second, "four grant_revoked revocations for "+w, func() error {
			q, err := led.Query(ctx, &ledgerv1.QueryRequest{WorkerId: w, Limit: 1000})
			if err != nil {
				return err
			}
			n := 0
			for _, e := range q.Entries {
				if e.Subject == "tenure.revocation.grant_revoked."+w {
					n++
				}
			}
			if n != 4 {
				return fmt.Errorf("%d grant_revoked entries", n)
			}
			return nil
		})
	}
	// Each review closes with every item revoked and confirmed.
	for system, id := range campaigns {
		eventually(t, 20*time.Second, "review of "+system+" closed", func() error {
			res, err := gov.GetReview(ctx, &approvalv1.GetReviewRequest{CampaignId: id})
			if err != nil {
				return err
			}
			c := res.Campaign
			if c.Status != "closed" || c.Revoked != leavers || c.RevokesConfirmed != leavers {
				return fmt.Errorf("campaign %s: status %s, %d revoked, %d confirmed", id, c.Status, c.Revoked, c.RevokesConfirmed)
			}
			return nil
		})
	}
}

// HR events arriving while leaver cases still verify never leave a case open (issue 16,
// point 5): six RN leavers, each termination followed at once by the same hire re-sent under
// a new delivery id and a job change. Every case completes with its four accounts verified
// disabled, and no account of theirs can log in, read from the target itself.
func TestDevEventsDuringLeaverCases(t *testing.T) {
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"]))

	workers := make([]string, 6)
	hires := make([][]byte, len(workers))
	for i := range workers {
		workers[i] = fmt.Sprintf("w-open-%d", i)
		hires[i] = hrEvent("hire", workers[i], "RN", fmt.Sprintf("open%d@clinic.example", i))
		if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-"+workers[i], hires[i]); code != 202 {
			t.Fatalf("hire %s: %d %v", workers[i], code, res)
		}
	}
	for _, w := range workers {
		waitAccountsEnabled(t, d, w, 4)
	}
	for i, w := range workers {
		if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "term-"+w, hrEvent("termination", w, "", "")); code != 202 {
			t.Fatalf("termination %s: %d %v", w, code, res)
		}
		// Whatever the intake answers (accepted, or no effect for a worker who has left), the
		// leaver case must not be left open by them.
		for id, body := range map[string][]byte{"hire-again-" + w: hires[i], "job-" + w: hrEvent("job_change", w, "CLERK", "")} {
			if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, id, body); code/100 != 2 {
				t.Fatalf("%s: %d %v", id, code, res)
			}
		}
	}

	db, err := pgx.Connect(ctx, d.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	for _, w := range workers {
		eventually(t, 60*time.Second, "leaver case of "+w+" completed, every account verified disabled", func() error {
			r, err := prov.GetLeaverCase(ctx, &provisionerv1.GetLeaverCaseRequest{WorkerId: w})
			if err != nil {
				return err
			}
			c := r.LeaverCase
			if c.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED || len(c.Accounts) != 4 {
				return fmt.Errorf("case %v", c)
			}
			for _, a := range c.Accounts {
				if a.Status != "verified" || a.ObservedState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
					return fmt.Errorf("case account %v", a)
				}
			}
			return nil
		})
	}
	var open int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM provisioner.cases WHERE worker_id = ANY($1) AND status = 'open'", workers).Scan(&open); err != nil || open != 0 {
		t.Fatalf("%d cases open (%v)", open, err)
	}
	// Settled: nothing in flight re-enables an account afterwards.
	eventually(t, 30*time.Second, "every account settled", func() error {
		for _, w := range workers {
			res, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: w})
			if err != nil {
				return err
			}
			for _, a := range res.Accounts {
				if a.ObservedGeneration != a.Generation || a.DesiredState != eventsv1.AccountState_ACCOUNT_STATE_DISABLED {
					return fmt.Errorf("%s: account %v", w, a)
				}
			}
		}
		return nil
	})
	for _, w := range workers {
		res, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: w})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range res.Accounts {
			role := strings.TrimPrefix(a.Connector, "demo-") + "_" + a.Username
			var login bool
			if err := db.QueryRow(ctx, "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", role).Scan(&login); err != nil || login {
				t.Errorf("%s: role %s can log in: %v (%v)", w, role, login, err)
			}
		}
	}
}

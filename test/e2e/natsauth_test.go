package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// The production topology: NATS configured by deploy/nats/nats.conf (each service its own
// user, least-privilege permissions, per-user reply inboxes), `tenure setup` as the NATS
// admin, and one `tenure serve` process per service, each as its own NATS user and database
// role. A joiner and a leaver go through all four.
func TestServeAsLeastPrivilegeNATSUsers(t *testing.T) {
	users := []string{"admin", "intake", "approval", "provisioner", "ledger", "security", "auditor"}
	pw := map[string]string{}
	for _, u := range users {
		pw[u] = fmt.Sprintf("%s-%d", u, time.Now().UnixNano())
		t.Setenv("NATS_"+strings.ToUpper(u)+"_PASSWORD", pw[u])
	}
	e := newServeEnv(t, "../../deploy/nats/nats.conf", "demo-wiki")
	out, err := e.cmd(context.Background(), e.tenure, "setup", "--nats-url", e.natsURL, "--nats-user", "admin", "--nats-password", pw["admin"],
		"--database-url", e.adminURL).CombinedOutput()
	if err != nil {
		t.Fatalf("tenure setup as NATS admin: %v\n%s", err, out)
	}
	addrs := map[string][2]string{}
	for _, svc := range []string{"intake", "approval", "provisioner", "ledger"} {
		// Every outbox round goes as one atomic batch, to show the users may publish them.
		h, g := e.serve(t, svc, "TENURE_NATS_USER="+svc, "TENURE_NATS_PASSWORD="+pw[svc], "TENURE_NATS_ATOMIC_BATCH=1")
		addrs[svc] = [2]string{h, g}
	}

	worker := "w-least-1"
	hook := "http://" + addrs["intake"][0] + "/webhooks/hr"
	if code, res := postWebhook(t, hook, e.secret, "j1", hrEvent("hire", worker, "ANALYST", "ada.least@clinic.example")); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, addrs["provisioner"][1], e.token))
	eventually(t, 30*time.Second, "account created", func() error {
		r, err := prov.ListAccounts(context.Background(), &provisionerv1.ListAccountsRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if len(r.Accounts) != 1 || r.Accounts[0].ObservedState != eventsv1.AccountState_ACCOUNT_STATE_ENABLED {
			return fmt.Errorf("accounts %v", r.Accounts)
		}
		return nil
	})
	// Hold the target role's row lock, so the disable waits in flight. The provisioner's NATS
	// user may not read raw stream messages; ListQueues still tells the command's age, from
	// the commands the provisioner holds.
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, e.adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	accts, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: worker})
	if err != nil {
		t.Fatal(err)
	}
	var role string
	if err := admin.QueryRow(ctx, "SELECT rolname FROM pg_roles WHERE rolcanlogin AND right(rolname, length($1) + 1) = '_' || $1",
		accts.Accounts[0].Username).Scan(&role); err != nil {
		t.Fatalf("the account's role: %v", err)
	}
	lock, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" CONNECTION LIMIT 7"); err != nil {
		t.Fatal(err)
	}
	if code, res := postWebhook(t, hook, e.secret, "t1", hrEvent("termination", worker, "", "")); code != 202 {
		t.Fatalf("termination: %d %v", code, res)
	}
	eventually(t, 30*time.Second, "the stuck disable's age", func() error {
		q, err := prov.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil || len(q.Queues) != 1 {
			return fmt.Errorf("queues %v, %v", q, err)
		}
		if qu := q.Queues[0]; qu.InFlight == 0 || qu.OldestAge == nil || qu.OldestAge.AsDuration() <= 0 {
			return fmt.Errorf("queue %v", qu)
		}
		return nil
	})
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "case completed", func() error {
		r, err := prov.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if r.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", r.LeaverCase)
		}
		return nil
	})
	q, err := prov.ListQueues(context.Background(), &provisionerv1.ListQueuesRequest{})
	if err != nil || len(q.Queues) != 1 {
		t.Fatalf("ListQueues under the provisioner's NATS permissions: %v %v", q, err)
	}
	// The provisioner's outbox went out in atomic batches (no batch was refused and
	// republished one by one, which would have dropped the batch headers).
	nc, err := nats.Connect(e.natsURL, nats.UserInfo("admin", pw["admin"]), nats.CustomInboxPrefix("_INBOX_admin"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	done, err := st.GetLastMsgForSubject(ctx, "tenure.case.completed."+worker)
	if err != nil {
		t.Fatal(err)
	}
	if done.Header.Get("Nats-Batch-Id") == "" {
		t.Fatalf("case_completed was not published in an atomic batch: headers %v", done.Header)
	}
	ctlOut, err := e.cmd(context.Background(), e.tenurectl, "ledger", "query", "--worker", worker, "--addr", addrs["ledger"][1], "--token", e.token, "--plaintext",
		"--config", "/nonexistent").CombinedOutput()
	if err != nil || !strings.Contains(string(ctlOut), "tenure.case.completed."+worker) {
		// The ledger may still be catching up; give it a moment.
		time.Sleep(2 * time.Second)
		ctlOut, err = e.cmd(context.Background(), e.tenurectl, "ledger", "query", "--worker", worker, "--addr", addrs["ledger"][1], "--token", e.token, "--plaintext",
			"--config", "/nonexistent").CombinedOutput()
		if err != nil || !strings.Contains(string(ctlOut), "tenure.case.completed."+worker) {
			t.Fatalf("ledger query: %v\n%s", err, ctlOut)
		}
	}
}

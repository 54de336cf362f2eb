package provisioner

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/connector"
	"github.com/tenure-dev/tenure/pkg/connector/connectortest"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook"
	"github.com/tenure-dev/tenure/pkg/connectors/webhook/webhooktest"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/pgstore"
	"github.com/tenure-dev/tenure/pkg/pgtest"
	stdwebhook "github.com/tenure-dev/tenure/pkg/webhook"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// superuserQuery runs sql on the target database as the superuser, outside tenure, and scans
// its one row into dest, if given.
func (e *env) superuserQuery(t *testing.T, sql string, args []any, dest ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if len(dest) == 0 {
		if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(dest...); err != nil {
		t.Fatal(err)
	}
}

func (e *env) waitCase(t *testing.T, worker string) {
	t.Helper()
	eventually(t, "case of "+worker+" completed", func() error {
		res, err := e.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: worker})
		if err != nil {
			return err
		}
		if res.LeaverCase.Status != eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED {
			return fmt.Errorf("case %v", res.LeaverCase.Status)
		}
		return nil
	})
}

// A leaver's PostgreSQL role loses its password along with its login: the catalog shows no
// password (read directly as the superuser), and tenure.revocation.credentials_revoked.<worker>
// says so once, also when the disable command is redelivered.
func TestLeaverRevokesCredentials(t *testing.T) {
	e := start(t)
	e.join(t, "cr1")
	e.waitVerified(t, "cr1", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	role := e.prefix + "cr1"
	// A DBA gave the role a password (tenure never sets one).
	e.superuserQuery(t, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" PASSWORD 'scr1pt-pw'", nil)
	hasPassword := func() bool {
		var has bool
		e.superuserQuery(t, "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1", []any{role}, &has)
		return has
	}
	if !hasPassword() {
		t.Fatal("password not set")
	}

	e.leave(t, "cr1")
	e.waitCase(t, "cr1")
	if hasPassword() {
		t.Fatal("pg_authid.rolpassword is still set after the leaver")
	}
	if a := e.account(t, "cr1"); a.State != connector.StateDisabled {
		t.Fatalf("target account %+v", a)
	}
	var revs []*eventsv1.Revocation
	eventually(t, "credentials_revoked published", func() error {
		if revs = e.revocations(t, "credentials_revoked", "cr1"); len(revs) != 1 {
			return fmt.Errorf("%d credentials_revoked", len(revs))
		}
		return nil
	})
	r := revs[0]
	cases, _ := e.svc.GetLeaverCase(context.Background(), &provisionerv1.GetLeaverCaseRequest{WorkerId: "cr1"})
	if r.Kind != eventsv1.RevocationKind_REVOCATION_KIND_CREDENTIALS_REVOKED || r.WorkerId != "cr1" || r.Connector != "demo" || r.System != "reporting" ||
		r.Username != "cr1" || r.LinkId == "" || r.CaseId != cases.GetLeaverCase().GetCaseId() || r.CaseId == "" || !r.Verified || r.OccurredAt == nil || r.RevocationId == "" {
		t.Fatalf("revocation %v", r)
	}
	msg := e.streamMsgs(t, "tenure.revocation.credentials_revoked.cr1")[0]
	if msg.Header.Get("ce-subject") != "cr1" || msg.Header.Get("ce-source") != source || msg.Header.Get("ce-dataschema") != "tenure.events.v1.Revocation" {
		t.Fatalf("headers %v", msg.Header)
	}

	// A redelivered disable command (after JetStream's duplicate window) changes nothing.
	cmds := e.streamMsgs(t, "tenure.provision.demo.disable")
	if len(cmds) != 1 {
		t.Fatalf("%d disable commands", len(cmds))
	}
	e.consumed(t, workDurable("demo"), e.redeliver(t, cmds[0]))
	time.Sleep(300 * time.Millisecond)
	for _, kind := range []string{"credentials_revoked", "account_disabled", "session_revoked"} {
		if got := e.revocations(t, kind, "cr1"); len(got) != 1 {
			t.Fatalf("%s published %d times", kind, len(got))
		}
	}
}

// A webhook target that answers revoke_credentials with 501 is still disabled and its case
// completes, without a credentials_revoked; one that supports it has the credential revoked
// (checked in the receiver's own account store) and the revocation published.
func TestWebhookCredentialRevocation(t *testing.T) {
	ctx := context.Background()
	secret := stdwebhook.NewSecret()
	h := webhooktest.Start(t, secret, connectortest.NewMemory())
	conn, err := webhook.New(webhook.Config{URL: h.URL, Secret: connector.SecretValue(secret)})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgstore.Connect(ctx, pgtest.NewDatabase(t), schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	fast := connector.Policy{BackoffInitial: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, MaxAttempts: 50}
	svc, js := run(t, pool, Config{Targets: []Target{{Name: "hook", Type: "webhook", System: "rostering", Conn: conn, Policy: fast}}})
	e := &env{svc: svc, pool: pool, js: js}
	for _, w := range []string{"wh1", "wh2", "wh3"} {
		e.publish(t, events.Subject("tenure.hr", "joiner", w), w, &eventsv1.WorkerEvent{Kind: eventsv1.WorkerEventKind_WORKER_EVENT_KIND_JOINER,
			Worker: &eventsv1.Worker{WorkerId: w, Email: w + "@hospital.example", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, EffectiveTime: timestamppb.New(time.Now().Add(-time.Hour))})
		e.publish(t, events.Subject("tenure.access", "grant", w), w, &eventsv1.AccessDecision{Kind: eventsv1.AccessDecisionKind_ACCESS_DECISION_KIND_GRANT,
			WorkerId: w, GrantId: "g-" + w, Connector: "hook", System: "rostering"})
		e.waitVerified(t, w, eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
		if err := h.Store.SetCredential(connector.AccountRef{Username: w}, "token-"+w); err != nil {
			t.Fatal(err)
		}
	}

	h.Override(func(op string) (int, http.Header) {
		if op == webhook.OpRevokeCredentials {
			return http.StatusNotImplemented, nil
		}
		return 0, nil
	})
	e.leave(t, "wh1")
	e.waitCase(t, "wh1")
	if a, _ := h.Store.GetAccount(ctx, connector.AccountRef{Username: "wh1"}); a.State != connector.StateDisabled {
		t.Fatalf("wh1 in the target: %+v", a)
	}
	eventually(t, "account_disabled for wh1", func() error {
		if n := len(e.revocations(t, "account_disabled", "wh1")); n != 1 {
			return fmt.Errorf("%d account_disabled", n)
		}
		return nil
	})
	if got := e.revocations(t, "credentials_revoked", "wh1"); len(got) != 0 {
		t.Fatalf("credentials_revoked although the target answered 501: %v", got)
	}

	h.Override(nil)
	e.leave(t, "wh2")
	e.waitCase(t, "wh2")
	eventually(t, "credentials_revoked for wh2", func() error {
		got := e.revocations(t, "credentials_revoked", "wh2")
		if len(got) != 1 || got[0].Connector != "hook" || got[0].System != "rostering" || got[0].Username != "wh2" || !got[0].Verified {
			return fmt.Errorf("credentials_revoked %v", got)
		}
		return nil
	})
	// A leave of absence disables without revoking credentials: the return restores access.
	hr := func(kind eventsv1.WorkerEventKind, tok string) {
		e.publish(t, events.Subject("tenure.hr", tok, "wh3"), "wh3", &eventsv1.WorkerEvent{Kind: kind,
			Worker: &eventsv1.Worker{WorkerId: "wh3", Status: eventsv1.WorkerStatus_WORKER_STATUS_ACTIVE}, EffectiveTime: timestamppb.Now()})
	}
	hr(eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_START, "leave_start")
	e.waitVerified(t, "wh3", eventsv1.AccountState_ACCOUNT_STATE_DISABLED)
	hr(eventsv1.WorkerEventKind_WORKER_EVENT_KIND_LEAVE_END, "leave_end")
	e.waitVerified(t, "wh3", eventsv1.AccountState_ACCOUNT_STATE_ENABLED)
	if !h.Store.Authenticate(connector.AccountRef{Username: "wh3"}, "token-wh3") {
		t.Fatal("a leave of absence revoked wh3's token")
	}
	if got := e.revocations(t, "credentials_revoked", "wh3"); len(got) != 0 {
		t.Fatalf("credentials_revoked for a leave of absence: %v", got)
	}

	// Checked in the target itself: re-enabled, the account's token would not work.
	if err := h.Store.EnableAccount(ctx, connector.AccountRef{Username: "wh2"}); err != nil {
		t.Fatal(err)
	}
	if h.Store.Authenticate(connector.AccountRef{Username: "wh2"}, "token-wh2") {
		t.Fatal("wh2's token still works in the target")
	}
}

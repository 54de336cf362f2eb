package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/cmd/app"
	"github.com/tenure-dev/tenure/pkg/natsx"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

// The whole system on the embedded default: a database superuser rolls the ledger back past
// its last witnessed checkpoint; the ledger refuses to sign, /readyz answers 503 until an
// operator acts, and tenure.alert.ledger_inconsistent is published.
func TestDevLedgerRollbackMakesItNotReady(t *testing.T) {
	ctx := context.Background()
	d, err := app.StartDev(ctx, app.DevOptions{DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", GRPCAddr: "127.0.0.1:0", NATSPort: -1, Fast: true, Log: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	readyz := func() (int, string) {
		res, err := http.Get("http://" + d.HTTPAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	hook := "http://" + d.HTTPAddr + "/webhooks/" + d.Secrets.WebhookSource
	if code, res := postWebhook(t, hook, d.Secrets.WebhookSecret, "hire-rb", hrEvent("hire", "w-rb", "RN", "rb@clinic.example")); code != 202 {
		t.Fatalf("joiner: %d %v", code, res)
	}
	led := ledgerv1.NewLedgerServiceClient(dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"]))
	eventually(t, 30*time.Second, "the joiner recorded", func() error {
		r, err := led.Query(ctx, &ledgerv1.QueryRequest{WorkerId: "w-rb"})
		if err != nil || len(r.Entries) == 0 {
			return fmt.Errorf("%v entries, %v", r, err)
		}
		return nil
	})
	// The joiner's events are all recorded (its accounts verified) before the cut, so none
	// lands in the ledger while the superuser rewrites it.
	prov := provisionerv1.NewProvisioningServiceClient(dial(t, d.GRPCAddr, d.Secrets.Tokens["admin"]))
	eventually(t, 30*time.Second, "the joiner's accounts verified", func() error {
		r, err := prov.ListAccounts(ctx, &provisionerv1.ListAccountsRequest{WorkerId: "w-rb"})
		if err != nil || len(r.Accounts) != 4 {
			return fmt.Errorf("accounts %v, %v", r, err)
		}
		for _, a := range r.Accounts {
			if a.VerifiedAt == nil {
				return fmt.Errorf("accounts %v", r.Accounts)
			}
		}
		return nil
	})
	var signed int64
	eventually(t, 30*time.Second, "a witnessed checkpoint", func() error {
		cp, err := d.Ledger.Checkpoint(ctx)
		if err != nil {
			return err
		}
		if cp != nil {
			signed = cp.Seq
		}
		if signed < 2 {
			return errors.New("none signed yet")
		}
		return nil
	})
	if code, body := readyz(); code != 200 {
		t.Fatalf("/readyz before = %d %s", code, body)
	}

	// The superuser cuts the ledger back to entry 1, with its checkpoints and head.
	su, err := pgx.Connect(ctx, d.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	for _, q := range []string{
		"ALTER TABLE ledger.entries DISABLE TRIGGER ALL", "ALTER TABLE ledger.checkpoints DISABLE TRIGGER ALL", "ALTER TABLE ledger.head DISABLE TRIGGER ALL",
		"DELETE FROM ledger.entries WHERE seq > 1", "DELETE FROM ledger.checkpoints WHERE seq > 1", "UPDATE ledger.head SET seq = 1",
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if _, err := d.Ledger.Checkpoint(ctx); !errors.Is(err, ledger.ErrInconsistent) {
		t.Fatalf("Checkpoint after the rollback = %v, want ErrInconsistent", err)
	}
	code, body := readyz()
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "does not extend its last signed checkpoint") {
		t.Fatalf("/readyz after = %d %s", code, body)
	}
	nc, err := d.ConnectNATS("admin") // the dev NATS refuses anonymous clients
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, ledger.AlertInconsistentSubject); err != nil {
		t.Errorf("no %s: %v", ledger.AlertInconsistentSubject, err)
	}
	// Verify reports it, having read the witness: a fork (the head's root was left as it was:
	// the tree of one entry does not have it), or, when the ledger appended events that were
	// still arriving after the cut, entries missing between the cut and those.
	res, err := led.Verify(ctx, &ledgerv1.VerifyRequest{})
	if err != nil || res.Ok || (res.Finding != "fork" && res.Finding != "missing") || res.WitnessedSize != signed {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
}

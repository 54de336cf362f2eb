package natsx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// The ledger's checkpoint witness (deploy/nats/accounts.conf, natsx.StreamConfigs): only the
// ledger user publishes to it, the ledger, security and auditor users read it, and nobody —
// not even the NATS admin through the JetStream API — deletes a message from it or purges it.
func TestNATSWitnessStream(t *testing.T) {
	permSetPasswords(t)
	ns := permStart(t, permLoad(t, permDeployFile(t, "nats.conf")))
	url := ns.ClientURL()
	ctx := context.Background()
	c := map[string]*permClient{}
	for _, u := range permUsers {
		c[u] = permConnect(t, url, u)
	}
	if err := natsx.EnsureStreams(ctx, c["admin"].js, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}

	for i, note := range []string{"checkpoint 1", "checkpoint 2"} {
		ack, err := c["ledger"].js.PublishMsg(ctx, &nats.Msg{Subject: natsx.WitnessSubject, Data: []byte(note)})
		if err != nil {
			t.Fatalf("ledger publishes to the witness: %v", err)
		}
		if ack.Stream != natsx.WitnessStream || ack.Sequence != uint64(i+1) {
			t.Fatalf("PubAck = %+v", ack)
		}
	}
	if _, err := c["ledger"].js.Publish(ctx, "tenure.alert.ledger_inconsistent", []byte(`{}`)); err != nil {
		t.Errorf("ledger publishes tenure.alert.ledger_inconsistent: %v", err)
	}

	t.Run("ledger, security and auditor read the newest checkpoint", func(t *testing.T) {
		for _, u := range []string{"ledger", "security", "auditor"} {
			st, err := c[u].js.Stream(ctx, natsx.WitnessStream)
			if err != nil {
				t.Fatalf("%s: stream info: %v", u, err)
			}
			m, err := st.GetLastMsgForSubject(ctx, natsx.WitnessSubject)
			if err != nil || string(m.Data) != "checkpoint 2" {
				t.Errorf("%s: newest witnessed = %v, %v", u, m, err)
			}
		}
	})

	t.Run("nobody else publishes to it", func(t *testing.T) {
		for _, u := range []string{"intake", "approval", "provisioner", "security", "auditor"} {
			c[u].denied(t, natsx.WitnessSubject, permPublishOp(c[u], natsx.WitnessSubject))
		}
	})

	t.Run("the services read nothing of it", func(t *testing.T) {
		for _, u := range []string{"intake", "approval", "provisioner"} {
			c[u].denied(t, "$JS.API.STREAM.MSG.GET.TENURE_WITNESS", permRequestOp(c[u], "$JS.API.STREAM.MSG.GET.TENURE_WITNESS", `{"last_by_subj":"witness.ledger.checkpoint"}`))
		}
		c["auditor"].denied(t, "$JS.API.STREAM.MSG.GET.TENURE_EVENTS", permRequestOp(c["auditor"], "$JS.API.STREAM.MSG.GET.TENURE_EVENTS", `{"seq":1}`))
		c["auditor"].denied(t, "$JS.API.CONSUMER.CREATE.TENURE_WITNESS.x", permRequestOp(c["auditor"], "$JS.API.CONSUMER.CREATE.TENURE_WITNESS.x", `{}`))
	})

	t.Run("the ledger, security and auditor cannot delete or purge", func(t *testing.T) {
		for _, u := range []string{"ledger", "security", "auditor"} {
			c[u].denied(t, "$JS.API.STREAM.MSG.DELETE.TENURE_WITNESS", permRequestOp(c[u], "$JS.API.STREAM.MSG.DELETE.TENURE_WITNESS", `{"seq":1}`))
			c[u].denied(t, "$JS.API.STREAM.PURGE.TENURE_WITNESS", permRequestOp(c[u], "$JS.API.STREAM.PURGE.TENURE_WITNESS", `{}`))
		}
	})

	t.Run("the stream itself refuses deletes and purges, even from admin", func(t *testing.T) {
		st, err := c["admin"].js.Stream(ctx, natsx.WitnessStream)
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		if !cfg.DenyDelete || !cfg.DenyPurge || cfg.MaxAge != 0 || cfg.MaxMsgs > 0 || cfg.MaxBytes > 0 {
			t.Errorf("witness config = deny_delete %v deny_purge %v max_age %v max_msgs %d max_bytes %d", cfg.DenyDelete, cfg.DenyPurge, cfg.MaxAge, cfg.MaxMsgs, cfg.MaxBytes)
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := st.DeleteMsg(dctx, 1); err == nil {
			t.Error("admin deleted a witnessed checkpoint")
		}
		if err := st.Purge(dctx); err == nil {
			t.Error("admin purged the witness")
		}
		if _, err := st.GetMsg(dctx, 1); err != nil {
			t.Errorf("checkpoint 1 is gone: %v", err)
		}
		var apiErr *jetstream.APIError
		if err := st.Purge(dctx); !errors.As(err, &apiErr) {
			t.Errorf("purge: %v, want a JetStream API error", err)
		}
	})
}

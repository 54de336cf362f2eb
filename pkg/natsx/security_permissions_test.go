package natsx_test

// Checks, against deploy/nats/nats.conf loaded into a real embedded nats-server, what a
// security team's NATS user may do with the revocation stream (docs/revocations.md): attach
// its own durable consumer filtered to tenure.revocation.>, replay from any sequence or time,
// ack, and nothing else; and that the ledger's SSF transmitter reads revocations only.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

func TestNATSSecurityUserReplaysRevocations(t *testing.T) {
	permSetPasswords(t)
	ns := permStart(t, permLoad(t, permDeployFile(t, "nats.conf")))
	url := ns.ClientURL()
	ctx := context.Background()
	admin, provisioner, intake := permConnect(t, url, "admin"), permConnect(t, url, "provisioner"), permConnect(t, url, "intake")
	security, ledger := permConnect(t, url, "security"), permConnect(t, url, "ledger")
	if err := natsx.EnsureStreams(ctx, admin.js, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}

	// Revocations interleaved with HR events; remember each revocation's stream sequence.
	var revSeqs []uint64
	var revSubjects []string
	var midTime time.Time
	for i := range 6 {
		intake.publish(t, fmt.Sprintf("tenure.hr.leaver.w%d", i))
		if i == 3 {
			time.Sleep(20 * time.Millisecond)
			midTime = time.Now()
		}
		s := fmt.Sprintf("tenure.revocation.account_disabled.w%d", i)
		ack, err := provisioner.js.Publish(ctx, s, []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		revSeqs, revSubjects = append(revSeqs, ack.Sequence), append(revSubjects, s)
	}

	read := func(cons jetstream.Consumer) ([]string, []uint64) {
		t.Helper()
		var subjects []string
		var seqs []uint64
		for {
			batch, err := cons.FetchNoWait(100)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for msg := range batch.Messages() {
				n++
				md, err := msg.Metadata()
				if err != nil {
					t.Fatal(err)
				}
				subjects, seqs = append(subjects, msg.Subject()), append(seqs, md.Sequence.Stream)
				if err := msg.DoubleAck(ctx); err != nil {
					t.Errorf("security: ack: %v", err)
				}
			}
			if n == 0 {
				return subjects, seqs
			}
		}
	}
	replay := func(name string, cfg jetstream.ConsumerConfig) ([]string, []uint64) {
		t.Helper()
		cfg.Durable = name
		cfg.FilterSubject = "tenure.revocation.>"
		cfg.AckPolicy = jetstream.AckExplicitPolicy
		cons, err := security.js.CreateOrUpdateConsumer(ctx, natsx.EventsStream, cfg)
		if err != nil {
			t.Fatalf("security: create %s: %v", name, err)
		}
		subjects, seqs := read(cons)
		// The acks were recorded: nothing is pending and the ack floor is the last message.
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending != 0 || info.NumPending != 0 || (len(seqs) > 0 && info.AckFloor.Stream != seqs[len(seqs)-1]) {
			t.Errorf("%s after acks: pending %d, ack pending %d, ack floor %d", name, info.NumPending, info.NumAckPending, info.AckFloor.Stream)
		}
		if err := security.js.DeleteConsumer(ctx, natsx.EventsStream, name); err != nil {
			t.Errorf("security: delete %s: %v", name, err)
		}
		return subjects, seqs
	}

	t.Run("replay everything", func(t *testing.T) {
		got, _ := replay("security-siem", jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
		if !slices.Equal(got, revSubjects) {
			t.Errorf("got %v, want %v", got, revSubjects)
		}
	})
	t.Run("replay from a stream sequence", func(t *testing.T) {
		got, seqs := replay("security-soc", jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: revSeqs[2]})
		if !slices.Equal(got, revSubjects[2:]) || seqs[0] != revSeqs[2] {
			t.Errorf("got %v %v, want %v", got, seqs, revSubjects[2:])
		}
	})
	t.Run("replay from a time", func(t *testing.T) {
		got, _ := replay("security-caep", jetstream.ConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &midTime})
		if !slices.Equal(got, revSubjects[3:]) {
			t.Errorf("got %v, want %v", got, revSubjects[3:])
		}
	})
	t.Run("one worker, one kind", func(t *testing.T) {
		cfg := jetstream.ConsumerConfig{Durable: "security-siem", FilterSubject: "tenure.revocation.*.w4", AckPolicy: jetstream.AckExplicitPolicy}
		cons, err := security.js.CreateOrUpdateConsumer(ctx, natsx.EventsStream, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := read(cons); !slices.Equal(got, []string{"tenure.revocation.account_disabled.w4"}) {
			t.Errorf("got %v", got)
		}
		_ = security.js.DeleteConsumer(ctx, natsx.EventsStream, "security-siem")
	})

	t.Run("nothing else", func(t *testing.T) {
		// No publishing on any tenure subject, revocations included; no stream API.
		for _, s := range []string{"tenure.revocation.account_disabled.w9", "tenure.hr.leaver.w9", "tenure.access.grant.w9", "tenure.ledger.checkpoint.9", "tenure.dlq.security-siem"} {
			security.denied(t, s, permPublishOp(security, s))
		}
		for _, s := range []string{"$JS.API.STREAM.INFO.TENURE_EVENTS", "$JS.API.STREAM.MSG.GET.TENURE_EVENTS", "$JS.API.STREAM.PURGE.TENURE_EVENTS", "$JS.API.STREAM.NAMES", "$JS.API.CONSUMER.LIST.TENURE_EVENTS"} {
			security.denied(t, s, permRequestOp(security, s, `{"seq":1}`))
		}
		// A consumer whose filter reaches beyond revocations, on TENURE_EVENTS or TENURE_DLQ.
		for _, cfg := range []jetstream.ConsumerConfig{permSpec("security-siem", "tenure.>"), permSpec("security-siem", "tenure.hr.>"), permSpec("security-siem", "tenure.*.account_disabled.>")} {
			security.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem."+cfg.FilterSubject, permCreateConsumerOp(security, cfg))
		}
		security.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_DLQ.security-siem.tenure.dlq.>", func(ctx context.Context) error {
			_, err := security.js.CreateOrUpdateConsumer(ctx, natsx.DLQStream, permSpec("security-siem", "tenure.dlq.>"))
			return err
		})
		// An ordered (ephemeral) consumer is not among its names.
		security.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.security-siem_1.tenure.revocation.>", func(ctx context.Context) error {
			cons, err := security.js.OrderedConsumer(ctx, natsx.EventsStream, jetstream.OrderedConsumerConfig{
				FilterSubjects: []string{"tenure.revocation.>"}, NamePrefix: "security-siem"})
			if err != nil {
				return err
			}
			_, err = cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
			return err
		})
		// Nor the ledger's SSF durable, which would steal its revocations.
		security.denied(t, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.ledger-ssf",
			permRequestOp(security, "$JS.API.CONSUMER.MSG.NEXT.TENURE_EVENTS.ledger-ssf", `{"batch":1,"no_wait":true}`))
		security.subDenied(t, "tenure.>")
		security.subDenied(t, "_INBOX.>")
		security.subDenied(t, "$JS.ACK.>")
	})

	t.Run("the ledger's SSF transmitter reads revocations only", func(t *testing.T) {
		spec := natsx.ConsumerSpec{Durable: "ledger-ssf", FilterSubjects: []string{"tenure.revocation.>"}}
		cons := permConsumer(t, ledger, spec.Config())
		got := permFetchAll(t, ledger, cons)
		if !slices.Equal(got, revSubjects) {
			t.Errorf("ledger-ssf got %v", got)
		}
		ledger.denied(t, "$JS.API.CONSUMER.CREATE.TENURE_EVENTS.ledger-ssf.tenure.hr.>", permCreateConsumerOp(ledger, permSpec("ledger-ssf", "tenure.hr.>")))
		ledger.publish(t, "tenure.dlq.ledger-ssf")
		ledger.denied(t, "tenure.revocation.account_disabled.w9", permPublishOp(ledger, "tenure.revocation.account_disabled.w9"))
	})
}

package natsx_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tenure-dev/tenure/pkg/natsx"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
)

func groupMsgs(prefix string, n int) []*nats.Msg {
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		m := nats.NewMsg(fmt.Sprintf("tenure.result.%s.%d", prefix, i))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s-%d", prefix, i))
		m.Data = []byte(prefix)
		msgs[i] = m
	}
	return msgs
}

func noErrors(t *testing.T, res []natsx.Published) []natsx.Published {
	t.Helper()
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
	}
	return res
}

// wantSeqs checks the stream sequences PublishAll reported.
func wantSeqs(t *testing.T, res []natsx.Published, want ...uint64) {
	t.Helper()
	for i, r := range res {
		if r.Seq != want[i] {
			t.Fatalf("message %d stored at %d, reported %d", i, want[i], r.Seq)
		}
	}
}

// storedFrom returns the stream's messages from sequence first on, in order.
func storedFrom(t *testing.T, js jetstream.JetStream, first uint64) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, natsx.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := first; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

// A group of at least AtomicMin messages is stored as one atomic batch, in order; a smaller
// one message by message.
func TestGroupPublisherBatchesLargeGroups(t *testing.T) {
	ns := natstest.Start(t)
	p := natsx.NewGroupPublisher(ns.JS, nil)
	p.AtomicMin = 4
	ctx := context.Background()

	wantSeqs(t, noErrors(t, p.PublishAll(ctx, groupMsgs("big", 6))), 1, 2, 3, 4, 5, 6)
	wantSeqs(t, noErrors(t, p.PublishAll(ctx, groupMsgs("small", 3))), 7, 8, 9)

	got := storedFrom(t, ns.JS, 1)
	if len(got) != 9 {
		t.Fatalf("stream holds %d messages, want 9", len(got))
	}
	batch := got[0].Header.Get("Nats-Batch-Id")
	for i, m := range got {
		want := fmt.Sprintf("tenure.result.big.%d", i)
		if i >= 6 {
			want = fmt.Sprintf("tenure.result.small.%d", i-6)
		}
		if m.Subject != want {
			t.Fatalf("message %d is %s, want %s (order lost)", i+1, m.Subject, want)
		}
		id := m.Header.Get("Nats-Batch-Id")
		switch {
		case i < 6 && (id == "" || id != batch):
			t.Fatalf("message %d: batch id %q, want the group's one batch %q", i+1, id, batch)
		case i >= 6 && id != "":
			t.Fatalf("message %d of a small group went in batch %q", i+1, id)
		}
	}
}

// A batch holding a message JetStream already has (an outbox row republished after a crash)
// is refused as a whole; the publisher then sends it message by message, where the
// duplicate is a success and stored once.
func TestGroupPublisherRepublishesRefusedBatchOneByOne(t *testing.T) {
	ns := natstest.Start(t)
	p := natsx.NewGroupPublisher(ns.JS, nil)
	p.AtomicMin = 2
	ctx := context.Background()
	first := groupMsgs("r", 5)
	noErrors(t, p.PublishAll(ctx, first[:2]))

	// r-0, r-1 again (reported at their first copies), then r-2..r-4.
	wantSeqs(t, noErrors(t, p.PublishAll(ctx, groupMsgs("r", 5))), 1, 2, 3, 4, 5)

	got := storedFrom(t, ns.JS, 1)
	if len(got) != 5 {
		t.Fatalf("stream holds %d messages, want 5 (each once)", len(got))
	}
	for i, m := range got {
		if want := fmt.Sprintf("r-%d", i); m.Header.Get(jetstream.MsgIDHeader) != want {
			t.Fatalf("message %d is %s, want %s", i+1, m.Header.Get(jetstream.MsgIDHeader), want)
		}
		if i >= 2 && m.Header.Get("Nats-Batch-Id") != "" {
			t.Fatalf("message %d kept the refused batch's header %q", i+1, m.Header.Get("Nats-Batch-Id"))
		}
	}
}

// A stream created before atomic batches were allowed (or by an older `tenure setup`) still
// gets every message; the publisher stops trying batches.
func TestGroupPublisherFallsBackWhenStreamRefusesBatches(t *testing.T) {
	ns := natstest.Start(t)
	ctx := context.Background()
	cfg := natsx.StreamConfigs(natsx.DefaultStreamOptions())[0]
	cfg.AllowAtomicPublish = false
	if _, err := ns.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	p := natsx.NewGroupPublisher(ns.JS, nil)
	p.AtomicMin = 2
	noErrors(t, p.PublishAll(ctx, groupMsgs("a", 4)))
	noErrors(t, p.PublishAll(ctx, groupMsgs("b", 4)))
	got := storedFrom(t, ns.JS, 1)
	if len(got) != 8 {
		t.Fatalf("stream holds %d messages, want 8", len(got))
	}
	for i, m := range got {
		if id := m.Header.Get("Nats-Batch-Id"); id != "" {
			t.Fatalf("message %d carries batch id %q from a refused batch", i+1, id)
		}
	}

	// `tenure setup` (EnsureStreams) on the existing stream turns atomic batches on.
	if err := natsx.EnsureStreams(ctx, ns.JS, natsx.DefaultStreamOptions()); err != nil {
		t.Fatal(err)
	}
	p = natsx.NewGroupPublisher(ns.JS, nil)
	p.AtomicMin = 2
	noErrors(t, p.PublishAll(ctx, groupMsgs("c", 2)))
	got = storedFrom(t, ns.JS, 9)
	if len(got) != 2 {
		t.Fatalf("after setup: %d messages, want 2", len(got))
	}
	if got[0].Header.Get("Nats-Batch-Id") == "" {
		t.Fatal("after setup the group was not sent as one atomic batch")
	}
}

// Every message of an atomic batch needs its own Nats-Msg-Id: it is what makes a retry safe.
func TestGroupPublisherNeedsMessageIDs(t *testing.T) {
	ns := natstest.Start(t)
	p := natsx.NewGroupPublisher(ns.JS, nil)
	p.AtomicMin = 2
	msgs := groupMsgs("n", 3)
	msgs[1].Header.Del(jetstream.MsgIDHeader)
	for i, r := range p.PublishAll(context.Background(), msgs) {
		if r.Err == nil {
			t.Fatalf("message %d: no error for a group with a message without Nats-Msg-Id", i)
		}
	}
	if got := storedFrom(t, ns.JS, 1); len(got) != 0 {
		t.Fatalf("stream holds %d messages, want none", len(got))
	}
}

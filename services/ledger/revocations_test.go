package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tenure-dev/tenure/pkg/authn"
	"github.com/tenure-dev/tenure/pkg/events"
	"github.com/tenure-dev/tenure/pkg/natsx/natstest"
	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
)

// watchEnv is a recording ledger serving LedgerService over real gRPC with bearer tokens.
type watchEnv struct {
	ns     *natstest.Server
	s      *Service
	client func(token string) ledgerv1.LedgerServiceClient
}

func startWatchEnv(t *testing.T) *watchEnv {
	t.Helper()
	ns := natstest.Start(t)
	s := newService(t, Config{WatchPoll: time.Hour}, newPool(t), ns.JS) // appends in this process wake watchers
	run(t, s)
	a, err := authn.New([]authn.TokenEntry{
		{Name: "security", Roles: []authn.Role{authn.RoleSecurity}, Token: "sec-token"},
		{Name: "approver", Roles: []authn.Role{authn.RoleApprover}, Token: "approve-token"},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.StreamInterceptor(a.StreamInterceptor(s.AuthRules())))
	s.RegisterGRPC(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return &watchEnv{ns: ns, s: s, client: func(token string) ledgerv1.LedgerServiceClient {
		cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(authn.BearerCredentials{Token: token, Insecure: true}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return ledgerv1.NewLedgerServiceClient(cc)
	}}
}

// publishRevocation publishes one revocation (and, before it, an unrelated HR event, so the
// revocations are not contiguous in the ledger).
func (w *watchEnv) publishRevocation(t *testing.T, id string, kind eventsv1.RevocationKind, worker, system string, at time.Time) {
	t.Helper()
	ctx := context.Background()
	hr, err := events.Msg(ctx, events.Event{ID: "hr-" + id, Subject: events.Subject("tenure.hr", "mover", worker), Source: "tenure/test", WorkerID: worker, Time: at, Payload: joiner(worker)})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := events.Msg(ctx, events.Event{ID: id, Subject: events.Subject("tenure.revocation", KindToken(kind), worker), Source: "tenure/provisioner", WorkerID: worker, Time: at,
		Payload: &eventsv1.Revocation{RevocationId: id, Kind: kind, WorkerId: worker, System: system, Connector: "demo-" + system, OccurredAt: timestamppb.New(at), Verified: true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*nats.Msg{hr, rev} {
		if _, err := w.ns.JS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
}

// watcher collects a watch's revocations.
type watcher struct {
	mu       sync.Mutex
	got      []*ledgerv1.RevocationEvent
	caughtUp bool
}

// watch runs one WatchRevocations call until it ends, recording what arrives; stop ends it
// after n revocations (0: never).
func (w *watcher) watch(ctx context.Context, c ledgerv1.LedgerServiceClient, req *ledgerv1.WatchRevocationsRequest, stop int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.WatchRevocations(ctx, req)
	if err != nil {
		return err
	}
	n := 0
	for {
		res, err := st.Recv()
		if err != nil {
			return err
		}
		w.mu.Lock()
		if res.GetCaughtUp() {
			w.caughtUp = true
		}
		if r := res.GetRevocation(); r != nil {
			w.got = append(w.got, r)
			n++
		}
		w.mu.Unlock()
		if stop > 0 && n == stop {
			return nil // drop the stream mid-flow
		}
	}
}

func (w *watcher) events() []*ledgerv1.RevocationEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*ledgerv1.RevocationEvent(nil), w.got...)
}

func (w *watcher) lastSeq() int64 {
	evs := w.events()
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

// TestWatchRevocationsResumesWithoutGapsOrDuplicates drops the watch several times while
// revocations keep arriving, resumes each time after the last seq received, and checks that
// every revocation arrived exactly once, in ledger order.
func TestWatchRevocationsResumesWithoutGapsOrDuplicates(t *testing.T) {
	w := startWatchEnv(t)
	c := w.client("sec-token")
	const total = 120
	kinds := []eventsv1.RevocationKind{eventsv1.RevocationKind_REVOCATION_KIND_WORKER_TERMINATED, eventsv1.RevocationKind_REVOCATION_KIND_SESSION_REVOKED,
		eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED, eventsv1.RevocationKind_REVOCATION_KIND_CASE_COMPLETED}
	var pub sync.WaitGroup
	pub.Go(func() {
		for i := range total {
			w.publishRevocation(t, fmt.Sprintf("r-%03d", i), kinds[i%len(kinds)], fmt.Sprintf("w%d", i%3), "ehr", t0.Add(time.Duration(i)*time.Second))
			if i%10 == 0 {
				time.Sleep(5 * time.Millisecond) // let the watch catch up and go live now and then
			}
		}
	})
	var got watcher
	ctx := context.Background()
	for drops := 0; len(got.events()) < total; drops++ {
		if drops > 200 {
			t.Fatalf("only %d of %d revocations after %d reconnects", len(got.events()), total, drops)
		}
		// Each connection takes up to 17 revocations, then drops the stream.
		err := got.watch(ctx, c, &ledgerv1.WatchRevocationsRequest{AfterSeq: got.lastSeq()}, min(17, total-len(got.events())))
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
	}
	pub.Wait()
	seen := map[string]bool{}
	var prev int64
	for i, ev := range got.events() {
		id := ev.GetRevocation().GetRevocationId()
		if seen[id] {
			t.Errorf("duplicate %s at %d", id, i)
		}
		seen[id] = true
		if ev.Seq <= prev {
			t.Errorf("seq %d after %d", ev.Seq, prev)
		}
		prev = ev.Seq
		if ev.EventId != id || ev.Subject != events.Subject("tenure.revocation", KindToken(ev.Revocation.Kind), ev.Revocation.WorkerId) || ev.StreamSeq == 0 {
			t.Errorf("event %d: %v", i, ev)
		}
	}
	for i := range total {
		if !seen[fmt.Sprintf("r-%03d", i)] {
			t.Errorf("r-%03d never arrived", i)
		}
	}
	if len(got.events()) != total {
		t.Errorf("got %d revocations, want %d", len(got.events()), total)
	}
}

func TestWatchRevocationsFilters(t *testing.T) {
	w := startWatchEnv(t)
	c := w.client("sec-token")
	ad := eventsv1.RevocationKind_REVOCATION_KIND_ACCOUNT_DISABLED
	sr := eventsv1.RevocationKind_REVOCATION_KIND_SESSION_REVOKED
	w.publishRevocation(t, "a", ad, "w1", "ehr", t0)
	w.publishRevocation(t, "b", sr, "w1", "ehr", t0.Add(time.Minute))
	w.publishRevocation(t, "c", ad, "w1", "wiki", t0.Add(2*time.Minute))
	w.publishRevocation(t, "d", ad, "w.2", "ehr", t0.Add(3*time.Minute))
	waitAcked(t, w.ns.JS, 20*time.Second)

	ids := func(req *ledgerv1.WatchRevocationsRequest) string {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := c.WatchRevocations(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		out := ""
		for {
			res, err := st.Recv()
			if err != nil {
				t.Fatalf("%v: %v", req, err)
			}
			if res.CaughtUp {
				return out
			}
			out += res.Revocation.Revocation.RevocationId
		}
	}
	for _, tc := range []struct {
		req  *ledgerv1.WatchRevocationsRequest
		want string
	}{
		{&ledgerv1.WatchRevocationsRequest{}, "abcd"},
		{&ledgerv1.WatchRevocationsRequest{WorkerId: "w1"}, "abc"},
		{&ledgerv1.WatchRevocationsRequest{WorkerId: "w.2"}, "d"},
		{&ledgerv1.WatchRevocationsRequest{System: "ehr"}, "abd"},
		{&ledgerv1.WatchRevocationsRequest{Kinds: []eventsv1.RevocationKind{sr}}, "b"},
		{&ledgerv1.WatchRevocationsRequest{WorkerId: "w1", System: "ehr", Kinds: []eventsv1.RevocationKind{ad}}, "a"},
		{&ledgerv1.WatchRevocationsRequest{Since: timestamppb.New(t0.Add(90 * time.Second))}, "cd"},
		{&ledgerv1.WatchRevocationsRequest{LiveOnly: true}, ""},
	} {
		if got := ids(tc.req); got != tc.want {
			t.Errorf("%v: got %q, want %q", tc.req, got, tc.want)
		}
	}

	// live_only starts at the end and then follows.
	var live watcher
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		done <- live.watch(ctx, c, &ledgerv1.WatchRevocationsRequest{LiveOnly: true, WorkerId: "w1"}, 1)
	}()
	waitFor(t, "the live watch to catch up", 10*time.Second, func() bool { live.mu.Lock(); defer live.mu.Unlock(); return live.caughtUp })
	start := time.Now()
	w.publishRevocation(t, "e", ad, "w3", "ehr", t0)
	w.publishRevocation(t, "f", ad, "w1", "ehr", t0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("live watch saw nothing")
	}
	if evs := live.events(); len(evs) != 1 || evs[0].Revocation.RevocationId != "f" {
		t.Errorf("live: %v", evs)
	}
	// Appends in this process wake the watch (WatchPoll is an hour here).
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("live revocation took %s", d)
	}

	for _, tc := range []struct {
		token string
		req   *ledgerv1.WatchRevocationsRequest
		code  codes.Code
	}{
		{"sec-token", &ledgerv1.WatchRevocationsRequest{AfterSeq: -1}, codes.InvalidArgument},
		{"sec-token", &ledgerv1.WatchRevocationsRequest{LiveOnly: true, AfterSeq: 3}, codes.InvalidArgument},
		{"sec-token", &ledgerv1.WatchRevocationsRequest{Kinds: []eventsv1.RevocationKind{42}}, codes.InvalidArgument},
		{"sec-token", &ledgerv1.WatchRevocationsRequest{Since: &timestamppb.Timestamp{Nanos: -1}}, codes.InvalidArgument},
		{"approve-token", &ledgerv1.WatchRevocationsRequest{}, codes.PermissionDenied},
		{"wrong", &ledgerv1.WatchRevocationsRequest{}, codes.Unauthenticated},
	} {
		st, err := w.client(tc.token).WatchRevocations(context.Background(), tc.req)
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != tc.code || errors.Is(err, io.EOF) {
			t.Errorf("%s %v: %v, want %s", tc.token, tc.req, err, tc.code)
		}
	}
}

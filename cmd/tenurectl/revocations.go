package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	ledgerv1 "github.com/tenure-dev/tenure/proto/tenure/ledger/v1"
	"github.com/tenure-dev/tenure/services/ledger"
)

// The revocation stream, live, for security teams (docs/revocations.md).

func init() {
	commands["revocations watch"] = command{
		usage: "revocations watch [--worker ID] [--system S] [--kind K,...] [--since DATE|DURATION] [--from-seq N] [--count N] [-o table|json]",
		run:   revocationsWatch,
	}
}

func revocationsWatch(e *env) error {
	worker := e.fs.String("worker", "", "only this worker")
	system := e.fs.String("system", "", "only this system (e.g. ehr)")
	kinds := e.fs.String("kind", "", "only these kinds, comma-separated: "+strings.Join(kindTokens(), ", "))
	since := e.fs.String("since", "", "only revocations from this time: YYYY-MM-DD, RFC 3339, or a duration back from now (e.g. 24h)")
	fromSeq := e.fs.Int64("from-seq", 0, "start at this ledger sequence (resume: the last SEQ printed + 1)")
	count := e.fs.Int("count", 0, "stop after this many revocations (0: watch until interrupted)")
	live := e.fs.Bool("live", false, "only revocations recorded from now on")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) > 0 {
		return fmt.Errorf("usage: tenurectl %s", commands["revocations watch"].usage)
	}
	req := &ledgerv1.WatchRevocationsRequest{WorkerId: *worker, System: *system, LiveOnly: *live}
	for _, k := range strings.Split(*kinds, ",") {
		if k = strings.TrimSpace(k); k == "" {
			continue
		}
		kind, ok := ledger.ParseKind(k)
		if !ok {
			return fmt.Errorf("--kind: %q is not a revocation kind (%s)", k, strings.Join(kindTokens(), ", "))
		}
		req.Kinds = append(req.Kinds, kind)
	}
	if *since != "" {
		if d, err := time.ParseDuration(*since); err == nil && d > 0 {
			req.Since = timestamppb.New(time.Now().Add(-d))
		} else if req.Since, err = parseWhen(*since); err != nil {
			return fmt.Errorf("--since: %w", err)
		}
	}
	if *fromSeq < 0 || *count < 0 {
		return errors.New("--from-seq and --count must not be negative")
	}
	if *fromSeq > 0 {
		req.AfterSeq = *fromSeq - 1
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	client := ledgerv1.NewLedgerServiceClient(x.conn)
	out := &revocationPrinter{w: e.stdout, json: x.output == "json"}
	seen := 0
	delay := 500 * time.Millisecond
	for {
		err := watchOnce(e.ctx, client, req, func(ev *ledgerv1.RevocationEvent) bool {
			out.print(ev)
			req.AfterSeq, req.LiveOnly = ev.Seq, false // resume right after it
			seen++
			delay = 500 * time.Millisecond
			return *count == 0 || seen < *count
		}, func(cursor int64) {
			if cursor > req.AfterSeq {
				req.AfterSeq, req.LiveOnly = cursor, false
			}
			out.caughtUp()
		})
		switch {
		case err == nil, e.ctx.Err() != nil:
			return nil
		case status.Code(err) == codes.Unavailable:
			// The server restarted or the connection dropped: resume from the last one printed.
			fmt.Fprintf(os.Stderr, "tenurectl: watch interrupted (%s); resuming after seq %d\n", status.Convert(err).Message(), req.AfterSeq)
			select {
			case <-e.ctx.Done():
				return nil
			case <-time.After(delay):
			}
			delay = min(2*delay, 15*time.Second)
		default:
			return err
		}
	}
}

// watchOnce runs one WatchRevocations call; each revocation goes to next, which says whether
// to go on. It returns nil when next says stop.
func watchOnce(ctx context.Context, c ledgerv1.LedgerServiceClient, req *ledgerv1.WatchRevocationsRequest, next func(*ledgerv1.RevocationEvent) bool, caughtUp func(cursor int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.WatchRevocations(ctx, req)
	if err != nil {
		return err
	}
	for {
		res, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return status.Error(codes.Unavailable, "the server ended the watch")
		}
		if err != nil {
			return err
		}
		if res.GetCaughtUp() {
			caughtUp(res.GetCursor())
		}
		if ev := res.GetRevocation(); ev != nil && !next(ev) {
			return nil
		}
	}
}

// revocationPrinter prints one line per revocation as it arrives: a fixed-width table (the
// header once) or JSON Lines.
type revocationPrinter struct {
	w      io.Writer
	json   bool
	header bool
}

const revocationRow = "%-8s  %-23s  %-19s  %-12s  %-10s  %-16s  %s\n"

func (p *revocationPrinter) print(ev *ledgerv1.RevocationEvent) {
	if p.json {
		b, err := protojson.Marshal(ev)
		if err == nil {
			fmt.Fprintln(p.w, string(b))
		}
		return
	}
	if !p.header {
		p.header = true
		fmt.Fprintf(p.w, revocationRow, "SEQ", "OCCURRED", "KIND", "WORKER", "SYSTEM", "ACCOUNT", "VERIFIED")
	}
	r := ev.GetRevocation()
	at := r.GetOccurredAt()
	if at == nil {
		at = ev.GetRecordedAt()
	}
	verified := "-"
	if r.GetVerified() {
		verified = "yes"
	}
	fmt.Fprintf(p.w, revocationRow, fmt.Sprint(ev.GetSeq()), when(at), ledger.KindToken(r.GetKind()), dash(r.GetWorkerId()), dash(r.GetSystem()), dash(r.GetUsername()), verified)
}

func (p *revocationPrinter) caughtUp() {
	if !p.json {
		fmt.Fprintln(os.Stderr, "-- caught up; watching for new revocations (Ctrl-C to stop) --")
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func kindTokens() []string {
	var out []string
	for i := int32(1); ; i++ {
		if _, ok := eventsv1.RevocationKind_name[i]; !ok {
			return out
		}
		out = append(out, ledger.KindToken(eventsv1.RevocationKind(i)))
	}
}

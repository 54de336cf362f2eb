package main

import (
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func init() {
	commands["queue"] = command{
		usage: "queue [--watch] [--interval 2s]            provisioning queues: depth, in flight, oldest, failed, dead letters",
		run:   queueList,
	}
	commands["queue list"] = command{
		usage: "queue list [--watch] [--interval 2s]       the same as queue",
		run:   queueList,
	}
	commands["queue dead"] = command{
		usage: "queue dead [--connector C] [--all]         dead letters: provisioning work that failed for good",
		run:   queueDead,
	}
	commands["queue retry"] = command{
		usage: "queue retry ID                             re-drive a dead letter (ID from queue dead)",
		run:   queueRetry,
	}
	commands["queue retry-account"] = command{
		usage: "queue retry-account LINK_ID                re-drive one account, e.g. a failed one of a leaver case",
		run:   queueRetryAccount,
	}
}

func queueDead(e *env) error {
	conn := e.fs.String("connector", "", "only this connector")
	all := e.fs.Bool("all", false, "include dead letters already re-driven or resolved")
	limit := e.fs.Int("limit", 0, "at most this many (default 500)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl queue dead [flags]")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListDeadLetters(e.ctx, &provisionerv1.ListDeadLettersRequest{
		Connector: *conn, IncludeRetried: *all, Limit: int32(*limit)})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "ID\tCONNECTOR\tSUBJECT\tWORKER\tLINK\tTRIES\tDEAD AT\tSTATUS\tERROR")
		for _, d := range res.DeadLetters {
			st := d.Status
			if d.RetriedBy != "" {
				st += " by " + d.RetriedBy
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.Id, d.Connector, d.Subject, d.WorkerId, d.LinkId, d.Delivered, when(d.DeadAt), st, d.Error)
		}
	})
}

func queueRetry(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl queue retry ID")
	}
	id, err := strconv.ParseUint(e.pos()[0], 10, 64)
	if err != nil {
		return fmt.Errorf("queue retry: ID %q is not a dead-letter id (a number from `tenurectl queue dead`)", e.pos()[0])
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).RetryDeadLetter(e.ctx, &provisionerv1.RetryDeadLetterRequest{Id: id})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		if res.CommandId != "" {
			fmt.Fprintf(tw, "dead letter %d re-driven: command %s for link %s\n", id, res.CommandId, res.DeadLetter.LinkId)
		} else {
			fmt.Fprintf(tw, "dead letter %d re-applied (%s)\n", id, res.DeadLetter.Subject)
		}
	})
}

func queueRetryAccount(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl queue retry-account LINK_ID")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).RetryAccount(e.ctx, &provisionerv1.RetryAccountRequest{LinkId: e.pos()[0]})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "account %s re-driven: command %s at generation %d\n", e.pos()[0], res.CommandId, res.Generation)
	})
}

// minWatchInterval keeps a live view from hammering the server.
const minWatchInterval = 200 * time.Millisecond

// queueList prints each connector's work queue once, or, with --watch, redraws it every
// interval until the command's context ends (Ctrl-C), which is a clean exit.
func queueList(e *env) error {
	watch := e.fs.Bool("watch", false, "redraw the table every --interval until Ctrl-C")
	interval := e.fs.Duration("interval", 2*time.Second, "refresh interval for --watch")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl queue [--watch] [--interval 2s]")
	}
	if *watch && *interval < minWatchInterval {
		return fmt.Errorf("queue: --interval %s is below %s", *interval, minWatchInterval)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	client := provisionerv1.NewProvisioningServiceClient(x.conn)
	show := func() error {
		res, err := client.ListQueues(e.ctx, &provisionerv1.ListQueuesRequest{})
		if err != nil {
			return err
		}
		return x.print(res, func(tw *tabwriter.Writer) {
			if *watch {
				// Home the cursor and clear the screen, then redraw.
				fmt.Fprintf(tw, "\x1b[H\x1b[2Jtenure queues at %s (every %s; Ctrl-C to stop)\n\n", time.Now().Format("15:04:05"), *interval)
			}
			fmt.Fprintln(tw, "CONNECTOR\tTYPE\tPENDING\tIN FLIGHT\tOLDEST\tREDELIVERED\tFAILED\tDEAD LETTERS")
			var unread []string
			for _, q := range res.Queues {
				if q.Error != "" {
					fmt.Fprintf(tw, "%s\t%s\t?\t?\t?\t?\t%d\t%d\n", q.Connector, q.ConnectorType, q.Failed, q.DeadLetters)
					unread = append(unread, q.Connector+": "+q.Error)
					continue
				}
				oldest := "-"
				if d := q.GetOldestAge().AsDuration(); d > 0 {
					oldest = d.Round(100 * time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%d\t%d\t%d\n", q.Connector, q.ConnectorType, q.Pending, q.InFlight, oldest, q.Redelivered, q.Failed, q.DeadLetters)
			}
			for _, u := range unread {
				fmt.Fprintf(tw, "\nunreadable queue %s\n", u)
			}
		})
	}
	if !*watch {
		return show()
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		if err := show(); err != nil {
			if e.ctx.Err() != nil {
				return nil
			}
			if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
				return err
			}
			// A live view outlasts a blip (tenure restarting, a dropped connection): say so
			// and try again on the next tick.
			fmt.Fprintf(e.stdout, "\x1b[H\x1b[2Jtenure queues at %s: %v (retrying every %s; Ctrl-C to stop)\n", time.Now().Format("15:04:05"), err, *interval)
		}
		select {
		case <-e.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
)

func init() {
	commands["hr reconcile"] = command{
		usage: "hr reconcile ROSTER.csv|.json [--dry-run] [--as-of T] [--source NAME]   leavers, joiners, movers from an HR roster",
		run:   hrReconcile,
	}
}

func hrReconcile(e *env) error {
	dry := e.fs.Bool("dry-run", false, "print the differences and change nothing")
	format := e.fs.String("format", "", "csv or json (default: from the file extension)")
	asOf := e.fs.String("as-of", "", "RFC 3339 time the roster was taken (default: the JSON roster's as_of, else now)")
	source := e.fs.String("source", "", "HR source the roster comes from: only its workers can become leavers (default: the whole registry, events recorded under source snapshot)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl hr reconcile FILE [--dry-run] [--as-of T] [--source NAME]")
	}
	file := e.pos()[0]
	roster, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	req := &intakev1.ReconcileRequest{Roster: roster, DryRun: *dry, Source: *source}
	f := strings.ToLower(*format)
	if f == "" {
		f = strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	}
	switch f {
	case "csv":
		req.Format = intakev1.RosterFormat_ROSTER_FORMAT_CSV
	case "json":
		req.Format = intakev1.RosterFormat_ROSTER_FORMAT_JSON
	default:
		return fmt.Errorf("cannot tell the roster format of %s: pass --format csv or --format json", file)
	}
	if *asOf != "" {
		t, err := time.Parse(time.RFC3339, *asOf)
		if err != nil {
			return fmt.Errorf("--as-of %q is not an RFC 3339 time", *asOf)
		}
		req.AsOf = timestamppb.New(t)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := intakev1.NewWorkforceServiceClient(x.conn).Reconcile(e.ctx, req)
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		verb := "applied"
		if res.DryRun {
			verb = "dry run, nothing changed"
		}
		fmt.Fprintf(tw, "roster %d workers, registry %d, %d changes (%s), %d skipped as newer than the roster\n\n",
			res.RosterWorkers, res.RegistryWorkers, len(res.Changes), verb, res.SkippedNewer)
		fmt.Fprintln(tw, "WORKER\tCHANGE\tHR TYPE\tFIELDS\tSTATUS\tEVENT")
		for _, c := range res.Changes {
			from := "-"
			if c.Before != nil {
				from = state(c.Before.Status.String())
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s → %s\t%s\n", c.WorkerId, c.Kind, c.HrEventType, strings.Join(c.ChangedFields, ","),
				from, state(c.GetAfter().GetStatus().String()), c.EventId)
		}
	})
}

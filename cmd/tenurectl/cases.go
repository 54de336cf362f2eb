package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func init() {
	commands["cases"] = command{
		usage: "cases [--status open|overdue|completed|all]     leaver cases, overdue first, with how late and how far",
		run:   cases,
	}
}

func cases(e *env) error {
	st := e.fs.String("status", "open", "open, overdue, completed or all")
	limit := e.fs.Int("limit", 0, "at most this many (default 500)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl cases [--status open|overdue|completed|all]")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListCases(e.ctx, &provisionerv1.ListCasesRequest{Status: *st, Limit: int32(*limit)})
	if err != nil {
		return err
	}
	now := time.Now()
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "CASE\tWORKER\tSTATUS\tOPENED\tDEADLINE\t\tACCOUNTS\tFAILING")
		for _, c := range res.Cases {
			status := state(c.Status.String())
			if c.RescindedAt != nil {
				status = "rescinded"
			}
			note := deadlineNote(&provisionerv1.LeaverCase{Status: c.Status, Deadline: c.Deadline, CompletedAt: c.CompletedAt}, now)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d verified\t%d\n", c.CaseId, c.WorkerId, status, when(c.OpenedAt), when(c.Deadline), note,
				c.Verified, c.Accounts, c.Failing)
		}
	})
}

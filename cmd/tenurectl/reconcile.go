package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	intakev1 "github.com/tenure-dev/tenure/proto/tenure/intake/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

func init() {
	commands["reconcile"] = command{
		usage: "reconcile CONNECTOR                        list the target's accounts now and report orphans, shared accounts, drift",
		run:   reconcile,
	}
	commands["findings"] = command{
		usage: "findings [--connector C] [--kind orphan|shared|drift|event_for_leaver|unknown_worker|hris_not_found|hris_credential] [--status open|resolved|all] [--worker W]   reconciliation and HR findings",
		run:   findings,
	}
	commands["findings resolve"] = command{
		usage: "findings resolve ID --reason TEXT           close an HR finding (the intake's) with what was done",
		run:   findingsResolve,
	}
	commands["accounts link"] = command{
		usage: "accounts link CONNECTOR USERNAME --worker W --reason TEXT   link an account found in a target (a finding) to a worker",
		run:   accountsLink,
	}
	commands["connectors"] = command{
		usage: "connectors                                 connectors: type, system, capabilities, policy, health (probed now)",
		run:   connectors,
	}
}

func reconcile(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 {
		return errors.New("usage: tenurectl reconcile CONNECTOR")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).Reconcile(e.ctx, &provisionerv1.ReconcileRequest{Connector: e.pos()[0]})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		r := res.Run
		fmt.Fprintf(tw, "reconciled %s: %d accounts, %d findings open (%d new), %d resolved, %d orphans disabled (run %s)\n\n",
			r.Connector, r.Accounts, r.Findings, r.NewFindings, r.Resolved, r.Disabled, r.RunId)
		findingsTable(tw, res.Findings)
	})
}

func findings(e *env) error {
	conn := e.fs.String("connector", "", "only this connector")
	kind := e.fs.String("kind", "", "orphan, shared, drift (targets) or event_for_leaver, unknown_worker, hris_not_found, hris_credential (HR)")
	st := e.fs.String("status", "open", "open, resolved or all")
	worker := e.fs.String("worker", "", "HR findings of this worker only")
	limit := e.fs.Int("limit", 0, "at most this many (default 500)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl findings [flags]")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	hrKind := map[string]bool{"event_for_leaver": true, "unknown_worker": true, "hris_not_found": true, "hris_credential": true}[*kind]
	var out struct {
		Findings   []*eventsv1.ReconcileFinding
		HRFindings []*intakev1.HRFinding
	}
	if !hrKind && *worker == "" {
		res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListFindings(e.ctx, &provisionerv1.ListFindingsRequest{
			Connector: *conn, Kind: *kind, Status: *st, Limit: int32(*limit)})
		if err != nil {
			return err
		}
		out.Findings = res.Findings
	}
	if *conn == "" && (hrKind || *kind == "") {
		res, err := intakev1.NewWorkforceServiceClient(x.conn).ListFindings(e.ctx, &intakev1.ListFindingsRequest{
			Kind: *kind, Status: *st, WorkerId: *worker, Limit: int32(*limit)})
		// A deployment whose address serves no intake (services as separate processes)
		// still lists the targets' findings.
		if err != nil && status.Code(err) != codes.Unimplemented {
			return err
		}
		out.HRFindings = res.GetFindings()
	}
	if x.output == "json" {
		// One object with both lists, each finding as protojson writes it.
		raw := func(ms []proto.Message) []json.RawMessage {
			out := []json.RawMessage{}
			for _, m := range ms {
				b, err := protojson.Marshal(m)
				if err == nil {
					out = append(out, b)
				}
			}
			return out
		}
		var rf, hf []proto.Message
		for _, f := range out.Findings {
			rf = append(rf, f)
		}
		for _, f := range out.HRFindings {
			hf = append(hf, f)
		}
		b, err := json.MarshalIndent(map[string][]json.RawMessage{"findings": raw(rf), "hrFindings": raw(hf)}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(x.stdout, string(b))
		return err
	}
	return x.print(nil, func(tw *tabwriter.Writer) {
		if len(out.Findings) > 0 || len(out.HRFindings) == 0 {
			findingsTable(tw, out.Findings)
		}
		if len(out.HRFindings) > 0 {
			if len(out.Findings) > 0 {
				fmt.Fprintln(tw)
			}
			fmt.Fprintln(tw, "ID\tKIND\tSOURCE\tWORKER\tSTATUS\tCOUNT\tFIRST SEEN\tLAST SEEN\tDETAIL")
			for _, f := range out.HRFindings {
				w := f.WorkerId
				if w == "" {
					w = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", f.FindingId, f.Kind, f.Source, w, f.Status, f.Count,
					when(f.FirstSeen), when(f.LastSeen), f.Detail)
			}
		}
	})
}

func findingsResolve(e *env) error {
	reason := e.fs.String("reason", "", "what was done, or why nothing needs doing (required)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 1 || *reason == "" {
		return errors.New("usage: tenurectl findings resolve ID --reason TEXT")
	}
	id, err := strconv.ParseInt(e.pos()[0], 10, 64)
	if err != nil {
		return fmt.Errorf("finding id %q is not a number", e.pos()[0])
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := intakev1.NewWorkforceServiceClient(x.conn).ResolveFinding(e.ctx, &intakev1.ResolveFindingRequest{FindingId: id, Reason: *reason})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "finding %d resolved by %s: %s\n", res.Finding.FindingId, res.Finding.ResolvedBy, res.Finding.Resolution)
	})
}

func findingsTable(tw *tabwriter.Writer, fs []*eventsv1.ReconcileFinding) {
	fmt.Fprintln(tw, "CONNECTOR\tKIND\tACCOUNT\tSTATE\tWORKERS\tSTATUS\tFIRST SEEN\tLAST SEEN\tDETAIL")
	for _, f := range fs {
		st := f.Status
		if f.DisableIssued {
			st += " (disabled by policy)"
		}
		workers := strings.Join(f.WorkerIds, ",")
		if workers == "" {
			workers = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Connector, f.Kind, f.Username, state(f.ObservedState.String()), workers, st,
			when(f.FirstSeen), when(f.LastSeen), f.Detail)
	}
}

func connectors(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 0 {
		return errors.New("usage: tenurectl connectors")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).ListConnectors(e.ctx, &provisionerv1.ListConnectorsRequest{})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "NAME\tTYPE\tSYSTEM\tHEALTH\tLATENCY\tLAST ERROR\tDELETE AFTER\tRECONCILE\tLAST RECONCILED\tCAPABILITIES")
		for _, c := range res.Connectors {
			h := c.GetHealth()
			health := "down"
			if h.GetHealthy() {
				health = "ok"
			}
			lastErr := "-"
			if h.GetLastError() != "" {
				lastErr = when(h.GetLastErrorAt()) + " " + h.GetLastError()
			}
			p := c.GetPolicy()
			del, rec := "never", "off"
			if d := p.GetDeleteAfter().AsDuration(); d > 0 {
				del = d.String()
			}
			if d := p.GetReconcileInterval().AsDuration(); d > 0 {
				rec = "every " + d.String()
				if p.GetDisableOrphans() {
					rec += ", disables orphans"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.Type, c.System, health, h.GetLatency().AsDuration(), lastErr, del, rec,
				when(c.LastReconciledAt), strings.Join(c.Capabilities, ","))
		}
	})
}

// accountsLink links an account reconciliation found to its worker, so the worker's leaver
// case covers it.
func accountsLink(e *env) error {
	worker := e.fs.String("worker", "", "the worker the account belongs to (required)")
	reason := e.fs.String("reason", "", "why: a ticket, what was checked (required; kept in the ledger)")
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 2 || *worker == "" || *reason == "" {
		return errors.New("usage: tenurectl accounts link CONNECTOR USERNAME --worker W --reason TEXT")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := provisionerv1.NewProvisioningServiceClient(x.conn).LinkAccount(e.ctx, &provisionerv1.LinkAccountRequest{
		Connector: e.pos()[0], Username: e.pos()[1], WorkerId: *worker, Reason: *reason})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		a := res.Account
		fmt.Fprintf(tw, "linked %s/%s to %s (link %s)\n", a.Connector, a.Username, a.WorkerId, a.LinkId)
		if res.CaseId != "" {
			fmt.Fprintf(tw, "the worker's open leaver case %s now covers it: it is being disabled\n", res.CaseId)
		}
	})
}

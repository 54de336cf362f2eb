package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
)

func init() {
	commands["request list"] = command{usage: "request list [--worker ID] [--status pending] [--system S] [--mine]  access requests", run: requestList}
	commands["request get"] = command{usage: "request get REQUEST_ID                     a request with its approval stages", run: requestGet}
	commands["request access"] = command{usage: "request access --worker ID --package P --justification TEXT [--until 8h|RFC3339] [--sod-exception]", run: requestAccess}
	commands["approve"] = command{usage: "approve REQUEST_ID [--comment TEXT]        approve the request's current stage", run: func(e *env) error { return decideRequest(e, true) }}
	commands["deny"] = command{usage: "deny REQUEST_ID [--comment TEXT]           deny a request", run: func(e *env) error { return decideRequest(e, false) }}
	commands["explain"] = command{usage: "explain WORKER SYSTEM                      why the worker has access to the system, or \"no access\"", run: explainAccess}
	commands["breakglass use"] = command{usage: "breakglass use --worker ID --package P --reason CODE --justification TEXT [--for 1h]", run: breakGlassUse}
	commands["breakglass list"] = command{usage: "breakglass list [--worker ID] [--open]      break-glass uses and their reviews", run: breakGlassList}
	commands["breakglass close"] = command{usage: "breakglass close REVIEW_ID --comment TEXT   close a break-glass post-use review", run: breakGlassClose}
	commands["baa record"] = command{usage: "baa record --vendor ORG --reference REF [--expires YYYY-MM-DD]  record a vendor's BAA", run: baaRecord}
}

func govRequestTable(reqs []*approvalv1.AccessRequest) func(tw *tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "REQUEST\tWORKER\tPACKAGE\tKIND\tSTATUS\tWAITING FOR\tCREATED\tREASON")
		for _, r := range reqs {
			waiting := ""
			for _, st := range r.Stages {
				if st.Status == "pending" {
					waiting = st.Stage + ":" + strings.Join(st.Approvers, "|")
					break
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.RequestId, r.WorkerId, r.Package, r.Kind, r.Status, waiting, when(r.CreatedAt), r.Reason)
		}
	}
}

func govRequestDetail(r *approvalv1.AccessRequest) func(tw *tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		for _, kv := range [][2]string{{"request", r.RequestId}, {"worker", r.WorkerId}, {"package", r.Package}, {"system", r.System}, {"kind", r.Kind},
			{"status", r.Status}, {"requested by", r.RequestedBy}, {"justification", r.Justification}, {"ends", when(r.EndTime)}, {"sod rule", r.SodRule},
			{"grant", r.GrantId}, {"reason", r.Reason}} {
			if kv[1] != "" && kv[1] != "-" {
				fmt.Fprintf(tw, "%s\t%s\n", kv[0], kv[1])
			}
		}
		fmt.Fprintln(tw, "\nSTAGE\tSTATUS\tAPPROVERS\tDECIDED BY\tAT\tCOMMENT")
		for _, st := range r.Stages {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.Stage, st.Status, strings.Join(st.Approvers, ","), st.DecidedBy, when(st.DecidedAt), st.Comment)
		}
	}
}

func requestList(e *env) error {
	worker := e.fs.String("worker", "", "worker id")
	st := e.fs.String("status", "", "pending, approved, denied or cancelled")
	system := e.fs.String("system", "", "system")
	mine := e.fs.Bool("mine", false, "only requests whose current stage I may decide")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).ListRequests(e.ctx, &approvalv1.ListRequestsRequest{WorkerId: *worker, Status: *st, System: *system, Mine: *mine})
	if err != nil {
		return err
	}
	return x.print(res, govRequestTable(res.Requests))
}

func govArg(e *env, what string) (string, error) {
	if err := e.parse(); err != nil {
		return "", err
	}
	if len(e.pos()) != 1 {
		return "", fmt.Errorf("usage: tenurectl %s", what)
	}
	return e.pos()[0], nil
}

func requestGet(e *env) error {
	id, err := govArg(e, "request get REQUEST_ID")
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).GetRequest(e.ctx, &approvalv1.GetRequestRequest{RequestId: id})
	if err != nil {
		return err
	}
	return x.print(res, govRequestDetail(res.Request))
}

// parseUntil takes a duration from now or an RFC 3339 time.
func govUntil(s string) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return timestamppb.New(time.Now().Add(d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("--until: give a duration (8h) or an RFC 3339 time, not %q", s)
	}
	return timestamppb.New(t), nil
}

func requestAccess(e *env) error {
	worker := e.fs.String("worker", "", "worker id")
	pkg := e.fs.String("package", "", "access package")
	just := e.fs.String("justification", "", "why the worker needs it (required)")
	until := e.fs.String("until", "", "time-boxed (JIT): an RFC 3339 end time, or a duration from now (8h); --for counts from the grant instead")
	dur := e.fs.Duration("for", 0, "time-boxed (JIT): how long, counted from the grant (8h)")
	sod := e.fs.Bool("sod-exception", false, "ask security for an exception to a conflicting SoD rule")
	if err := e.parse(); err != nil {
		return err
	}
	end, err := govUntil(*until)
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).RequestAccess(e.ctx, &approvalv1.RequestAccessRequest{WorkerId: *worker, Package: *pkg, Justification: *just, EndTime: end, SodException: *sod,
		DurationSeconds: int64(dur.Seconds())})
	if err != nil {
		return err
	}
	return x.print(res, govRequestDetail(res.Request))
}

func decideRequest(e *env, approve bool) error {
	comment := e.fs.String("comment", "", "comment recorded with the decision")
	verb := "deny"
	if approve {
		verb = "approve"
	}
	id, err := govArg(e, verb+" REQUEST_ID [--comment TEXT]")
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	c := approvalv1.NewGovernanceServiceClient(x.conn)
	if approve {
		res, err := c.Approve(e.ctx, &approvalv1.ApproveRequest{RequestId: id, Comment: *comment})
		if err != nil {
			return err
		}
		return x.print(res, govRequestDetail(res.Request))
	}
	res, err := c.Deny(e.ctx, &approvalv1.DenyRequest{RequestId: id, Comment: *comment})
	if err != nil {
		return err
	}
	return x.print(res, govRequestDetail(res.Request))
}

func explainAccess(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	if len(e.pos()) != 2 {
		return errors.New("usage: tenurectl explain WORKER SYSTEM")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).ExplainAccess(e.ctx, &approvalv1.ExplainAccessRequest{WorkerId: e.pos()[0], System: e.pos()[1]})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, res.Summary)
		if len(res.TargetAccounts) > 0 {
			fmt.Fprintln(tw, "\nTARGET\tUSERNAME\tSTATE\tHOLDS\tREAD BACK\tOUTCOME\tERROR")
			for _, a := range res.TargetAccounts {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Connector, a.Username, state(a.State.String()), strings.Join(a.Entitlements, ","), when(a.ObservedAt), a.Outcome, a.Error)
			}
		}
		if len(res.Justifications) == 0 {
			return
		}
		fmt.Fprintln(tw, "\nPACKAGE\tKIND\tROLE\tREQUEST\tSTAGE\tAPPROVER\tAT\tCOMMENT")
		for _, j := range res.Justifications {
			g := j.Grant
			for _, a := range g.Approvals {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.Package, g.Kind, g.Role, g.RequestId, a.Stage, a.Approver, when(a.DecidedAt), a.Comment)
			}
		}
	})
}

func govUseTable(uses []*approvalv1.BreakGlassUse) func(tw *tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "REVIEW\tWORKER\tPACKAGE\tREASON\tBY\tGRANTED\tEXPIRES\tREVIEW\tDUE\tREVIEWED BY")
		for _, u := range uses {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", u.ReviewId, u.WorkerId, u.Package, u.ReasonCode, u.InvokedBy, when(u.GrantedAt), when(u.ExpiresAt),
				strings.ToUpper(u.ReviewStatus), when(u.ReviewDue), u.ReviewedBy)
		}
	}
}

func breakGlassUse(e *env) error {
	worker := e.fs.String("worker", "", "worker id")
	pkg := e.fs.String("package", "", "access package (one of the policy's break_glass.packages)")
	reason := e.fs.String("reason", "", "reason code (one of the policy's break_glass.reason_codes)")
	just := e.fs.String("justification", "", "what happened")
	dur := e.fs.Duration("for", 0, "how long (default: the policy's break_glass.max_duration; longer is refused)")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).BreakGlass(e.ctx, &approvalv1.BreakGlassRequest{WorkerId: *worker, Package: *pkg, ReasonCode: *reason,
		Justification: *just, DurationSeconds: int64(dur.Seconds())})
	if err != nil {
		return err
	}
	return x.print(res, govUseTable([]*approvalv1.BreakGlassUse{res.Use}))
}

func breakGlassList(e *env) error {
	worker := e.fs.String("worker", "", "worker id")
	open := e.fs.Bool("open", false, "only uses whose review is not closed")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).ListBreakGlass(e.ctx, &approvalv1.ListBreakGlassRequest{WorkerId: *worker, OpenOnly: *open})
	if err != nil {
		return err
	}
	return x.print(res, govUseTable(res.Uses))
}

func breakGlassClose(e *env) error {
	comment := e.fs.String("comment", "", "review finding (required)")
	id, err := govArg(e, "breakglass close REVIEW_ID --comment TEXT")
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).CloseBreakGlassReview(e.ctx, &approvalv1.CloseBreakGlassReviewRequest{ReviewId: id, Comment: *comment})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		if res.AccessEnded {
			fmt.Fprintln(tw, "the access was still active: closing the review ended it")
		}
		govUseTable([]*approvalv1.BreakGlassUse{res.Use})(tw)
	})
}

func baaRecord(e *env) error {
	vendor := e.fs.String("vendor", "", "vendor organisation (as in the HR record's vendor_org)")
	ref := e.fs.String("reference", "", "reference of the signed agreement")
	expires := e.fs.String("expires", "", "end of the agreement (YYYY-MM-DD)")
	if err := e.parse(); err != nil {
		return err
	}
	req := &approvalv1.RecordBAARequest{VendorOrg: *vendor, Reference: *ref}
	if *expires != "" {
		t, err := time.Parse(time.DateOnly, *expires)
		if err != nil {
			return fmt.Errorf("--expires: %w", err)
		}
		req.ExpiresAt = timestamppb.New(t)
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).RecordBAA(e.ctx, req)
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) { fmt.Fprintf(tw, "BAA recorded for %s (%s)\n", *vendor, *ref) })
}

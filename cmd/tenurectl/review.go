package main

import (
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
)

func init() {
	commands["review start"] = command{usage: "review start SYSTEM [--deadline 336h]          open an access review campaign", run: reviewStart}
	commands["review list"] = command{usage: "review list [--system S] [--open]               review campaigns", run: reviewList}
	commands["review decide"] = command{usage: "review decide CAMPAIGN GRANT keep|revoke [--comment TEXT]", run: reviewDecide}
	commands["review status"] = command{usage: "review status CAMPAIGN                         a campaign with its items and revoke confirmations", run: reviewStatus}
}

func govCampaignDetail(c *approvalv1.ReviewCampaign) func(tw *tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "campaign %s\tsystem %s\t%s\tdecided %d/%d\trevoked %d, confirmed %d\tdeadline %s\tclosed %s\n", c.CampaignId, c.System, c.Status,
			c.Decided, c.Items, c.Revoked, c.RevokesConfirmed, when(c.Deadline), when(c.ClosedAt))
		fmt.Fprintln(tw, "\nGRANT\tWORKER\tPACKAGE\tREVIEWER\tDECISION\tBY\tAT\tESCALATED\tREVOKE CONFIRMED\tCOMMENT")
		for _, it := range c.ReviewItems {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", it.GrantId, it.WorkerId, it.Package, it.Reviewer, it.Decision, it.DecidedBy, when(it.DecidedAt),
				when(it.EscalatedAt), when(it.RevokeConfirmedAt), it.Comment)
		}
	}
}

func reviewStart(e *env) error {
	deadline := e.fs.Duration("deadline", 0, "how long reviewers have (default: the system's review.deadline, else 14 days)")
	system, err := govArg(e, "review start SYSTEM")
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).StartReview(e.ctx, &approvalv1.StartReviewRequest{System: system, DeadlineSeconds: int64(*deadline / time.Second)})
	if err != nil {
		return err
	}
	return x.print(res, govCampaignDetail(res.Campaign))
}

func reviewList(e *env) error {
	system := e.fs.String("system", "", "system")
	open := e.fs.Bool("open", false, "only open campaigns")
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).ListReviews(e.ctx, &approvalv1.ListReviewsRequest{System: *system, OpenOnly: *open})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "CAMPAIGN\tSYSTEM\tSTATUS\tSTARTED BY\tSTARTED\tDEADLINE\tDECIDED\tREVOKED\tCONFIRMED\tCLOSED")
		for _, c := range res.Campaigns {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\n", c.CampaignId, c.System, c.Status, c.StartedBy, when(c.StartedAt), when(c.Deadline),
				c.Decided, c.Items, c.Revoked, c.RevokesConfirmed, when(c.ClosedAt))
		}
	})
}

func reviewDecide(e *env) error {
	comment := e.fs.String("comment", "", "comment recorded with the decision")
	if err := e.parse(); err != nil {
		return err
	}
	p := e.pos()
	if len(p) != 3 || (p[2] != "keep" && p[2] != "revoke") {
		return errors.New("usage: tenurectl review decide CAMPAIGN GRANT keep|revoke [--comment TEXT]")
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).DecideReview(e.ctx, &approvalv1.DecideReviewRequest{CampaignId: p[0], GrantId: p[1], Decision: p[2], Comment: *comment})
	if err != nil {
		return err
	}
	return x.print(res, govCampaignDetail(res.Campaign))
}

func reviewStatus(e *env) error {
	id, err := govArg(e, "review status CAMPAIGN")
	if err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).GetReview(e.ctx, &approvalv1.GetReviewRequest{CampaignId: id})
	if err != nil {
		return err
	}
	return x.print(res, govCampaignDetail(res.Campaign))
}

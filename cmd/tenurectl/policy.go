package main

import (
	"fmt"
	"text/tabwriter"

	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	"github.com/tenure-dev/tenure/services/approval"
)

func init() {
	commands["policy check"] = command{usage: "policy check FILE                          validate an approval policy (errors name file, line, field)", run: policyCheck}
	commands["policy show"] = command{usage: "policy show                                the policy version in force (hash, file, YAML)", run: policyShow}
}

// policyCheck validates a policy file locally, with the same code the approval service uses.
func policyCheck(e *env) error {
	file, err := govArg(e, "policy check FILE")
	if err != nil {
		return err
	}
	p, err := approval.LoadPolicy(file)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: ok: %d systems, %d packages, %d roles, %d SoD rules; sha256 %s\n", file, len(p.Systems), len(p.Packages), len(p.Roles), len(p.SoD), p.Hash)
	return nil
}

func policyShow(e *env) error {
	if err := e.parse(); err != nil {
		return err
	}
	x, err := e.connect()
	if err != nil {
		return err
	}
	res, err := approvalv1.NewGovernanceServiceClient(x.conn).GetPolicy(e.ctx, &approvalv1.GetPolicyRequest{})
	if err != nil {
		return err
	}
	return x.print(res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "# policy %s loaded %s from %s\n%s", res.PolicyHash, when(res.LoadedAt), res.Path, res.Yaml)
	})
}

package main

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/tenure-dev/tenure/pkg/connector"
	approvalv1 "github.com/tenure-dev/tenure/proto/tenure/approval/v1"
	"github.com/tenure-dev/tenure/services/approval"
)

func init() {
	commands["policy check"] = command{usage: "policy check FILE [--connectors FILE]       validate an approval policy, and that it fits the connectors (errors name file, line, field)", run: policyCheck}
	commands["policy show"] = command{usage: "policy show                                the policy version in force (hash, file, YAML)", run: policyShow}
}

// policyCheck validates a policy file locally, with the same code the approval service uses.
// With --connectors it also checks that every system's connector is configured and every
// package entitlement is one its connector defines, as tenure's start does.
func policyCheck(e *env) error {
	conns := e.fs.String("connectors", "", "the connectors file, or a comma list merged (tenure dev: generated/connectors.yaml,connectors.yaml): the policy must fit its connectors")
	file, err := govArg(e, "policy check FILE [--connectors FILE]")
	if err != nil {
		return err
	}
	p, err := approval.LoadPolicy(file)
	if err != nil {
		return err
	}
	if *conns != "" {
		cs, err := connector.LoadConfigFiles(strings.Split(*conns, ",")...)
		if err != nil {
			return err
		}
		if err := p.CheckConnectors(cs); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s: fits the %d connectors of %s\n", file, len(cs), *conns)
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

package app

import (
	_ "embed"
	"fmt"
	"strings"
)

//go:embed demo/policy.yaml
var demoPolicy []byte

// DemoTargets are the demo systems of `tenure dev`: PostgreSQL roles in the dev cluster,
// one role prefix per system, so a joiner's accounts are real logins you can inspect with
// psql and a leaver's disable really stops them.
var DemoTargets = []string{"wiki", "chat", "intranet", "ticketing", "ehr"}

var demoGroups = map[string]string{
	"wiki": "grp_wiki_readers", "chat": "grp_chat_users", "intranet": "grp_intranet_users",
	"ticketing": "grp_ticketing_requesters", "ehr": "grp_ehr_clinicians",
}

// demoConnectors renders the connectors file for the demo targets.
func demoConnectors(targetURL string) []byte {
	var b strings.Builder
	b.WriteString("# Demo targets of `tenure dev`: PostgreSQL roles in the dev cluster.\nconnectors:\n")
	for _, t := range DemoTargets {
		fmt.Fprintf(&b, "  - name: demo-%s\n    type: postgres\n    system: %s\n    config:\n      url: %q\n      role_prefix: %s_\n      groups: [%s]\n      create_groups: true\n",
			t, t, targetURL, t, demoGroups[t])
	}
	return []byte(b.String())
}

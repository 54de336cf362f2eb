package approval

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tenure-dev/tenure/pkg/connector"
	_ "github.com/tenure-dev/tenure/pkg/connectors/pgrole" // the postgres type and its catalog
	_ "github.com/tenure-dev/tenure/pkg/connectors/webhook"
)

const checkPolicy = `systems:
  - {name: reporting, holds_ephi: false, connector: reporting}
  - {name: ticketing, holds_ephi: false, connector: helpdesk}
  - {name: intranet, holds_ephi: false, connector: intranet}
packages:
  - {name: reporting-read, system: reporting, entitlements: [g_read], auto_approve: true}
  - {name: reporting-front-desk, system: reporting, entitlements: [g_front_desk], auto_approve: true}
  - {name: intranet-user, system: intranet, entitlements: [anything-goes], auto_approve: true}
roles:
  - {job_code: RN, packages: [reporting-read, intranet-user]}
`

const checkConnectors = `connectors:
  - name: reporting
    type: postgres
    config: {url: {env: NOT_SET_IN_THIS_TEST}, role_prefix: r_, groups: [g_read]}
  - name: intranet
    type: webhook
    config: {url: "http://127.0.0.1:1/hook", secret: {env: NOT_SET_EITHER}}
`

// The policy check, given the connectors file, refuses a system whose connector is not
// configured and a package entitlement its connector does not define, naming the policy
// file, line and field and where the connector is; it reads the connectors' configs without
// their secrets. A connector type without a catalog (webhook) accepts any entitlement.
func TestPolicyCheckAgainstConnectors(t *testing.T) {
	dir := t.TempDir()
	pf, cf := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "connectors.yaml")
	if err := os.WriteFile(pf, []byte(checkPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cf, []byte(checkConnectors), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPolicy(pf)
	if err != nil {
		t.Fatal(err)
	}
	conns, err := connector.LoadConfigs(cf)
	if err != nil {
		t.Fatal(err)
	}
	err = p.CheckConnectors(conns)
	if err == nil {
		t.Fatal("policy check passed a system without a connector and an undefined entitlement")
	}
	msg := err.Error()
	for _, want := range []string{
		pf + ": ",
		`line 3: systems[1].connector: system "ticketing" names connector "helpdesk", which ` + cf + ` does not configure (configured: intranet, reporting)`,
		`line 7: packages[1].entitlements[0]: package "reporting-front-desk" grants "g_front_desk", which connector reporting (` + cf + `:2) does not define (it defines: g_read)`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "anything-goes") || strings.Contains(msg, "g_read\"") {
		t.Errorf("refused what the connectors define or do not restrict:\n%s", msg)
	}
	// Fixed, it passes.
	fixed := strings.Replace(strings.Replace(checkPolicy, "connector: helpdesk", "connector: intranet", 1), "[g_front_desk]", "[g_read]", 1)
	p, err = ParsePolicy([]byte(fixed))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CheckConnectors(conns); err != nil {
		t.Fatalf("fixed policy: %v", err)
	}
}

// YAML syntax errors name the line where the text is wrong, not where its block began, and
// an empty policy file says it is empty.
func TestPolicySyntaxErrorsNameTheRightLine(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"empty", "", "the policy is empty"},
		{"only comments", "# policy\n\n", "the policy is empty"},
		{"empty mapping", "{}\n", "the policy is empty"},
		{"unclosed flow mapping", "systems:\n  - {name: a, connector: b\npackages: []\n", "line 3, column 1"},
		{"bad indentation", "systems:\n  - name: a\n    connector: b\n   owner: x\n", "line 4, column 4"},
		{"unclosed flow sequence", "roles:\n  - job_code: RN\n    packages: [a, b\n  - job_code: X\n", "line 4, column 3"},
		{"tab", "systems:\n  - name: a\n\tconnector: b\n", "line 3, column 1"},
		{"not a mapping", "- a\n- b\n", "line 1: the policy must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// The start refuses a policy that does not fit the connectors: a system naming a connector
// that is not configured fails approval.New (what `tenure serve` and `tenure dev` call).
func TestStartRefusesAPolicyThatDoesNotFitTheConnectors(t *testing.T) {
	p, err := ParsePolicy([]byte(checkPolicy))
	if err != nil {
		t.Fatal(err)
	}
	conns, err := connector.ParseConfigs([]byte(checkConnectors))
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(t.Context(), Config{Policy: p, Connectors: conns}, Deps{})
	if err == nil || !strings.Contains(err.Error(), `line 3: systems[1].connector: system "ticketing" names connector "helpdesk"`) {
		t.Fatalf("start with a policy naming an unconfigured connector: %v", err)
	}
}
